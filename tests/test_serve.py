"""The HTTP endpoint, with real requests against `serve.run` on local Ray."""

import concurrent.futures
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from conftest import ROOT, SERVE_URL as URL, confine, offline_browser, png_bytes as _png, wav_bytes as _wav
from onestep.media import decode_video, load_audio
from onestep.serving.validation import Limits

def _claimed_png(width: int, height: int, color_type: int = 2) -> bytes:
    """A valid PNG header that claims `width`×`height` pixels, followed by no real image data:
    what a decompression bomb looks like before anyone decodes it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


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
    ({"image": ("a.png", _claimed_png(20000, 20000)), "audio": ("a.wav", _wav(1))}, {}, 413,
     "image"),  # 400 MP claimed in 1 KB
    ({"image": ("a.png", _claimed_png(13000, 13000, 6)), "audio": ("a.wav", _wav(1))}, {}, 413,
     "image"),  # RGBA, under PIL's own bomb limit, over ours
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


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und") -> bytes:
    """A multipart body written by hand: (name, filename or None, content) per part."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MEDIA = [("image", "a.png", _png()), ("audio", "a.wav", _wav(0.3))]


@pytest.mark.parametrize("content_type,body,status,field", [
    ("multipart/form-data", _multipart(MEDIA), 400, "body"),  # no boundary
    ("multipart/form-data; boundary=b0und", b"\x00garbage" * 100, 400, "body"),
    ("multipart/form-data; boundary=b0und", b"--b0und\r\nNo-Header\r\n\r\nx", 400, "body"),
    ("application/json", b'{"image": 1}', 400, "body"),
    ("multipart/form-data; boundary=b0und",
     _multipart(MEDIA + [("steps", None, b"1" * 2 ** 20)]), 400, "body"),  # 1 MB text field
    ("multipart/form-data; boundary=b0und",
     _multipart(MEDIA + [(f"f{i}", None, b"1") for i in range(1200)]), 400, "body"),
    ("multipart/form-data; boundary=b0und",
     _multipart(MEDIA + [(f"x{i}", f"x{i}.bin", b"1") for i in range(1200)]), 400, "body"),
    ("multipart/form-data; boundary=b0und",
     _multipart(MEDIA + [("extra", "x.bin", b"1")]), 422, "extra"),  # an unexpected file
    ("multipart/form-data; boundary=b0und",
     _multipart(MEDIA + [("steps", None, b"1"), ("steps", None, b"2")]), 422, "steps"),
    ("multipart/form-data; boundary=b0und",
     _multipart([("image", None, _png()), MEDIA[1]]), 422, "image"),  # image as a text part
    ("multipart/form-data; boundary=b0und",
     _multipart(MEDIA + [("steps", None, "٣".encode())]), 422, "steps"),  # not ASCII digits
    ("multipart/form-data; boundary=b0und",
     _multipart(MEDIA + [("audio_scale", None, b"nan")]), 422, "audio_scale"),
    ("multipart/form-data; boundary=b0und",  # once a 500: the name became a metric tag
     _multipart(MEDIA + [("stépś", None, b"1")]), 422, "stépś"),
])
def test_malformed_bodies_get_400_or_422_never_500(endpoint, content_type, body, status, field):
    r = requests.post(f"{URL}/v1/generate", data=body, timeout=60,
                      headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field and "Traceback" not in r.text
    assert requests.get(f"{URL}/healthz", timeout=10).status_code == 200


def test_a_chunked_upload_is_refused_at_the_limit_while_it_arrives(endpoint):
    """No Content-Length to check up front: the body is counted as it streams in, and the
    answer comes soon after the limit (22 MB here; Ray's proxy reads ahead of the replica)
    while the client is still sending (200 MB).
    A raw socket, because HTTP clients read the answer only after sending the whole body."""
    import socket
    import threading

    sent, stop = [0], threading.Event()
    sock = socket.create_connection(("127.0.0.1", 8000), timeout=60)
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked"
                 b"\r\nContent-Type: multipart/form-data; boundary=b0und\r\n\r\n")
    head = (b"--b0und\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\""
            b"\r\nContent-Type: audio/wav\r\n\r\n")

    def send():
        try:
            for piece in [head] + [bytes(2 ** 20)] * 200:
                if stop.is_set():
                    return
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent[0] += len(piece)
                time.sleep(0.01)  # a fast client (100 MB/s) that still takes 2 s for 200 MB
        except OSError:  # the server may close the connection after answering
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    at_answer = sent[0]
    stop.set()
    sender.join(timeout=30)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    print(f"answered after {at_answer / 2 ** 20:.0f} MB")
    assert at_answer < 100 * 2 ** 20, f"answered only after {at_answer / 2 ** 20:.0f} MB"
    assert requests.get(f"{URL}/healthz", timeout=10).status_code == 200


def test_unknown_routes_and_methods_get_the_error_body(endpoint):
    for r in (requests.get(f"{URL}/v2/nothing", timeout=10),
              requests.delete(f"{URL}/v1/generate", timeout=10)):
        assert r.status_code in (404, 405) and set(r.json()) == {"error", "request_id"}


def test_non_rgb_and_jpeg_webp_images_and_many_channel_audio_work(endpoint):
    for image in (_png(mode="RGBA"), _png(mode="L"), _png(fmt="JPEG"), _png(fmt="WEBP")):
        r = _post(files={"image": ("i", image), "audio": ("a.wav", _wav(0.3))},
                  data={"steps": "1"})
        assert r.status_code == 200, r.text
    r = _post(files={"image": ("i", _png()), "audio": ("a.wav", _wav(0.3, channels=8))},
              data={"steps": "1"})  # once a segfault that killed the ingress replica
    assert r.status_code == 200, r.text


def test_bearer_token(endpoint):
    endpoint.deploy(env={"ONESTEP_API_TOKEN": "s3cret"}, args={"docs_need_token": True})
    token = {"Authorization": "Bearer s3cret"}
    try:
        assert _post(data={"steps": "1"}).status_code == 401
        wrong = _post(data={"steps": "1"}, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401 and wrong.json()["error"]["field"] == "authorization"
        assert requests.get(f"{URL}/v1/models", timeout=10).status_code == 401
        for scheme in ("Bearer", "bearer", "BEARER"):  # RFC 7235: case-insensitive
            r = _post(data={"steps": "1"}, headers={"Authorization": f"{scheme} s3cret"})
            assert r.status_code == 200, r.text
        assert requests.get(f"{URL}/healthz", timeout=10).status_code == 200  # probes stay open
        for page in ("/openapi.json", "/docs", "/redoc"):  # docs_need_token
            refused = requests.get(f"{URL}{page}", timeout=10)
            assert refused.status_code == 401
            assert refused.json()["error"]["field"] == "authorization"
            assert requests.get(f"{URL}{page}", headers=token, timeout=10).status_code == 200
        schema = requests.get(f"{URL}/openapi.json", headers=token, timeout=10).json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert schema["paths"]["/v1/generate"]["post"]["security"] == [{"bearer": []}]
        assert "401" in schema["paths"]["/v1/models"]["get"]["responses"]
        _sessions_need_the_token(token)
    finally:
        endpoint.deploy()
    assert _post(data={"steps": "1"}).status_code == 200  # auth off again


def _sessions_need_the_token(token: dict) -> None:
    """POST /v1/sessions and DELETE want the bearer header; the socket takes it or ?token= (a
    browser's WebSocket cannot set headers) and closes with 4401 without it."""
    from websockets.sync.client import connect

    refused = _open_session()
    assert refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"
    info = _open_session(headers=token).json()
    url = f"ws://127.0.0.1:8000{info['ws_url']}"
    for attempt in (url, f"{url}?token=wrong"):
        with connect(attempt) as ws, pytest.raises(Exception) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 4401, attempt
    pcm = b"\x00\x00" * 16000
    for query, headers in (("?token=s3cret", None), ("", token)):
        fmp4, chunks = _stream(info["ws_url"] + query, pcm, headers=headers)
        assert chunks and len(_frames(fmp4)) == sum(c["frames"] for c in chunks)
        info = _open_session(headers=token).json()  # the stream's close ended the session
    delete = f"{URL}/v1/sessions/{info['session_id']}"
    assert requests.delete(delete, timeout=10).status_code == 401
    assert requests.delete(delete, headers=token, timeout=10).status_code == 204


def test_a_model_that_takes_the_scales_answers_each_requests_own_once_per_step(endpoint,
                                                                               tmp_path):
    """A FADA student (model.guidance_input): `audio_scale` and `ref_scale` are its inputs, so
    every request's scales act and cost one evaluation per step."""
    import torch

    from onestep.checkpoint import save_export
    from onestep.config import load_config
    from onestep.model import build_model

    cfg = load_config("tiny", ["model.dim=48", "model.depth=2", "model.heads=2",
                               "model.audio_dim=32", "model.guidance_input=tokens",
                               "sample.steps=3", "sample.window_steps=[1,1,1]"])
    torch.manual_seed(0)
    model = build_model(cfg)
    for p in model.parameters():  # trained-looking: the guidance layers add something
        p.data.normal_(0, 0.05)
    save_export(tmp_path, model.state_dict(), cfg, {"stage": "fada", "step": 0})
    endpoint.checkpoint, default = str(tmp_path), endpoint.checkpoint
    endpoint.deploy()
    try:
        model_info = requests.get(f"{URL}/v1/models", timeout=10).json()["models"][0]
        assert model_info["guidance_input"] and model_info["nfe_per_chunk"] == 3
        videos = []
        for scale in ("1", "6.5"):
            r = _post(data={"audio_scale": scale, "ref_scale": "2", "seed": "1"})
            assert r.status_code == 200, r.text
            videos.append(decode_video(r.content)[0])
        assert videos[0].shape == videos[1].shape and not np.array_equal(*videos)
    finally:
        endpoint.checkpoint = default
        endpoint.deploy()


def test_docs_need_token_without_a_token_is_refused_at_build(endpoint):
    with pytest.raises(ValueError, match="docs_need_token: true needs ONESTEP_API_TOKEN"):
        endpoint.deploy(args={"docs_need_token": True})


def test_an_unknown_precision_is_refused_at_build(endpoint):
    from serve.app import build

    with pytest.raises(ValueError, match="precision: 'fp16'; expected one of fp32, bf16"):
        build({"checkpoint": endpoint.checkpoint, "precision": "fp16"})


def test_a_server_is_never_built_on_a_checkpoint_it_cannot_load(tmp_path, endpoint):
    """Checked where the app is built (`serve run`'s process, or the Serve controller for a
    config file), before any replica starts: the line names the file."""
    from onestep.checkpoint import CheckpointError
    from serve.app import build

    broken = tmp_path / "broken"
    shutil.copytree(endpoint.checkpoint, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"^{broken}/model.safetensors: SHA-256 differs"):
        build({"checkpoint": str(broken)})
    serve_cli = str(Path(sys.executable).parent / "serve")  # the venv's, as a user runs it
    run = subprocess.run([serve_cli, "run", "serve.app:build", f"checkpoint={broken}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0  # `serve run` of the import path builds here, so it stops
    assert (f"CheckpointError: {broken}/model.safetensors: SHA-256 differs from checksums.json"
            in run.stderr.splitlines()[-1])
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"^{broken}: no model.safetensors"):
        build({"checkpoint": str(broken)})


def test_requests_beyond_capacity_get_429_with_retry_after(endpoint):
    """One request in progress at a time: the others are told to come back, not queued."""
    endpoint.deploy(max_pending_requests=1)
    try:
        files = {"image": ("face.png", _png()), "audio": ("speech.wav", _wav(3.0))}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: requests.post(
                f"{URL}/v1/generate", files=files, data={"steps": "1"}, timeout=120), range(4)))
    finally:
        endpoint.deploy()
    statuses = sorted(r.status_code for r in replies)
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
    busy = next(r for r in replies if r.status_code == 429)
    assert int(busy.headers["retry-after"]) > 0 and busy.json()["error"]["field"] == "server"


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
def test_deploy_configs_are_what_serve_and_the_app_accept(name, endpoint):
    """`serve deploy` and KubeRay validate these only when a cluster gets them: check now
    (with the test's checkpoint: the builder verifies the one it is given)."""
    import inspect

    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from onestep.serving.sessions import SessionTable
    from serve.app import Generator, build

    app = ServeDeploySchema.model_validate(yaml.safe_load(_serve_configs()[name])).applications[0]
    assert app.import_path == "serve.app:build"
    assert set(app.args) <= {"checkpoint", "s3_endpoint_url", "device", "precision", "limits",
                             "batching", "sessions", "docs_need_token"}
    call_user_app_builder_with_args_if_necessary(  # what `serve run` calls
        build, {**app.args, "checkpoint": endpoint.checkpoint, "s3_endpoint_url": ""})
    Limits(**app.args["limits"])  # unknown limit names raise
    batching = app.args["batching"]
    assert set(batching) <= set(inspect.signature(Generator.func_or_class).parameters)
    assert set(app.args["sessions"]) <= set(inspect.signature(SessionTable).parameters)
    generator = next(d for d in app.deployments if d.name == "Generator")
    assert generator.max_ongoing_requests >= batching["max_batch_size"]  # batches can fill
    scaling = generator.autoscaling_config
    assert scaling["min_replicas"] < scaling["max_replicas"]


def _generator_replicas() -> list:
    from ray._private.state import actors

    return [a for a in actors().values() if a["State"] == "ALIVE"
            and "Generator" in (a.get("Name") or "") and "SERVE_REPLICA" in a["Name"]]


def _open_session(data=None, headers=None) -> requests.Response:
    return requests.post(f"{URL}/v1/sessions", files={"image": ("face.png", _png())},
                         data={"steps": "1", "seed": "5", **(data or {})}, headers=headers,
                         timeout=60)


def test_a_live_session_streams_fmp4_for_sound_sent_in_40_ms_pieces(endpoint):
    """The session's socket answers each piece of sound with the chunks it completes: the init
    segment first, then one media segment per chunk, in order; together they decode (PyAV, as a
    browser's MSE plays them) to the frames the sound covers, with that sound. A malformed piece
    gets an error message and the session goes on; closing frees the replica's state."""
    import io
    import json

    import av
    from websockets.sync.client import connect

    r = _open_session()
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["ws_url"] == f"/v1/sessions/{info['session_id']}" and info["sample_rate"] == 16000
    sound = load_audio(_wav(2.0), 16000)
    pcm = (sound * 32767).astype("<i2").tobytes()
    segments, chunks, errors = [], [], []
    with connect(f"ws://127.0.0.1:8000{info['ws_url']}", max_size=None) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "start"
        segments.append(ws.recv(timeout=30))  # the init segment
        for i in range(0, len(pcm), 1280):
            ws.send(pcm[i:i + 1280])
            if i == 12800:
                ws.send(b"\x00\x01\x02")
        expected = 1 + (50 - info["first_chunk_frames"]) // info["chunk_frames"]
        while len(chunks) < expected or not errors:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                segments.append(message)
            else:
                control = json.loads(message)
                (chunks if control["type"] == "chunk" else errors).append(control)
        ws.send(json.dumps({"type": "close"}))
    assert [c["index"] for c in chunks] == list(range(expected))
    assert errors == [{"type": "error", "message": "audio message of 3 bytes: PCM16 mono comes "
                                                   "in whole 2-byte samples"}]
    with av.open(io.BytesIO(b"".join(segments))) as box:
        frames = list(box.decode(video=0))
    assert len(frames) == sum(c["frames"] for c in chunks) == (
        info["first_chunk_frames"] + (expected - 1) * info["chunk_frames"])
    assert [f.pts for f in frames] == sorted(f.pts for f in frames)
    # The socket is closed: its state is gone from the replica.
    gone = requests.delete(f"{URL}/v1/sessions/{info['session_id']}", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["field"] == "session_id"
    with connect(f"ws://127.0.0.1:8000{info['ws_url']}") as ws:
        with pytest.raises(Exception) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 4404


def test_sessions_beyond_capacity_get_429_and_deleted_ones_free_it(endpoint):
    opened = [_open_session() for _ in range(4)]  # the default max_sessions
    assert all(r.status_code == 200 for r in opened), [r.text for r in opened]
    full = _open_session()
    assert full.status_code == 429 and full.headers["Retry-After"]
    assert "max_sessions=4" in full.json()["error"]["message"]
    # At capacity the answer comes before any validation (no child process is spent on it).
    assert _open_session(data={"sample_rate": "12345"}).status_code == 429
    requests.delete(f"{URL}/v1/sessions/{opened.pop().json()['session_id']}", timeout=10)
    bad = _open_session(data={"sample_rate": "12345"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "sample_rate"
    for data, field in (({"audio_format": "webm", "sample_rate": "16000"}, "sample_rate"),
                        ({"audio_format": "mp3"}, "audio_format")):
        bad = _open_session(data=data)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == field, bad.text
    for r in opened:
        assert requests.delete(f"{URL}/v1/sessions/{r.json()['session_id']}",
                               timeout=10).status_code == 204
    again = _open_session()
    assert again.status_code == 200
    requests.delete(f"{URL}/v1/sessions/{again.json()['session_id']}", timeout=10)


def _stream(ws_url: str, pcm: bytes, headers=None) -> tuple[bytes, list[dict]]:
    """PCM16 sent to a session's socket in 40 ms pieces (16 kHz) → its fMP4 and chunk messages,
    once every chunk the sound completes has come."""
    import json

    from websockets.sync.client import connect

    segments, chunks = [], []
    with connect(f"ws://127.0.0.1:8000{ws_url}", max_size=None,
                 additional_headers=headers) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "start"
        segments.append(ws.recv(timeout=30))
        for i in range(0, len(pcm), 1280):
            ws.send(pcm[i:i + 1280])
        ws.send(json.dumps({"type": "close"}))
        for message in ws:  # until the server closes, after the last chunk
            if isinstance(message, bytes):
                segments.append(message)
            else:
                chunks.append(json.loads(message))
    return b"".join(segments), chunks


def _frames(fmp4: bytes) -> np.ndarray:
    import io

    import av

    with av.open(io.BytesIO(fmp4)) as box:
        return np.stack([f.to_ndarray(format="rgb24") for f in box.decode(video=0)])


def test_two_sessions_in_parallel_get_what_each_gets_alone(endpoint):
    """Sessions share the replica's batches (their chunks are denoised together), never their
    state: two streamed at once decode to what one streamed alone decodes to."""
    sound = load_audio(_wav(1.6), 16000)
    pcm = (sound * 32767).astype("<i2").tobytes()
    alone = _open_session().json()
    reference, _ = _stream(alone["ws_url"], pcm)
    pair = [_open_session().json() for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: _stream(s["ws_url"], pcm), pair))
    want = _frames(reference)
    first, later = alone["first_chunk_frames"], alone["chunk_frames"]
    count = 1 + (40 - first) // later  # the chunks 1.6 s (40 frames) of sound complete
    assert len(want) == first + (count - 1) * later
    for fmp4, chunks in results:
        got = _frames(fmp4)
        assert got.shape == want.shape and [c["index"] for c in chunks] == list(range(count))
        # batched and alone differ only in float rounding, below what H.264 keeps
        assert np.abs(got.astype(int) - want).mean() < 0.5, np.abs(got.astype(int) - want).max()


def test_a_session_takes_a_browsers_webm_opus_recording(endpoint):
    """audio_format=webm: the socket takes a MediaRecorder's pieces (cut anywhere), decodes them
    where they arrive, and answers as for the same sound in PCM16."""
    from test_live import _speech_like, _webm_opus

    r = _open_session(data={"audio_format": "webm"})
    info = r.json()
    assert r.status_code == 200 and (info["sample_rate"], info["audio_format"]) == (48000, "webm")
    fmp4, chunks = _stream(info["ws_url"], _webm_opus(_speech_like(2.0, 48000)))
    count = 1 + (50 - info["first_chunk_frames"]) // info["chunk_frames"]
    assert [c["index"] for c in chunks] == list(range(count))
    assert len(_frames(fmp4)) == info["first_chunk_frames"] + (count - 1) * info["chunk_frames"]


def test_a_quiet_client_still_gets_video(endpoint):
    """Silence is filled in for a client that stops sending (after idle_video_after_s, 1 s by
    default): the chunks keep coming, at the pace of the clock."""
    import json

    from websockets.sync.client import connect

    info = _open_session().json()
    with connect(f"ws://127.0.0.1:8000{info['ws_url']}", max_size=None) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "start"
        ws.recv(timeout=30)
        ws.send(b"\x00\x00" * 1600)  # 0.1 s, less than a chunk, then nothing
        t0, chunks = time.monotonic(), []
        while len(chunks) < 4:
            message = ws.recv(timeout=30)
            if isinstance(message, str):
                chunks.append(json.loads(message))
        waited = time.monotonic() - t0
        ws.send(json.dumps({"type": "close"}))
    video_s = (info["first_chunk_frames"] + 3 * info["chunk_frames"]) / info["fps"]
    assert [c["index"] for c in chunks] == [0, 1, 2, 3]
    assert waited >= video_s - 0.1  # paced by the clock, not faster


def test_a_socket_dropped_mid_session_frees_its_state(endpoint):
    """A client that vanishes (no close frame: its connection just ends) does not leave its
    session holding a slot: the replica frees it."""
    import json
    import socket

    from websockets.sync.client import connect

    info = _open_session().json()
    ws = connect(f"ws://127.0.0.1:8000{info['ws_url']}", max_size=None)
    assert json.loads(ws.recv(timeout=30))["type"] == "start"
    ws.send(b"\x00\x00" * 640)
    ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()
    _wait_for_no_sessions()


def _wait_for_no_sessions(timeout_s: float = 30) -> None:
    """Until the generator (one replica here) holds no session; fails after `timeout_s`."""
    from ray import serve

    generator = serve.get_deployment_handle("Generator", "onestep")
    deadline = time.monotonic() + timeout_s
    while (held := generator.record_routing_stats.remote().result()["sessions"]) > 0:
        assert time.monotonic() < deadline, f"{held} sessions still held after {timeout_s} s"
        time.sleep(0.5)


def test_the_live_page_plays_the_avatar_from_a_fake_microphone(endpoint, tmp_path):
    """GET / in Debian's Chromium with a fake microphone fed from a WAV: the page opens a session
    through the public API, streams the microphone and plays the fMP4 it gets back (its video's
    currentTime advances), and shows the latency. No request leaves 127.0.0.1."""
    from playwright.sync_api import sync_playwright

    (tmp_path / "face.png").write_bytes(_png((64, 64)))
    (tmp_path / "mic.wav").write_bytes(_wav(4.0, sr=48000, channels=1))
    outside = []
    with sync_playwright() as pw:
        browser = offline_browser(
            pw, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={tmp_path / 'mic.wav'}",
            "--autoplay-policy=no-user-gesture-required")
        try:
            page = browser.new_page(viewport={"width": 820, "height": 720})
            console = []
            page.on("console", lambda m: console.append(m.text))
            confine(page, outside)
            page.goto(f"{URL}/")
            page.set_input_files("#portrait", str(tmp_path / "face.png"))
            page.click("#start")
            page.wait_for_function(
                """() => Number(document.getElementById('chunks').textContent) >= 4
                         && document.getElementById('avatar').currentTime > 0.5""",
                timeout=120_000)
            state = page.evaluate("""() => ({
                time: document.getElementById('avatar').currentTime,
                width: document.getElementById('avatar').videoWidth,
                latency: document.getElementById('latency').textContent,
                first: document.getElementById('first').textContent,
                error: document.getElementById('error').textContent,
                live: document.getElementById('state').textContent})""")
            page.screenshot(path=str(tmp_path / "live-page.png"))
            page.click("#stop")
            page.wait_for_function(
                "() => document.getElementById('state').textContent === 'stopped'",
                timeout=10_000)
        finally:
            browser.close()
    assert outside == [], f"the page tried to load from outside: {outside}"
    _wait_for_no_sessions()  # Stop closed the session
    assert state["error"] == "" and state["live"] == "live", (state, console)
    assert state["width"] == 32 and state["time"] > 0.5
    assert state["latency"].endswith("ms)") and state["first"].endswith(" s")


def test_a_stream_cut_by_a_lost_generator_is_seen_as_cut_and_the_replica_replaced(endpoint):
    """The Generator replica is killed while it streams: the client must get a truncated body
    (no final chunk), not a clean 200 of fewer frames; a live session it held ends with a close
    code that says so, and can be created again; Serve starts a replacement. Last in the
    module: the replacement must be up before the endpoint is torn down."""
    import json

    import ray
    from websockets.sync.client import connect

    files = {"image": ("face.png", _png()), "audio": ("speech.wav", _wav(5.0))}
    (victim,) = _generator_replicas()
    session = _open_session().json()
    ws = connect(f"ws://127.0.0.1:8000{session['ws_url']}", max_size=None)
    assert json.loads(ws.recv(timeout=30))["type"] == "start"
    ws.recv(timeout=30)
    got = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with requests.post(f"{URL}/v1/generate/stream", files=files, data={"steps": "50"},
                           stream=True, timeout=120) as r:
            assert r.status_code == 200
            for piece in r.iter_content(chunk_size=None):
                if not got:
                    ray.kill(ray.get_actor(victim["Name"], namespace="serve"))
                got.append(piece)
    assert got and len(decode_video(b"".join(got))[0]) < 125  # cut short, and seen to be
    deadline = time.time() + 120
    while time.time() < deadline:  # the replacement
        if _post(data={"steps": "1"}).status_code == 200:
            break
        time.sleep(1)
    else:
        pytest.fail("no Generator replica answered within 120 s of the kill")
    assert [a["ActorID"] for a in _generator_replicas()] != [victim["ActorID"]]
    ws.send(b"\x00\x00" * 16000)  # a chunk's sound for the session the dead replica held
    with pytest.raises(Exception) as closed:
        ws.recv(timeout=60)
    # 4404 once Serve knows the replica is gone (the router sends the call to the new one,
    # which does not hold it), 1011 if the call reached the dead one.
    assert closed.value.rcvd.code in (4404, 1011), closed.value
    assert "create another" in closed.value.rcvd.reason
    assert _open_session().status_code == 200
