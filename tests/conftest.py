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
