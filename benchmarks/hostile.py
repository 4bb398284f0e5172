"""Hostile clients and injected faults against onestep, counted: reports/reliability.{json,md}.

    python benchmarks/hostile.py                       # both parts (≈ 15 min on 2 cores)
    python benchmarks/hostile.py --part requests       # the HTTP part only
    python benchmarks/hostile.py --part faults         # the fault part only

`requests`: serve/config.yaml's application (its limits, batching, autoscaling) on an untrained
tiny model, on a local Ray, then a hand-made corpus of hostile requests (images, audio,
parameters, multipart structure, auth, HTTP) with the statuses each may get, `/healthz` after
every one, and schemathesis (its CLI, as a user runs it) for `--fuzz-examples` cases per
operation. Replica memory (RSS) and identities are read before and after: a replica that died
and was replaced shows as a restart.

`faults`: a replica killed under load (the Generator, then the ingress): requests lost, streams
cut (and whether the client could tell), time to a replacement; and training faults on a tiny
run (driver interrupted or killed then `--resume`, a damaged newest checkpoint, a truncated
shard, a short PCM row, a Train worker killed): whether it continued, from which step, clips
redone.

Each part replaces its own rows in the JSON and the markdown is rebuilt from both.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `serve.app`, as `serve run` imports it from the project root

from _report import header  # noqa: E402

URL = "http://127.0.0.1:8000"
OUT = ROOT / "reports" / "reliability"
TOKEN = "hostile-token"


# ----------------------------------------------------------------------------- media builders

def image(size=(64, 64), mode="RGB", fmt="PNG", **save) -> bytes:
    rng = np.random.default_rng(size[0] * 7 + size[1])
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def png_claiming(width: int, height: int, color_type: int = 2, bit_depth: int = 8,
                 pixels: bytes = b"\x00" * 1000) -> bytes:
    """A PNG whose header says `width`×`height` over `pixels` of zlib data: a bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels))
            + chunk(b"IEND", b""))


def png_bomb(side: int) -> bytes:
    """A real, decodable all-black greyscale PNG of side² pixels (≈ side²/1000 bytes)."""
    rows = (b"\x00" + bytes(side)) * side
    return png_claiming(side, side, color_type=0, pixels=rows)


def tone(seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def wav(seconds=1.0, sr=16000, channels=1, width=2) -> bytes:
    x = tone(seconds, sr)
    scale = {1: 127, 2: 32767, 3: 8388607, 4: 2147483647}[width]
    ints = np.repeat((x * scale).astype(np.int64), channels)
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints) \
            if width == 3 else ints.astype(f"<i{width}").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(sr)
        w.writeframes(data)
    return buf.getvalue()


def float_wav(samples: np.ndarray, sr=16000) -> bytes:
    """IEEE-float WAV (format 3), which the `wave` module cannot write."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
            + struct.pack("<I", len(data)) + data)


def encoded(container: str, codec: str, seconds=1.0, sr=16000, layout="mono") -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as box:
        stream = box.add_stream(codec, rate=sr)
        stream.layout = layout
        stream.codec_context.options = {"strict": "experimental"}  # FFmpeg's own Vorbis
        channels = 2 if layout == "stereo" else 1
        x = np.repeat(tone(seconds, sr)[None], channels, 0)
        size = stream.codec_context.frame_size or 1024
        fmt = stream.codec_context.format.name
        for start in range(0, x.shape[1], size):
            piece = np.ascontiguousarray(x[:, start:start + size])
            if not fmt.endswith("p"):  # interleaved formats take one plane
                piece = np.ascontiguousarray(piece.T.reshape(1, -1))
            if fmt.startswith("s16"):
                piece = (piece * 32767).astype(np.int16)
            elif fmt.startswith("s32"):
                piece = (piece * 2 ** 31 - 1).astype(np.int32)
            frame = av.AudioFrame.from_ndarray(piece, format=fmt, layout=layout)
            frame.sample_rate, frame.pts = sr, start
            box.mux(stream.encode(frame))
        box.mux(stream.encode())
    return buf.getvalue()


def silent_flac(seconds: float) -> bytes:
    """Hours of silence are a few MB of FLAC: a duration bomb."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as box:
        stream = box.add_stream("flac", rate=8000)
        stream.layout = "mono"
        block = np.zeros((1, 8000 * 10), np.int16)
        for k in range(int(seconds // 10)):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8000, k * block.shape[1]
            box.mux(stream.encode(frame))
        box.mux(stream.encode())
    return buf.getvalue()


def video_mp4(with_audio: bool) -> bytes:
    from onestep.media import encode_mp4

    frames = np.zeros((25, 32, 32, 3), np.uint8)
    return encode_mp4(frames, 25, tone(1.0, 16000) if with_audio else None, 16000)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary=b"b0und",
              close=True) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                      else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode(
            "utf-8", "surrogateescape") + b"\r\n\r\n" + data + b"\r\n"
    return out + (b"--" + boundary + b"--\r\n" if close else b"")


# ----------------------------------------------------------------------------- the corpus

@dataclass
class Probe:
    category: str
    name: str
    expect: tuple[int, ...]
    files: dict | None = None  # requests' files=; None with `body` for a raw body
    data: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    method: str = "POST"
    path: str = "/v1/generate"
    token: bool = False  # sent to the deployment that requires a token


def corpus() -> list[Probe]:
    face, speech = ("face.png", image()), ("speech.wav", wav(1.0))
    ok = (200,)
    probes: list[Probe] = []

    def img(name, data, expect, filename="i"):
        probes.append(Probe("image", name, expect, {"image": (filename, data), "audio": speech},
                            {"steps": "1"}))

    for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK"):
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        img(f"{fmt} {mode}", image(mode=mode, fmt=fmt), ok)
    img("JPEG progressive", image(fmt="JPEG", progressive=True), ok)
    img("JPEG quality 1", image(fmt="JPEG", quality=1), ok)
    exif = Image.Exif()
    exif[0x0112] = 6
    img("JPEG with EXIF rotation", image((64, 40), fmt="JPEG", exif=exif.tobytes()), ok)
    img("WebP lossy", image(fmt="WEBP"), ok)
    img("WebP lossless", image(fmt="WEBP", lossless=True), ok)
    img("PNG 1×1", image((1, 1)), (200, 422))
    img("PNG 4000×16 (thin)", image((4000, 16)), (200, 422))
    img("PNG 16-bit RGB", png_claiming(64, 64, 2, 16, b"\x00" * (64 * (1 + 64 * 6))),
        (200, 415))
    for fmt in ("GIF", "BMP", "TIFF", "ICO", "PPM"):
        img(fmt, image(fmt=fmt), (415,))
    img("SVG", b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>', (415,))
    img("PDF", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", (415,))
    img("claims 20000² (1 KB)", png_claiming(20000, 20000), (413,))
    img("claims 13000² RGBA", png_claiming(13000, 13000, 6), (413,))
    img("claims 2³¹ wide", png_claiming(2 ** 31 - 1, 1), (413, 415))
    img("claims 0×0", png_claiming(0, 0), (415, 422))
    img("real 10000² black PNG (bomb, ~100 KB)", png_bomb(10000), (413,))
    img("real 6000² black PNG (36 MP, under the limit)", png_bomb(6000), ok + (415,))
    img("PNG cut in half", image()[: len(image()) // 2], (415, 422))
    bad_crc = bytearray(image())
    bad_crc[30] ^= 0xFF
    img("PNG with a broken chunk CRC", bytes(bad_crc), (200, 415))
    img("JPEG cut in half", image(fmt="JPEG")[:400], (200, 415))
    img("0 bytes", b"", (415, 422))
    img("1 byte", b"\x89", (415,))
    img("random 4 KB", np.random.default_rng(1).bytes(4096), (415,))
    img("PNG signature then garbage", b"\x89PNG\r\n\x1a\n" + b"\xff" * 500, (415,))
    img("a WAV as the image", wav(0.5), (415,))
    img("11 MB (over max_image_mb)", image() + bytes(11 * 2 ** 20), (413,))
    img("filename with path traversal", image(), ok, filename="../../../etc/passwd")
    img("filename with NUL and newline", image(), ok + (400,), filename="a\x00b\r\nX-Bad: 1")

    def aud(name, data, expect, filename="a"):
        probes.append(Probe("audio", name, expect, {"image": face, "audio": (filename, data)},
                            {"steps": "1"}))

    for channels in (1, 2, 6, 8, 16, 32):
        aud(f"WAV {channels} channels", wav(0.5, channels=channels), ok)
    for width in (1, 3, 4):
        aud(f"WAV {8 * width}-bit", wav(0.5, width=width), ok)
    for sr in (8000, 44100, 96000, 192000):
        aud(f"WAV {sr} Hz", wav(0.5, sr=sr), ok)
    aud("WAV 1 Hz", wav(2.0, sr=1), (200, 415, 422))
    aud("WAV float32", float_wav(tone(0.5, 16000)), ok)
    aud("WAV float32 with NaN and inf", float_wav(
        np.where(np.arange(8000) % 7 == 0, np.nan, np.inf).astype(np.float32)), ok + (422,))
    aud("WAV float32 at ±1e30", float_wav(np.full(8000, 1e30, np.float32)), ok + (422,))
    aud("FLAC", encoded("flac", "flac"), ok)
    aud("MP3", encoded("mp3", "libmp3lame", sr=44100, layout="stereo"), ok)
    aud("Ogg Vorbis", encoded("ogg", "vorbis", sr=44100, layout="stereo"), ok)
    aud("Ogg Opus", encoded("ogg", "libopus", sr=48000), ok)
    aud("M4A AAC", encoded("mp4", "aac", sr=44100), ok)
    aud("ALAC in M4A", encoded("mp4", "alac", sr=44100), ok)
    aud("MP4 video with sound", video_mp4(True), ok + (415,))
    aud("MP4 video without sound", video_mp4(False), (415, 422))
    aud("3 hours of silence as FLAC", silent_flac(3 * 3600), (422,))
    aud("61 s (over max_audio_seconds)", wav(61.0, sr=8000), (422,))
    aud("0 samples", wav(0.0), (422,))
    aud("header claims 4 GB of data", wav(0.5)[:40] + b"\xff\xff\xff\x7f" + wav(0.5)[44:],
        ok + (415, 422))
    aud("WAV cut mid-sample", wav(0.5)[:-1], ok + (415, 422))
    aud("WAV header only", wav(0.5)[:44], (415, 422))
    aud("MP3 cut at 100 bytes", encoded("mp3", "libmp3lame")[:100], (415, 422))
    aud("random 4 KB", np.random.default_rng(2).bytes(4096), (415,))
    aud("RIFF then garbage", b"RIFF\x00\x00\x00\x00WAVEgarbage" * 10, (415,))
    aud("a PNG as the audio", image(), (415,))
    aud("21 MB (over max_audio_mb)", wav(0.5) + bytes(21 * 2 ** 20), (413,))

    bad_values = ["-1", "0", "1.5", "1e309", "nan", "inf", "-inf", "", " ", "+1", "1 ", "0x10",
                  "1_000", "٣", "99999999999999999999", "1e-400", "\x00", "a" * 1000]
    for param in ("steps", "seed", "audio_scale", "ref_scale", "fps", "resolution"):
        for value in bad_values:
            expect = (200, 400, 422)  # some are in range for some fields ("0" seeds, "1.5")
            probes.append(Probe("parameter", f"{param}={value[:12]!r}", expect,
                                {"image": face, "audio": speech}, {param: value}))
    for name, value in (("steps", "51"), ("fps", "61"), ("resolution", "1026"),
                        ("resolution", "33"), ("audio_scale", "20.01"), ("seed", "2147483648")):
        probes.append(Probe("parameter", f"{name}={value} (just out of range)", (422,),
                            {"image": face, "audio": speech}, {name: value}))
    probes.append(Probe("parameter", "work budget: 1024² × 60 fps × 8 s", (422,),
                        {"image": face, "audio": ("s.wav", wav(8.0, sr=8000))},
                        {"resolution": "1024", "fps": "60", "steps": "1"}))

    media = [("image", "f.png", image()), ("audio", "s.wav", wav(0.5))]
    mp = "multipart/form-data; boundary=b0und"

    def raw(name, body, expect, content_type=mp, **kw):
        probes.append(Probe("multipart", name, expect, None, headers={"Content-Type":
                                                                       content_type},
                            body=body, **kw))

    raw("no boundary", multipart(media), (400,), "multipart/form-data")
    raw("boundary that never appears", multipart(media), (400, 422),
        "multipart/form-data; boundary=other")
    raw("garbage body", np.random.default_rng(3).bytes(2048), (400, 422))
    raw("no closing boundary", multipart(media, close=False), (400, 422))
    raw("empty body", b"", (400, 422))
    raw("JSON body", b'{"image": "x", "audio": "y"}', (400,), "application/json")
    raw("urlencoded body", b"image=x&audio=y", (400,), "application/x-www-form-urlencoded")
    raw("no Content-Type", multipart(media), (400,), "")
    raw("1 MB text field", multipart(media + [("steps", None, b"1" * 2 ** 20)]), (400,))
    raw("1200 text fields", multipart(media + [(f"f{i}", None, b"1") for i in range(1200)]),
        (400,))
    raw("1200 files", multipart(media + [(f"x{i}", f"x{i}", b"1") for i in range(1200)]),
        (400,))
    raw("an extra file field", multipart(media + [("extra", "x.bin", b"1")]), (422,))
    raw("image twice", multipart(media + [("image", "g.png", image())]), (422,))
    raw("steps twice", multipart(media + [("steps", None, b"1"), ("steps", None, b"2")]),
        (422,))
    raw("image as a text part", multipart([("image", None, image()), media[1]]), (400, 422))
    raw("no image", multipart(media[1:]), (422,))
    raw("no parts at all", b"--b0und--\r\n", (400, 422))
    raw("field name in UTF-8", multipart(media + [("stépś", None, b"1")]), (422,))
    raw("field name not UTF-8", multipart(media + [("\udcff\udcfe", None, b"1")]), (400, 422))
    raw("a 70-KB boundary", multipart(media, boundary=b"b" * 70000), (400, 422),
        "multipart/form-data; boundary=" + "b" * 70000)
    probes.append(Probe("multipart", "Content-Length claims 1 GB", (413,), None,
                        headers={"Content-Type": mp, "Content-Length": str(2 ** 30)},
                        body=b"x"))

    def http(name, method, path, expect, **kw):
        probes.append(Probe("http", name, expect, None, method=method, path=path, **kw))

    http("GET /v1/generate", "GET", "/v1/generate", (405,))
    http("DELETE /v1/generate", "DELETE", "/v1/generate", (405,))
    http("unknown path", "GET", "/v2/nothing", (404,))
    http("path traversal", "GET", "/docs-assets/../../../etc/passwd", (404,))
    http("encoded traversal", "GET", "/docs-assets/%2e%2e/%2e%2e/etc/passwd", (404,))
    http("16 KB URL", "GET", "/v1/models?" + "a" * 16000, (200, 400, 414))
    http("OPTIONS /v1/generate", "OPTIONS", "/v1/generate", (405,))

    good = {"image": face, "audio": speech}

    def auth(name, headers, expect):
        probes.append(Probe("auth", name, expect, good, {"steps": "1"}, headers, token=True))

    auth("no Authorization", {}, (401,))
    auth("wrong token", {"Authorization": "Bearer nope"}, (401,))
    auth("scheme only", {"Authorization": "Bearer"}, (401,))
    auth("Basic scheme", {"Authorization": f"Basic {TOKEN}"}, (401,))
    auth("token without a scheme", {"Authorization": TOKEN}, (401,))
    auth("the token's prefix", {"Authorization": f"Bearer {TOKEN[:-1]}"}, (401,))
    auth("the token plus a character", {"Authorization": f"Bearer {TOKEN}x"}, (401,))
    auth("10 KB token", {"Authorization": "Bearer " + "t" * 10000}, (401, 431))
    auth("non-ASCII token", {"Authorization": "Bearer tökén".encode("utf-8")}, (401,))
    auth("right token, lower-case scheme", {"Authorization": f"bearer {TOKEN}"}, (200,))
    auth("right token, upper-case scheme", {"Authorization": f"BEARER {TOKEN}"}, (200,))
    auth("right token", {"Authorization": f"Bearer {TOKEN}"}, (200,))
    return probes


# ----------------------------------------------------------------------------- the server

def tiny_checkpoint(where: Path) -> str:
    import torch

    from onestep.checkpoint import save_export
    from onestep.config import load_config
    from onestep.model import build_model

    cfg = load_config("tiny", ["model.dim=48", "model.depth=2", "model.heads=2",
                               "model.audio_dim=32", "sample.steps=1"])
    torch.manual_seed(0)
    save_export(where, build_model(cfg).state_dict(), cfg, {"stage": "teacher", "step": 0})
    return str(where)


def deploy(checkpoint: str, token: str = "") -> None:
    """serve/config.yaml's application, on `checkpoint`, with or without a bearer token."""
    from ray import serve

    from serve.app import from_config

    os.environ.pop("ONESTEP_API_TOKEN", None)
    if token:
        os.environ["ONESTEP_API_TOKEN"] = token
    serve.run(from_config(ROOT / "serve" / "config.yaml", checkpoint=checkpoint),
              name="onestep", route_prefix="/")


def replicas() -> dict[str, dict]:
    """Live Serve actors (replicas and proxies): name → class, pid, RSS in MB."""
    import psutil
    from ray.util.state import list_actors

    out = {}
    for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000):
        name = a.name or ""
        if "SERVE_REPLICA" in name or "ProxyActor" in (a.class_name or ""):
            try:
                rss = psutil.Process(a.pid).memory_info().rss / 2 ** 20
            except psutil.Error:
                rss = float("nan")
            out[name or a.actor_id] = {"class": a.class_name, "pid": a.pid,
                                       "rss_mb": round(rss, 1), "actor_id": a.actor_id}
    return out


def send(p: Probe) -> tuple[int, str]:
    """(status, the error body's field) — status -1 when the connection itself failed."""
    headers = dict(p.headers)
    try:
        if "Content-Length" in headers:  # a lie about the length: requests would correct it
            import http.client

            conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=60)
            conn.putrequest(p.method, p.path)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(p.body)
            r = conn.getresponse()
            status, text, ctype = r.status, r.read().decode(errors="replace"), r.getheader(
                "content-type", "")
            conn.close()
        else:
            kwargs = {"data": p.body} if p.files is None else {"files": p.files,
                                                                "data": p.data}
            r = requests.request(p.method, URL + p.path, headers=headers, timeout=120,
                                 **kwargs)
            status, text, ctype = r.status_code, r.text, r.headers.get("content-type", "")
    except (requests.RequestException, OSError) as e:
        return -1, type(e).__name__
    field_name = ""
    if status >= 400 and ctype.startswith("application/json"):
        try:
            field_name = json.loads(text)["error"]["field"]
        except (ValueError, KeyError, TypeError):
            field_name = "(not the API's error body)"
    return status, field_name


def healthy() -> bool:
    try:
        return requests.get(f"{URL}/healthz", timeout=30).status_code == 200
    except requests.RequestException:
        return False


def run_corpus(probes: list[Probe]) -> list[dict]:
    rows = []
    for i, p in enumerate(probes, 1):
        t0 = time.perf_counter()
        status, field_name = send(p)
        rows.append({"category": p.category, "probe": p.name, "expected": list(p.expect),
                     "status": status, "field": field_name,
                     "ok": status in p.expect, "healthz_after": healthy(),
                     "seconds": round(time.perf_counter() - t0, 3)})
        if i % 25 == 0 or i == len(probes):
            bad = sum(not r["ok"] for r in rows)
            print(f"  {i}/{len(probes)} probes, {bad} unexpected", flush=True)
    return rows


def fuzz(examples: int, workdir: Path) -> dict:
    """Schemathesis' CLI on the served schema, with the suite's media hooks."""
    checks = ("not_a_server_error,status_code_conformance,content_type_conformance,"
              "response_headers_conformance,response_schema_conformance")
    report = workdir / "st-report.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", f"{URL}/openapi.json", "--checks",
         checks, "--seed", "1", "--max-examples", str(examples), "--workers", "2",
         "--request-timeout", "120", "--generation-database", "none", "--no-color",
         "--report", "json", "--report-json-path", str(report)],
        capture_output=True, text=True, timeout=3600, cwd=workdir, env=env)
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "summary": proc.stdout[-3000:], **fuzz_counts(report)}


def fuzz_counts(report: Path) -> dict:
    """Cases and failures by check, from schemathesis' JSON report (`not_a_server_error`
    counts the 5xx answers)."""
    doc = json.loads(report.read_text())
    failures = {}
    for group in doc.get("failures", []):
        failures[group["type"]] = failures.get(group["type"], 0) + group["count"]
    return {"cases": doc["test_cases"]["generated"], "failures": failures,
            "server_errors": failures.get("not_a_server_error", 0),
            "errors": doc.get("errors", []), "operations": doc["operations"]["tested"]}


# ----------------------------------------------------------------------------- serving faults

def kill_under_load(deployment: str, total: int = 40, concurrency: int = 8) -> dict:
    """`total` requests, `concurrency` at a time, every other one streamed; one replica of
    `deployment` is killed (SIGKILL, via Ray) once the load is steady. Every request's outcome
    is counted, split by whether it was in flight at the kill or sent after it; a stream that
    ends cleanly with fewer frames than its audio needs would be a cut the client cannot see."""
    import ray

    from onestep.media import decode_video

    files = {"image": ("f.png", image()), "audio": ("s.wav", wav(2.0))}
    expected_frames, done = 50, []
    t0 = time.perf_counter()

    def one(i: int) -> dict:
        stream = i % 2 == 1
        route = "/v1/generate/stream" if stream else "/v1/generate"
        rec = {"route": route, "start": time.perf_counter() - t0}
        try:
            with requests.post(URL + route, files=files, data={"steps": "8"}, stream=stream,
                               timeout=300) as r:
                body = b"".join(r.iter_content(chunk_size=None))
            if r.status_code != 200:
                rec["outcome"] = f"answered {r.status_code}"
            else:
                frames = len(decode_video(body)[0])
                rec["outcome"] = "complete" if frames == expected_frames else "cut, undetected"
        except requests.exceptions.ChunkedEncodingError:
            rec["outcome"] = "cut, detected (no final chunk)"
        except requests.RequestException as e:
            rec["outcome"] = f"failed ({type(e).__name__})"
        rec["end"] = time.perf_counter() - t0
        done.append(i)
        return rec

    before = {k: v for k, v in replicas().items() if f"#{deployment}#" in k}
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, i) for i in range(total)]
        while len(done) < concurrency // 2:
            time.sleep(0.05)
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"))
        killed_at = time.perf_counter() - t0
        replaced_s = None
        while replaced_s is None and time.perf_counter() - t0 - killed_at < 300:
            if {k for k in replicas() if f"#{deployment}#" in k} - set(before):
                replaced_s = time.perf_counter() - t0 - killed_at
            time.sleep(0.1)
        records = [f.result() for f in futures]
    in_flight = [r for r in records if r["start"] < killed_at < r["end"]]
    after = [r for r in records if r["start"] >= killed_at]
    successes_after = [r["end"] - killed_at for r in after if r["outcome"] == "complete"]

    def tally(rows):
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        return counts

    return {"deployment": deployment, "requests": total, "concurrency": concurrency,
            "replicas_before": len(before), "in_flight_at_kill": tally(in_flight),
            "sent_after_kill": tally(after),
            "lost_in_flight": sum(r["outcome"] != "complete" for r in in_flight),
            "lost_sent_after": sum(r["outcome"] != "complete" for r in after),
            "undetected_cuts": sum(r["outcome"] == "cut, undetected" for r in records),
            "replacement_replica_s": None if replaced_s is None else round(replaced_s, 1),
            "first_success_after_kill_s": round(min(successes_after), 1)
            if successes_after else None}


def memory_by_video_length(seconds=(1.0, 3.0, 6.0)) -> list[dict]:
    """The Generator's peak RSS over its idle RSS while it renders one 1024² 60 fps MP4 of
    each length (the work budget's largest kind of request): frames are resized and encoded
    chunk by chunk, so the growth should not follow the length."""
    import psutil

    (name,) = [k for k in replicas() if "#Generator#" in k]
    process = psutil.Process(replicas()[name]["pid"])
    rows = []
    for s in seconds:
        idle = process.memory_info().rss
        peak, finished = [idle], threading.Event()

        def sample():
            while not finished.is_set():
                peak.append(process.memory_info().rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        r = requests.post(f"{URL}/v1/generate", timeout=600, data={
            "resolution": "1024", "fps": "60", "steps": "1"},
            files={"image": ("f.png", image()), "audio": ("s.wav", wav(s))})
        finished.set()
        sampler.join()
        rows.append({"seconds": s, "status": r.status_code,
                     "mp4_mb": round(len(r.content) / 2 ** 20, 1), "frames": int(s * 60),
                     "render_s": round(time.perf_counter() - t0, 1),
                     "peak_growth_mb": round((max(peak) - idle) / 2 ** 20, 1)})
        print(f"  {s:.0f} s at 1024² 60 fps: +{rows[-1]['peak_growth_mb']} MB peak", flush=True)
    return rows


def requests_part(workdir: Path, fuzz_examples: int) -> dict:
    from ray import serve

    from onestep import cli

    cli.init_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    checkpoint = tiny_checkpoint(workdir / "ckpt")
    deploy(checkpoint)
    probes = corpus()
    open_probes = [p for p in probes if not p.token]
    rss_before = replicas()
    print(f"{len(open_probes)} hand-made probes (no token)", flush=True)
    rows = run_corpus(open_probes)
    print(f"schemathesis, {fuzz_examples} examples per operation and phase", flush=True)
    fuzzed = fuzz(fuzz_examples, workdir)
    rss_after = replicas()
    restarts = sorted(set(rss_before) - set(rss_after))
    deploy(checkpoint, token=TOKEN)
    token_probes = [p for p in probes if p.token]
    print(f"{len(token_probes)} auth probes (token set)", flush=True)
    rows += run_corpus(token_probes)
    deploy(checkpoint)
    memory = memory_by_video_length()
    serve_faults = [kill_under_load("Generator"), kill_under_load("AvatarAPI")]
    serve.shutdown()
    return {"probes": rows, "fuzz": fuzzed, "replicas_before": rss_before,
            "replicas_after": rss_after, "restarts_during_probes": restarts,
            "memory_by_length": memory, "serve_faults": serve_faults}


# ----------------------------------------------------------------------------- training faults

TINY = ["synth.num_clips=16", "synth.clips_per_shard=8", "synth.num_identities=8",
        "synth.clip_seconds=1.2", "model.dim=48", "model.depth=2", "model.heads=2",
        "model.audio_dim=32", "model.audio_tokens=2", "data.windows_per_clip=2",
        "data.shuffle_buffer=8", "train.global_batch=4", "train.warmup_clips=4",
        "train.log_every_steps=1", "train.checkpoint_every_clips=8", "train.max_failures=2"]
BATCH = 4


class TinyRuns:
    """`jobs/distill.py` runs (teacher stage, tiny) as a user starts them, in subprocesses
    that can be interrupted or killed."""

    def __init__(self, workdir: Path):
        self.data, self.runs = workdir / "data", workdir / "runs"
        # In a subprocess too: this process must hold no Ray of its own (see _stop_ray).
        subprocess.run([sys.executable, str(ROOT / "jobs" / "prepare_data.py"), "--out",
                        str(self.data), "--config", "tiny",
                        *[a for s in TINY for a in ("--set", s)]],
                       check=True, capture_output=True, timeout=600)

    def command(self, name: str, clips: int, *extra: str) -> list[str]:
        sets = [*TINY, f"data.uri={self.data}", f"run.root={self.runs}", f"run.name={name}",
                f"train.total_clips={clips}"]
        return [sys.executable, str(ROOT / "jobs" / "distill.py"), "--stage", "teacher",
                "--config", "tiny", *[a for s in sets for a in ("--set", s)], *extra]

    def run(self, name: str, clips: int, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(name, clips, *extra), capture_output=True,
                              text=True, timeout=900)

    def start(self, name: str, clips: int, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(name, clips, *extra), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def folder(self, name: str) -> Path:
        return self.runs / name

    def steps(self, name: str) -> list[int]:
        """Steps of the run's checkpoint folders that are complete and intact."""
        from onestep.checkpoint import checkpoint_names, checkpoint_problems
        from onestep.storage import resolve

        run = resolve(str(self.folder(name)))
        return sorted(json.loads(run.join(n, "state.json").read_bytes())["step"]
                      for n in checkpoint_names(run) if not checkpoint_problems(run.join(n)))

    def registered(self, name: str) -> int:
        snapshot = self.folder(name) / "checkpoint_manager_snapshot.json"
        try:
            state, _ = json.JSONDecoder().raw_decode(snapshot.read_text())
            return len(state.get("checkpoint_results", []))
        except (OSError, ValueError):
            return 0

    def final_state(self, name: str) -> dict:
        from onestep.checkpoint import latest_checkpoint

        return json.loads((Path(latest_checkpoint(str(self.folder(name)))) / "state.json")
                          .read_text())


def _stop_ray() -> None:
    """A driver killed with SIGKILL leaves the local Ray it started behind."""
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"],
                   capture_output=True, timeout=120)


def _last_line(proc) -> str:
    text = (proc.stdout or "") + (getattr(proc, "stderr", "") or "")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def interrupted_driver(runs: TinyRuns, sig: int, label: str) -> dict:
    """The driver is sent `sig` once Ray has registered a checkpoint, then the run is resumed:
    it must continue from the newest intact checkpoint, whatever Ray registered."""
    name, clips = f"driver-{label}", 64
    proc = runs.start(name, clips)
    deadline = time.time() + 600
    while time.time() < deadline and runs.registered(name) < 2 and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if sig == signal.SIGKILL:
        _stop_ray()
    written = runs.steps(name)
    resumed = runs.run(name, clips, "--resume")
    state = runs.final_state(name) if resumed.returncode == 0 else {}
    at = state.get("resumed_at_steps", [None])[-1]
    newest = max(written, default=0)
    return {"fault": f"driver {label} after 2 checkpoints, then --resume",
            "survived": resumed.returncode == 0 and state.get("clips_seen") == clips
            and at == newest,
            "detail": f"intact checkpoints at steps {written} when stopped; resumed at step "
                      f"{at}; finished {state.get('clips_seen')}/{clips} clips",
            "clips_lost": max(0, (newest - (at or 0))) * BATCH}


def damaged_newest(runs: TinyRuns) -> dict:
    """A finished run whose newest checkpoint has flipped bytes, then resumed for longer."""
    name = "damaged"
    first = runs.run(name, 32)
    from onestep.checkpoint import checkpoint_names
    from onestep.storage import resolve

    newest = runs.folder(name) / checkpoint_names(resolve(str(runs.folder(name))))[-1]
    shard = newest / "ema" / "generator-rank0.safetensors"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF
    shard.write_bytes(bytes(data))
    resumed = runs.run(name, 40, "--resume")
    state = runs.final_state(name) if resumed.returncode == 0 else {}
    warned = "SHA-256 differs" in resumed.stdout + resumed.stderr
    return {"fault": "newest checkpoint damaged (flipped bytes), then --resume",
            "survived": first.returncode == 0 and resumed.returncode == 0 and warned
            and state.get("clips_seen") == 40,
            "detail": f"resumed at step {state.get('resumed_at_steps', [None])[-1]} (the "
                      f"damaged one was step 8); warning named the file: {warned}",
            "clips_lost": 0 if resumed.returncode == 0 else 40}


def killed_worker(runs: TinyRuns) -> dict:
    """A Train worker SIGKILLed mid-run: Ray Train restarts the group from the checkpoint."""
    import psutil

    name = "worker-killed"
    proc = runs.start(name, 64)
    victim = None
    deadline = time.time() + 600
    while time.time() < deadline and victim is None and proc.poll() is None:
        if runs.registered(name):
            victim = next((p for p in psutil.process_iter(["cmdline"])
                           if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])), None)
        time.sleep(0.2)
    if victim is not None:
        victim.kill()
    out, _ = proc.communicate(timeout=900)
    state = runs.final_state(name) if proc.returncode == 0 else {}
    return {"fault": "a Train worker SIGKILLed mid-run",
            "survived": victim is not None and proc.returncode == 0
            and state.get("clips_seen") == 64,
            "detail": f"resumed at steps {state.get('resumed_at_steps')}; finished "
                      f"{state.get('clips_seen')}/64 clips",
            "clips_lost": 0 if proc.returncode == 0 else 64}


def other_worker_count(runs: TinyRuns) -> dict:
    """A run saved by 2 workers resumed on 1, then on 2 again (ZeRO shards resharded)."""
    name = "resized"
    first = runs.run(name, 32)
    fewer = runs.run(name, 48, "--resume", "--set", "train.num_workers=1")
    more = runs.run(name, 64, "--resume", "--set", "train.num_workers=2")
    state = runs.final_state(name) if more.returncode == 0 else {}
    codes = [p.returncode for p in (first, fewer, more)]
    return {"fault": "saved by 2 workers, --resume on 1, then on 2 again",
            "survived": codes == [0, 0, 0] and state.get("clips_seen") == 64
            and state.get("world_size") == 2,
            "detail": f"rc {codes}; resumed at steps {state.get('resumed_at_steps')}; finished "
                      f"{state.get('clips_seen')}/64 clips",
            "clips_lost": 0 if codes == [0, 0, 0] else 64}


def bad_data(runs: TinyRuns) -> list[dict]:
    """A truncated shard, then a row whose PCM audio is a byte short."""
    import pyarrow.parquet as pq

    from onestep.shards import rows_to_parquet

    out = []
    shard = sorted(runs.data.glob("*.parquet"))[1]
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 2])
    run = runs.run("truncated-shard", 16)
    named = f"skipping shard {shard}" in run.stdout + run.stderr
    out.append({"fault": "a Parquet shard cut in half",
                "survived": run.returncode == 0 and named,
                "detail": f"rc {run.returncode}; warning names the shard: {named}",
                "clips_lost": 8})  # the shard's clips are not trained on
    rows = pq.read_table(io.BytesIO(original)).to_pylist()
    rows[0]["audio_pcm16"] = rows[0]["audio_pcm16"][:-1]
    shard.write_bytes(rows_to_parquet(rows))
    run = runs.run("short-pcm", 16)
    named = f"clip {rows[0]['clip_id']}" in run.stdout + run.stderr
    out.append({"fault": "a row whose PCM audio is 1 byte short",
                "survived": run.returncode == 0 and named,
                "detail": f"rc {run.returncode}; the clip is named in the log: {named}",
                "clips_lost": 1})
    shard.write_bytes(original)
    return out


def refused_inputs(runs: TinyRuns, workdir: Path) -> list[dict]:
    """Things a job must refuse in one line naming what is wrong, before any work."""
    cases = [("train.lr=-0.001", "train.lr"), ("train.lr=nan", "train.lr"),
             ("train.global_batch=0", "train.global_batch"),
             ("train.num_workers=0", "train.num_workers"),
             ("train.max_failures=-1", "train.max_failures"),
             ("data.uri=s3://no-such-bucket-onestep/x", "s3://no-such-bucket-onestep/x")]
    out = []
    for override, named in cases:
        cmd = runs.command("refused", 8) + ["--set", override]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                                   "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})
        line = _last_line(proc)
        out.append({"fault": f"`--set {override}`",
                    "survived": proc.returncode != 0 and named in line
                    and "Traceback" not in proc.stderr,
                    "detail": f"rc {proc.returncode}: {line}", "clips_lost": 0})
    export = workdir / "tampered"
    shutil.copytree(tiny_checkpoint(workdir / "export"), export)
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-9] ^= 0xFF
    weights.write_bytes(bytes(data))
    (workdir / "face.png").write_bytes(image())
    (workdir / "speech.wav").write_bytes(wav(0.5))
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "generate.py"), "--checkpoint",
                           str(export), "--image", str(workdir / "face.png"), "--audio",
                           str(workdir / "speech.wav"), "--out", str(workdir / "o.mp4")],
                          capture_output=True, text=True, timeout=300)
    line = _last_line(proc)
    out.append({"fault": "generate.py on a model.safetensors with flipped bytes",
                "survived": proc.returncode != 0 and "model.safetensors" in line
                and "Traceback" not in proc.stderr,
                "detail": f"rc {proc.returncode}: {line}", "clips_lost": 0})
    return out


def faults_part(workdir: Path) -> dict:
    runs = TinyRuns(workdir)
    rows = []
    for step in (lambda: interrupted_driver(runs, signal.SIGINT, "SIGINT"),
                 lambda: interrupted_driver(runs, signal.SIGKILL, "SIGKILL"),
                 lambda: damaged_newest(runs), lambda: killed_worker(runs),
                 lambda: other_worker_count(runs),
                 lambda: bad_data(runs), lambda: refused_inputs(runs, workdir)):
        t0 = time.perf_counter()
        result = step()
        for row in result if isinstance(result, list) else [result]:
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(f"  {'survived' if row['survived'] else 'NOT survived'}: {row['fault']} — "
                  f"{row['detail']}", flush=True)
    return {"training_faults": rows}


# ----------------------------------------------------------------------------- the report

def markdown(doc: dict) -> list[str]:
    lines = ["# Reliability: hostile requests and injected faults", "",
             f"Command: `{doc['command']}`  ", f"Date: {doc['date']}; {doc['machine']}", ""]
    probes, fuzzed = doc.get("probes", []), doc.get("fuzz", {})
    serve_faults, train_faults = doc.get("serve_faults", []), doc.get("training_faults", [])
    five = sum(1 for r in probes if r["status"] >= 500)
    dropped = sum(1 for r in probes if r["status"] < 0)
    faults = [*serve_faults, *train_faults]
    # A replica's loss is survived when only requests in flight on it failed (and visibly).
    survived = sum(1 for f in train_faults if f["survived"]) + sum(
        1 for f in serve_faults if f["undetected_cuts"] == 0 and f["lost_sent_after"] == 0
        and f["first_success_after_kill_s"] is not None)
    lines += ["## Totals", "", "| | |", "|---|---|",
              f"| hand-made requests | {len(probes)} ({sum(r['ok'] for r in probes)} answered "
              f"as expected) |",
              f"| fuzzed requests (schemathesis) | {fuzzed.get('cases', 0)} |",
              f"| 5xx answers | {five} hand-made + {fuzzed.get('server_errors', 0)} fuzzed |",
              f"| connections dropped without an answer | {dropped} |",
              f"| `/healthz` not 200 after a request | "
              f"{sum(not r['healthz_after'] for r in probes)} |",
              f"| replica restarts during the requests | "
              f"{len(doc.get('restarts_during_probes', []))} |",
              f"| faults injected / survived | {len(faults)} / {survived} |",
              f"| clips lost to training faults | "
              f"{sum(f['clips_lost'] for f in train_faults)} |", ""]
    if doc.get("replicas_before"):
        lines += ["## Replica memory (RSS, MB) before and after the requests", "",
                  "| actor | before | after |", "|---|---|---|"]
        after = doc.get("replicas_after", {})
        for name, info in sorted(doc["replicas_before"].items()):
            label = name.split("::")[-1]
            lines.append(f"| {label} | {info['rss_mb']:.0f} | "
                         f"{after.get(name, {}).get('rss_mb', float('nan')):.0f} |")
        lines.append("")
    if doc.get("memory_by_length"):
        lines += ["## Generator memory against video length (1024², 60 fps, one request)", "",
                  "| audio | frames | MP4 | render time | peak RSS growth |",
                  "|---|---|---|---|---|"]
        for m in doc["memory_by_length"]:
            lines.append(f"| {m['seconds']:g} s | {m['frames']} | {m['mp4_mb']} MB | "
                         f"{m['render_s']} s | {m['peak_growth_mb']} MB |")
        lines += ["", "Frames are resized and encoded chunk by chunk: the whole video's frames "
                  "(3 MB each at 1024²) are never held at once.", ""]
    if serve_faults:
        lines += ["## A replica killed under load", "",
                  "| deployment | requests (concurrent) | in flight at the kill | sent after the "
                  "kill | cut streams the client could not tell | replacement replica up | "
                  "first success of a request sent after the kill |",
                  "|---|---|---|---|---|---|---|"]

        def outcomes(counts):
            return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"

        for f in serve_faults:
            lines.append(f"| {f['deployment']} ({f['replicas_before']} replica"
                         f"{'s' if f['replicas_before'] != 1 else ''}) | {f['requests']} "
                         f"({f['concurrency']}) | {outcomes(f['in_flight_at_kill'])} | "
                         f"{outcomes(f['sent_after_kill'])} | {f['undetected_cuts']} | "
                         f"{f['replacement_replica_s']} s | {f['first_success_after_kill_s']} s |")
        lines.append("")
    if train_faults:
        lines += ["## Training faults", "", "| fault | survived | what happened | clips lost |",
                  "|---|---|---|---|"]
        for f in train_faults:
            lines.append(f"| {f['fault']} | {'yes' if f['survived'] else '**no**'} | "
                         f"{f['detail'].replace('|', '/')} | {f['clips_lost']} |")
        lines.append("")
    if fuzzed:
        lines += ["## Schemathesis", "",
                  f"{fuzzed['cases']} cases on {fuzzed['operations']} operations in "
                  f"{fuzzed['seconds']} s (exit code {fuzzed['returncode']}); failures by check: "
                  f"{fuzzed['failures'] or 'none'}.", ""]
    if probes:
        lines += ["## Hand-made requests", "", "| category | probe | expected | status | field "
                  "| as expected |", "|---|---|---|---|---|---|"]
        for r in probes:
            probe = r["probe"].replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['category']} | {probe} | {'/'.join(map(str, r['expected']))} | "
                         f"{r['status']} | {r['field']} | {'yes' if r['ok'] else '**no**'} |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "requests", "faults"], default="all")
    parser.add_argument("--fuzz-examples", type=int, default=400,
                        help="schemathesis --max-examples (per operation and phase)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from onestep import cli

    cli.setup_logging()
    meta, _ = header("Reliability", "hostile.py", "no GPU")
    doc = json.loads(args.out.with_suffix(".json").read_text()) \
        if args.out.with_suffix(".json").exists() else {}
    with tempfile.TemporaryDirectory(prefix="onestep-hostile-") as tmp:
        if args.part in ("all", "requests"):
            doc.update(requests_part(Path(tmp) / "requests", args.fuzz_examples))
            import ray

            ray.shutdown()
        if args.part in ("all", "faults"):
            doc.update(faults_part(Path(tmp) / "faults"))
    doc.update(meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(doc, indent=1, default=str)),
                         (".md", "\n".join(markdown(doc)) + "\n")):
        tmp_file = args.out.with_suffix(suffix + ".tmp")
        tmp_file.write_text(text)
        tmp_file.replace(args.out.with_suffix(suffix))
    print(args.out.with_suffix(".md").read_text())
    bad = [r for r in doc.get("probes", []) if not r["ok"]]
    return 1 if bad or doc.get("fuzz", {}).get("server_errors") else 0


if __name__ == "__main__":
    sys.exit(main())
