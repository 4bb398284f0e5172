"""Shared fixtures: a real local Ray cluster, a real S3 API server (moto) on 127.0.0.1, configs.

Nothing here is mocked: moto's server mode speaks the S3 HTTP protocol that boto3 and pyarrow
use against AWS; only AWS itself is replaced, because it cannot be reached from here.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))  # the job scripts are tested as users run them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server; credentials are set before Ray starts so workers inherit them."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    yield endpoint
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh, empty bucket per test, named after it."""
    import boto3

    name = request.node.name.lower().replace("_", "-")[:50]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """One local Ray for the session, with logical CPUs for 2 Train workers + Ray Data and a
    Tune trial's driver."""
    import ray

    ray.init(address="local", num_cpus=5, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_overrides(**extra) -> list[str]:
    """The tiny preset shrunk further so a test step takes well under a second."""
    base = {
        "synth.num_clips": 16, "synth.clips_per_shard": 8, "synth.num_identities": 8,
        "synth.clip_seconds": 1.2, "model.dim": 48, "model.depth": 2, "model.heads": 2,
        "model.audio_dim": 32, "model.audio_tokens": 2, "data.windows_per_clip": 2,
        "data.shuffle_buffer": 8, "train.global_batch": 4, "train.total_clips": 8,
        "train.warmup_clips": 4, "train.checkpoint_every_clips": 4, "train.log_every_steps": 1,
        "sample.steps": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_config():
    from onestep.config import load_config

    def make(**extra):
        return load_config("tiny", tiny_overrides(**extra))

    return make


SERVE_URL = "http://127.0.0.1:8000"
SERVE_LIMITS = {"max_audio_seconds": 5, "max_image_mb": 1}


def wav_bytes(seconds: float, sr: int = 22050, channels: int = 2) -> bytes:
    """A 180 Hz tone as 16-bit PCM WAV."""
    import io
    import wave

    import numpy as np

    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 180 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.repeat(x, channels).tobytes())
    return buf.getvalue()


def png_bytes(size=(50, 40), mode="RGB", fmt="PNG") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, 120).save(buf, format=fmt)
    return buf.getvalue()


def offline_browser(pw, *args: str):
    """Debian's Chromium (Playwright, no browser download) with no way out but 127.0.0.1: every
    other host resolves to nowhere and any other connection goes to a dead proxy."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is needed for this test: `make test` installs it"
    return pw.chromium.launch(executable_path=path, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1", *args])


def confine(page, outside: list) -> None:
    """Any request the page makes beyond the server is aborted and recorded in `outside`."""
    def gate(route):
        if route.request.url.startswith(SERVE_URL):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", gate)


class ServedApp:
    """The application of serve/config.yaml on a tiny (untrained) generator, at SERVE_URL."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint

    def deploy(self, env: dict | None = None, args: dict | None = None, **limits) -> None:
        """(Re)deploy with these limits on top of SERVE_LIMITS and these other application
        `args`; `env` is set while the app is built (ONESTEP_API_TOKEN is read there) and
        restored after."""
        from ray import serve

        from serve.app import build

        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})
        try:
            app = build({"checkpoint": self.checkpoint, "limits": {**SERVE_LIMITS, **limits},
                         **(args or {})})
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        serve.run(app, name="onestep", route_prefix="/")


@pytest.fixture(scope="module")
def endpoint(ray_cluster, tmp_path_factory):
    """The Serve application for a module's HTTP tests (shut down after it, so that the Train
    tests after it get their CPUs back); a test that redeploys it with other settings deploys
    the defaults again before it ends."""
    import torch
    from ray import serve

    from onestep.checkpoint import save_export
    from onestep.config import load_config
    from onestep.model import build_model

    cfg = load_config("tiny", ["model.dim=48", "model.depth=2", "model.heads=2",
                               "model.audio_dim=32", "sample.steps=2"])
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt")
    save_export(ckpt, build_model(cfg).state_dict(), cfg, {"stage": "teacher", "step": 0})
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    served = ServedApp(str(ckpt))
    served.deploy()
    yield served
    serve.delete("onestep")
    serve.shutdown()
