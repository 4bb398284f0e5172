"""The HTTP endpoint, with real requests against `serve.run` on local Ray."""

import concurrent.futures
import io
import wave

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image

from conftest import ROOT
from onestep.checkpoint import save_export
from onestep.config import load_config
from onestep.media import decode_video, load_audio
from onestep.model import build_model
from onestep.serving.validation import Limits

URL = "http://127.0.0.1:8000"


def _wav(seconds: float, sr: int = 22050, channels: int = 2) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 180 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.repeat(x, channels).tobytes())
    return buf.getvalue()


def _png(size=(50, 40), mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 120).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def endpoint(ray_cluster, tmp_path_factory):
    """A tiny (untrained) generator served exactly as serve/config.yaml builds it."""
    from ray import serve

    from serve.app import build

    cfg = load_config("tiny", ["model.dim=48", "model.depth=2", "model.heads=2",
                               "model.audio_dim=32", "sample.steps=2"])
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt")
    save_export(ckpt, build_model(cfg).state_dict(), cfg, {"stage": "teacher", "step": 0})
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build({"checkpoint": str(ckpt), "limits": {"max_audio_seconds": 5,
                                                         "max_image_mb": 1}}),
              name="onestep", route_prefix="/")
    yield cfg
    serve.delete("onestep")
    serve.shutdown()


def _post(files=None, data=None, headers=None):
    files = files if files is not None else {"image": ("face.png", _png()),
                                             "audio": ("speech.wav", _wav(1.0))}
    return requests.post(f"{URL}/v1/generate", files=files, data=data or {}, headers=headers,
                         timeout=120)


def test_generate_returns_a_playable_mp4_as_long_as_the_audio(endpoint):
    r = _post(data={"steps": "1", "seed": "3"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4" and r.headers["x-request-id"]
    frames, fps = decode_video(r.content)
    assert frames.shape == (25, 32, 32, 3) and fps == 25
    assert abs(len(load_audio(r.content)) / 16000 - 1.0) < 0.05


def test_requested_fps_and_resolution(endpoint):
    r = _post(data={"steps": "1", "fps": "10", "resolution": "64"})
    assert r.status_code == 200, r.text
    frames, fps = decode_video(r.content)
    assert frames.shape == (10, 64, 64, 3) and fps == 10


def test_models_and_health(endpoint):
    assert requests.get(f"{URL}/healthz", timeout=10).json() == {"status": "ok"}
    model = requests.get(f"{URL}/v1/models", timeout=10).json()["models"][0]
    assert model["resolution"] == 32 and model["steps"] == 2 and model["nfe_per_chunk"] == 4


@pytest.mark.parametrize("files,data,status,field", [
    ({"image": ("a.png", _png()), "audio": ("a.wav", _wav(6.0))}, {}, 422, "audio"),  # too long
    ({"image": ("a.png", _png()), "audio": ("a.wav", b"")}, {}, 422, "audio"),  # empty
    ({"image": ("a.png", _png()), "audio": ("a.wav", b"RIFF....garbage")}, {}, 415, "audio"),
    ({"image": ("a.gif", _png(fmt="GIF")), "audio": ("a.wav", _wav(1))}, {}, 415, "image"),
    ({"image": ("a.png", b"\x89PNG broken"), "audio": ("a.wav", _wav(1))}, {}, 415, "image"),
    ({"image": ("a.png", b"0" * (2 * 2 ** 20)), "audio": ("a.wav", _wav(1))}, {}, 413, "image"),
    ({"audio": ("a.wav", _wav(1))}, {}, 422, "image"),  # missing field
    (None, {"steps": "0"}, 422, "steps"),
    (None, {"steps": "many"}, 422, "steps"),
    (None, {"resolution": "33"}, 422, "resolution"),
    (None, {"temperature": "1"}, 422, "temperature"),
])
def test_bad_input_gets_a_status_and_a_named_field(endpoint, files, data, status, field):
    r = _post(files=files, data=data)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["field"] == field and body["error"]["message"]
    assert "Traceback" not in r.text


def test_non_rgb_and_jpeg_webp_images_work(endpoint):
    for image in (_png(mode="RGBA"), _png(mode="L"), _png(fmt="JPEG"), _png(fmt="WEBP")):
        r = _post(files={"image": ("i", image), "audio": ("a.wav", _wav(0.3))},
                  data={"steps": "1"})
        assert r.status_code == 200, r.text


def test_bearer_token(endpoint, monkeypatch):
    from ray import serve

    from serve.app import build

    ckpt = requests.get(f"{URL}/v1/models", timeout=10).json()["models"][0]["checkpoint"]
    args = {"checkpoint": ckpt, "limits": {"max_audio_seconds": 5, "max_image_mb": 1}}
    monkeypatch.setenv("ONESTEP_API_TOKEN", "s3cret")
    serve.run(build(args), name="onestep", route_prefix="/")
    try:
        assert _post(data={"steps": "1"}).status_code == 401
        wrong = _post(data={"steps": "1"}, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401 and wrong.json()["error"]["field"] == "authorization"
        assert requests.get(f"{URL}/v1/models", timeout=10).status_code == 401
        r = _post(data={"steps": "1"}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, r.text
        assert requests.get(f"{URL}/healthz", timeout=10).status_code == 200  # probes stay open
    finally:
        monkeypatch.delenv("ONESTEP_API_TOKEN")
        serve.run(build(args), name="onestep", route_prefix="/")
    assert _post(data={"steps": "1"}).status_code == 200  # auth off again


def test_concurrent_requests_all_succeed_and_batching_does_not_change_them(endpoint):
    """Six at once: their chunks share batches, yet each video is the one it gets alone."""
    alone = decode_video(_post(data={"steps": "1", "seed": "11"}).content)[0]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: _post(data={"steps": "1", "seed": "11"}), range(6)))
    assert [r.status_code for r in replies] == [200] * 6
    for r in replies:
        frames = decode_video(r.content)[0]
        assert frames.shape == alone.shape
        assert np.abs(frames.astype(int) - alone.astype(int)).mean() < 1.0


def test_stream_plays_chunk_by_chunk_in_order(endpoint):
    files = {"image": ("face.png", _png()), "audio": ("speech.wav", _wav(2.0))}
    with requests.post(f"{URL}/v1/generate/stream", files=files, data={"steps": "1"},
                       stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "video/mp2t" and r.headers["x-request-id"]
        pieces = [p for p in r.iter_content(chunk_size=None) if p]
    assert len(pieces) >= 2  # the first chunk went out before the last was generated
    seen = [len(decode_video(b"".join(pieces[:k]))[0]) for k in range(1, len(pieces) + 1)]
    assert seen == sorted(seen) and seen[0] > 0
    frames, fps = decode_video(b"".join(pieces))
    assert frames.shape == (50, 32, 32, 3) and fps == 25
    assert 0 <= len(load_audio(b"".join(pieces))) / 16000 - 2.0 <= 0.13  # + AAC priming


def test_stream_rejects_bad_input_before_streaming(endpoint):
    r = requests.post(f"{URL}/v1/generate/stream", timeout=30, data={"steps": "1"},
                      files={"image": ("a.png", _png()), "audio": ("a.wav", _wav(6.0))})
    assert r.status_code == 422 and r.json()["error"]["field"] == "audio"


def _serve_configs():
    kube = yaml.safe_load((ROOT / "serve" / "rayservice.yaml").read_text())
    return {"serve/config.yaml": (ROOT / "serve" / "config.yaml").read_text(),
            "serve/rayservice.yaml": kube["spec"]["serveConfigV2"]}


@pytest.mark.parametrize("name", ["serve/config.yaml", "serve/rayservice.yaml"])
def test_deploy_configs_are_what_serve_and_the_app_accept(name):
    """`serve deploy` and KubeRay validate these only when a cluster gets them: check now."""
    import inspect

    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from serve.app import Generator, build

    app = ServeDeploySchema.model_validate(yaml.safe_load(_serve_configs()[name])).applications[0]
    assert app.import_path == "serve.app:build"
    assert set(app.args) <= {"checkpoint", "s3_endpoint_url", "device", "limits", "batching"}
    call_user_app_builder_with_args_if_necessary(build, app.args)  # what `serve run` calls
    Limits(**app.args["limits"])  # unknown limit names raise
    batching = app.args["batching"]
    assert set(batching) <= set(inspect.signature(Generator.func_or_class).parameters)
    generator = next(d for d in app.deployments if d.name == "Generator")
    assert generator.max_ongoing_requests >= batching["max_batch_size"]  # batches can fill
    scaling = generator.autoscaling_config
    assert scaling["min_replicas"] < scaling["max_replicas"]
