"""Live sessions on local Ray: time to the first video, chunk latency, real-time factor and the
sessions one replica sustains, for the tiny student at 1 and 4 steps; then replicas following
sessions up and down under onestep's session-aware autoscaling policy.

    python benchmarks/live.py --screenshot reports/live-page.png

Deploys serve/config.yaml's application on a local Ray and drives it through the public API only
(POST /v1/sessions, then WebSocket clients on 127.0.0.1), with SynthTalk's held-out speech and a
held-out portrait (what `jobs/make_sample.py` writes).

1. Capacity: one replica. For each number of concurrent sessions, two runs:
   - unpaced: every client sends its sound as fast as it can. A session's real-time factor is the
     video it got over the wall time it took (> 1: faster than real time). The replica sustains n
     sessions when every session's factor is ≥ 1.
   - paced: every client sends 40 ms of sound every 40 ms, as a microphone does. Time to the first
     video (first sound sent → first chunk received) and chunk latency (the sound completing a
     chunk sent → the chunk received, as the client sees it; and as the server measures it, from
     that sound's arrival to the segment being ready).
2. Autoscaling: serve/config.yaml's policy, up to `--max-replicas`. Paced sessions open one every
   `--ramp-every` seconds up to `--peak`, stay `--hold` seconds, and close one at a time (the
   oldest first); replicas and sessions are sampled every second. A session the server ends
   (any close code but the client's 1000) counts as dropped.

Writes reports/live.{json,md,png}; `--screenshot` also shows the live page (GET /) in Debian's
Chromium with a fake microphone, after part 2 (a browser decoding video takes more CPU than the
sessions on this machine do, so not during it).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `serve.app`, as `serve run` imports it from the project root
sys.path.insert(0, str(ROOT / "jobs"))

from _report import header, save

URL = "http://127.0.0.1:8000"
PIECE_S = 0.04


def _inputs(seconds: float) -> tuple[bytes, np.ndarray, int, bytes]:
    """A held-out SynthTalk portrait (PNG), held-out speech (clips one after another) as PCM16,
    its rate, and the same speech as a WAV (the fake microphone's)."""
    from make_sample import held_out_clip, wav_bytes
    from PIL import Image

    from onestep.config import load_config

    cfg = load_config("tiny").synth
    clip = held_out_clip(cfg)
    sound, seen, start = [], set(), 0
    while sum(len(s) for s in sound) < seconds * cfg.sample_rate:
        c = held_out_clip(cfg, start)
        start += 1
        if c.clip_id not in seen:
            seen.add(c.clip_id)
            sound.append(c.audio)
    audio = np.concatenate(sound)[:int(seconds * cfg.sample_rate)]
    png = io.BytesIO()
    Image.fromarray(clip.clean_frames[0]).save(png, "PNG")
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    return png.getvalue(), pcm, cfg.sample_rate, wav_bytes(audio, cfg.sample_rate)


class Client(threading.Thread):
    """One session: opens it, streams `pcm` (paced or not; `loop` repeats it until `stop`) and
    records every chunk as it arrives."""

    def __init__(self, portrait: bytes, pcm: np.ndarray, rate: int, steps: int, paced: bool,
                 loop: bool = False):
        super().__init__(daemon=True)
        self.portrait, self.pcm, self.rate, self.steps = portrait, pcm, rate, steps
        self.paced, self.loop = paced, loop
        self.stop = threading.Event()
        self.sent: list[tuple[float, float]] = []  # (seconds of sound sent so far, when)
        self.chunks: list[dict] = []
        self.close_code: int | None = None
        self.error: str | None = None
        self.info: dict = {}

    def open(self, patience_s: float = 120.0) -> None:
        """POST /v1/sessions; at capacity (429) again after its Retry-After, as a client
        should, for at most `patience_s` (each refusal is counted)."""
        deadline = time.perf_counter() + patience_s
        self.refused = 0
        while True:
            r = requests.post(f"{URL}/v1/sessions", files={"image": ("face.png", self.portrait)},
                              data={"steps": str(self.steps), "seed": "0",
                                    "sample_rate": str(self.rate)}, timeout=120)
            if r.status_code != 429 or time.perf_counter() > deadline:
                break
            self.refused += 1
            time.sleep(float(r.headers.get("Retry-After", 1)))
        r.raise_for_status()
        self.info = r.json()

    def run(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(f"ws://127.0.0.1:8000{self.info['ws_url']}", max_size=None) as ws:
                ws.recv(timeout=60)  # start
                ws.recv(timeout=60)  # init segment
                sender = threading.Thread(target=self._send, args=(ws,), daemon=True)
                sender.start()
                try:
                    for message in ws:
                        if isinstance(message, str):
                            m = json.loads(message)
                            if m["type"] == "chunk":
                                self.chunks.append({**m, "received": time.perf_counter()})
                finally:
                    self.close_code = ws.close_code
                sender.join()
        except Exception as e:  # a dropped session, recorded
            self.error = repr(e)

    def _send(self, ws) -> None:
        piece = int(self.rate * PIECE_S)
        data = self.pcm.tobytes()
        step = 2 * piece
        start, k = time.perf_counter(), 0
        try:
            while not self.stop.is_set():
                i = (k * step) % len(data) if self.loop else k * step
                if i >= len(data):
                    break
                if self.paced:
                    time.sleep(max(0.0, start + k * PIECE_S - time.perf_counter()))
                ws.send(data[i:i + step])
                k += 1
                self.sent.append((k * piece / self.rate, time.perf_counter()))
            ws.send(json.dumps({"type": "close"}))
        except Exception:  # the socket is gone: run() records how
            pass

    def measures(self) -> dict:
        """First-video time, per-chunk latency (client and server), real-time factor."""
        chunks, sent = list(self.chunks), list(self.sent)  # both grow while the session runs
        if not chunks or not sent:
            return {"chunks": 0}
        fps = self.info["fps"]
        first_sent = sent[0][1]
        covered = np.cumsum([c["frames"] for c in chunks]) / fps  # seconds of sound needed
        sent_s = np.array([s for s, _ in sent])
        sent_t = np.array([t for _, t in sent])
        client = [c["received"] - sent_t[min(np.searchsorted(sent_s, need - 1e-9),
                                             len(sent_t) - 1)]
                  for c, need in zip(chunks, covered, strict=True)]
        video_s = covered[-1]
        return {"chunks": len(chunks), "video_s": float(video_s),
                "first_video_s": chunks[0]["received"] - first_sent,
                "client_latency_s": client,
                "server_latency_s": [c["latency_s"] for c in chunks],
                "rtf": float(video_s / (chunks[-1]["received"] - first_sent))}


def _session_run(portrait, pcm, rate, steps: int, n: int, paced: bool) -> list[dict]:
    clients = [Client(portrait, pcm, rate, steps, paced) for _ in range(n)]
    for c in clients:
        c.open()
    for c in clients:
        c.start()
    for c in clients:
        c.join(timeout=600)
    return [{**c.measures(), "close_code": c.close_code, "error": c.error} for c in clients]


def _pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def capacity(args, portrait, pcm, rate) -> list[dict]:
    """Part 1 for one model on one replica: each step count × each number of sessions."""
    from ray import serve

    from serve.app import from_config

    rows = []
    most = max(args.sessions)
    serve.run(from_config(args.config, checkpoint=args.checkpoint,
                          sessions={"max_sessions": most, "target_sessions": most,
                                    "idle_timeout_s": 60},
                          deployments={"Generator": {"autoscaling_config": None,
                                                     "num_replicas": 1}}),
              name="onestep", route_prefix="/")
    for steps in args.steps:
        for n in args.sessions:
            fast = _session_run(portrait, pcm, rate, steps, n, paced=False)
            live = _session_run(portrait, pcm, rate, steps, n, paced=True)
            row = {"steps": steps, "sessions": n,
                   "rtf_min": min(r.get("rtf", 0.0) for r in fast),
                   "rtf_mean": float(np.mean([r.get("rtf", 0.0) for r in fast])),
                   "first_video_s_p50": _pct([r["first_video_s"] for r in live if r["chunks"]],
                                             50),
                   "client_latency_s_p50": _pct(sum((r.get("client_latency_s", [])
                                                     for r in live), []), 50),
                   "client_latency_s_p99": _pct(sum((r.get("client_latency_s", [])
                                                     for r in live), []), 99),
                   "server_latency_s_p50": _pct(sum((r.get("server_latency_s", [])
                                                     for r in live), []), 50),
                   "server_latency_s_p99": _pct(sum((r.get("server_latency_s", [])
                                                     for r in live), []), 99),
                   "errors": sum(r["error"] is not None or r["close_code"] != 1000
                                 for r in fast + live)}
            rows.append(row)
            print(f"{steps} step(s), {n} sessions: real-time factor min {row['rtf_min']:.2f} "
                  f"mean {row['rtf_mean']:.2f}; paced: first video "
                  f"{row['first_video_s_p50']:.2f} s, latency p50 "
                  f"{row['client_latency_s_p50'] * 1000:.0f} ms p99 "
                  f"{row['client_latency_s_p99'] * 1000:.0f} ms", flush=True)
    serve.delete("onestep")
    return rows


def _replicas() -> int:
    from ray import serve

    app = serve.status().applications.get("onestep")
    return int(app.deployments["Generator"].replica_states.get("RUNNING", 0)) if app else 0


def autoscaling(args, portrait, pcm, rate, wav) -> dict:
    """Part 2: sessions ramp up, hold, ramp down; replicas sampled every second."""
    from ray import serve

    from serve.app import from_config

    serve.run(from_config(args.config, checkpoint=args.checkpoint,
                          sessions={"max_sessions": args.max_sessions,
                                    "target_sessions": args.target,
                                    "idle_timeout_s": 60},
                          deployments={"Generator": {"autoscaling_config": {
                              "min_replicas": 1, "max_replicas": args.max_replicas}}}),
              name="onestep", route_prefix="/")
    t0 = time.perf_counter()
    samples, clients, stop = [], [], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            live = [c for c in clients if c.is_alive()]
            recent = [x for c in live for x in c.measures().get("client_latency_s", [])[-3:]]
            samples.append({"t": time.perf_counter() - t0, "sessions": len(live),
                            "replicas": _replicas(),
                            "latency_s": float(np.median(recent)) if recent else None})
            time.sleep(1.0)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    for k in range(args.peak):
        c = Client(portrait, pcm, rate, args.live_steps, paced=True, loop=True)
        c.open()
        c.start()
        clients.append(c)
        print(f"{time.perf_counter() - t0:5.0f} s: {k + 1} sessions, {_replicas()} replicas",
              flush=True)
        time.sleep(args.ramp_every)
    time.sleep(args.hold)
    for c in clients:
        c.stop.set()
        c.join(timeout=60)
        print(f"{time.perf_counter() - t0:5.0f} s: closed one, {_replicas()} replicas",
              flush=True)
        time.sleep(args.ramp_every)
    quiet = time.perf_counter()
    while _replicas() > 1 and time.perf_counter() - quiet < args.idle_seconds:
        time.sleep(1)
    time.sleep(2)
    stop.set()
    watcher.join()
    # Last, alone: a browser decoding video takes more CPU than this machine's sessions do.
    screenshot = _screenshot(Path(args.screenshot), portrait, wav) if args.screenshot else None
    serve.delete("onestep")
    dropped = [c.error or f"close code {c.close_code}" for c in clients
               if c.error is not None or c.close_code != 1000]
    latencies = [x for c in clients for x in c.measures().get("client_latency_s", [])]
    return {"samples": samples, "dropped": dropped, "sessions": len(clients),
            "refused_429": sum(c.refused for c in clients),
            "peak_replicas": max(s["replicas"] for s in samples),
            "end_replicas": samples[-1]["replicas"],
            "client_latency_s_p50": _pct(latencies, 50),
            "client_latency_s_p99": _pct(latencies, 99), "screenshot": screenshot}


def _screenshot(path: Path, portrait: bytes, wav: bytes) -> str:
    """The live page in Debian's Chromium, its microphone fed from `wav`, once it plays."""
    import shutil
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "face.png").write_bytes(portrait)
        (Path(tmp) / "mic.wav").write_bytes(wav)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=[
                "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={Path(tmp) / 'mic.wav'}",
                "--autoplay-policy=no-user-gesture-required"])
            try:
                page = browser.new_page(viewport={"width": 820, "height": 720})
                page.goto(f"{URL}/")
                page.set_input_files("#portrait", str(Path(tmp) / "face.png"))
                page.click("#start")
                page.wait_for_function("() => document.getElementById('avatar').currentTime > 2",
                                       timeout=120_000)
                path.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(path))
                page.click("#stop")
            finally:
                browser.close()
    return str(path)


def plot(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    t = [x["t"] for x in s]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.step(t, [x["sessions"] for x in s], where="post", label="live sessions")
    top.step(t, [x["replicas"] for x in s], where="post", label="generator replicas")
    top.set_ylabel("count")
    top.legend(loc="upper right")
    top.set_title("Replicas follow live sessions (session-aware autoscaling policy)")
    bottom.plot(t, [np.nan if x["latency_s"] is None else 1000 * x["latency_s"] for x in s],
                ".-")
    bottom.set_ylabel("chunk latency, ms\n(client; median of recent)")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "reports" / "pretrained" / "student"))
    p.add_argument("--config", default=str(ROOT / "serve" / "config.yaml"))
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 6])
    p.add_argument("--seconds", type=float, default=6.0, help="sound per capacity session")
    p.add_argument("--live-steps", type=int, default=1, help="steps of part 2's sessions")
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--target", type=int, default=2, help="target_sessions per replica")
    p.add_argument("--max-sessions", type=int, default=3,
                   help="max_sessions per replica in part 2 (beyond it: 429, retried)")
    p.add_argument("--parts", nargs="+", choices=["capacity", "autoscaling"],
                   default=["capacity", "autoscaling"],
                   help="without capacity, its rows are kept from --out's JSON")
    p.add_argument("--peak", type=int, default=4)
    p.add_argument("--ramp-every", type=float, default=8.0)
    p.add_argument("--hold", type=float, default=40.0)
    p.add_argument("--idle-seconds", type=float, default=90.0)
    p.add_argument("--screenshot", default=None, help="PNG of the live page while it plays")
    p.add_argument("--out", default=str(ROOT / "reports" / "live"))
    args = p.parse_args(argv)

    import ray
    from ray import serve

    portrait, pcm, rate, wav = _inputs(args.seconds)
    ray.init(address="local", num_cpus=args.max_replicas + 1, include_dashboard=False,
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        if "capacity" in args.parts:
            rows, capacity_command = capacity(args, portrait, pcm, rate), None
        else:
            earlier = json.loads(Path(args.out).with_suffix(".json").read_text())
            rows = earlier["rows"]["capacity"]
            capacity_command = earlier["rows"].get("capacity_command") or earlier["command"]
        scaled = autoscaling(args, portrait, pcm, rate, wav)
    finally:
        serve.shutdown()
        ray.shutdown()

    sustained = {steps: max([r["sessions"] for r in rows if r["steps"] == steps
                             and r["rtf_min"] >= 1.0 and r["errors"] == 0], default=0)
                 for steps in args.steps}
    out = Path(args.out)
    meta, lines = header("Live sessions: latency, real-time factor, sessions per replica, "
                         "autoscaling", "live.py",
                         f"local Ray ({args.max_replicas + 1} logical CPUs), CPU only")
    model = Path(args.checkpoint).resolve()
    model = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model
    lines += [f"Model: `{model}` "
              "(the tiny DMD student; 1 step is the cost of a one-step generator of this "
              "architecture). Sound: held-out SynthTalk speech, PCM16 at "
              f"{rate} Hz in 40 ms messages. {args.seconds:g} s of sound per capacity session.",
              "", "## One replica", "",
              *([f"(Measured by `{capacity_command}`.)", ""] if capacity_command else []),
              "| steps | sessions | real-time factor min / mean | first video p50 | "
              "chunk latency p50 / p99 (client) | (server) | errors |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['sessions']} | {r['rtf_min']:.2f} / "
                     f"{r['rtf_mean']:.2f} | {r['first_video_s_p50']:.2f} s | "
                     f"{1000 * r['client_latency_s_p50']:.0f} / "
                     f"{1000 * r['client_latency_s_p99']:.0f} ms | "
                     f"{1000 * r['server_latency_s_p50']:.0f} / "
                     f"{1000 * r['server_latency_s_p99']:.0f} ms | {r['errors']} |")
    lines += ["", "Sessions one replica sustains in real time (every session's factor ≥ 1): "
              + ", ".join(f"**{n}** at {s} step{'s' if s > 1 else ''}"
                          for s, n in sustained.items()) + ".", "",
              "## Replicas follow sessions", "",
              f"Sessions ({args.live_steps} step, paced) open one every {args.ramp_every:g} s up "
              f"to {args.peak}, stay {args.hold:g} s, then close one every {args.ramp_every:g} "
              f"s; target_sessions={args.target}, max_sessions={args.max_sessions} (a client "
              f"refused with 429 opens again after Retry-After), 1–{args.max_replicas} "
              "replicas.", "",
              f"- replicas: peak **{scaled['peak_replicas']}**, at the end "
              f"**{scaled['end_replicas']}**",
              f"- refused at capacity (429, then opened after Retry-After): "
              f"{scaled['refused_429']}",
              f"- dropped sessions: **{len(scaled['dropped'])}** of {scaled['sessions']}"
              + (f" ({'; '.join(scaled['dropped'])})" if scaled["dropped"] else ""),
              f"- chunk latency (client) p50 / p99: {1000 * scaled['client_latency_s_p50']:.0f}"
              f" / {1000 * scaled['client_latency_s_p99']:.0f} ms", "",
              "![sessions, replicas and latency over time](live.png)", ""]
    if scaled["screenshot"]:
        lines += ["The live page (GET /) in Debian's Chromium with a fake microphone, after "
                  "part 2:", "", f"![the live page]({Path(scaled['screenshot']).name})", ""]
    plot(out, scaled)
    save(out, meta, {"capacity": rows, "capacity_command": capacity_command or meta["command"],
                     "sustained": sustained, "autoscaling": scaled}, lines)
    return 1 if scaled["dropped"] else 0


if __name__ == "__main__":
    sys.exit(main())
