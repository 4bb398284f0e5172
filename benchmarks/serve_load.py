"""Load on the HTTP endpoint: replicas scale up under load and back down after it.

    python benchmarks/serve_load.py --checkpoint runs/adversarial-tiny/exports/1step

Deploys serve/config.yaml's application (its autoscaling, batching and limits) on a local Ray,
then drives it from 127.0.0.1 only, with a bounded load that stops by itself: a trickle from one
client, a burst from `--clients` clients (until `--requests` requests or `--load-seconds`),
then silence until the replicas are back at the minimum (or `--idle-seconds`). Every `--stream-
every`-th request uses /v1/generate/stream and its time to the first video piece is recorded.
Replica counts come from serve.status() every half second; the batch sizes the generator saw
come from Ray's Prometheus metrics.

Writes reports/serve.{json,md,png}.
"""

from __future__ import annotations

import argparse
import io
import itertools
import re
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `serve.app`, as `serve run` imports it from the project root

from _report import header, save

URL = "http://127.0.0.1:8000"


def _inputs(seconds: float) -> tuple[bytes, bytes]:
    """A PNG portrait and a WAV of speech-like noise (what a client uploads)."""
    rng = np.random.default_rng(0)
    image = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(image, "PNG")
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    voice = np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    audio = io.BytesIO()
    with wave.open(audio, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((0.3 * voice * 32767).astype("<i2").tobytes())
    return image.getvalue(), audio.getvalue()


class Load:
    """Clients that send requests and record each one's timing and outcome."""

    def __init__(self, image: bytes, audio: bytes, stream_every: int, t0: float):
        self.files = {"image": ("face.png", image), "audio": ("speech.wav", audio)}
        self.stream_every, self.t0 = stream_every, t0
        self.records: list[dict] = []
        self.count = itertools.count()
        self.lock = threading.Lock()

    def one(self) -> None:
        n = next(self.count)
        stream = self.stream_every > 0 and n % self.stream_every == self.stream_every - 1
        start = time.perf_counter()
        rec = {"t": start - self.t0, "route": "stream" if stream else "generate"}
        try:
            route = "/v1/generate/stream" if stream else "/v1/generate"
            with requests.post(URL + route, files=self.files, stream=stream,
                               timeout=300) as r:
                size, first = 0, None
                for piece in r.iter_content(chunk_size=None):
                    if piece and first is None:
                        first = time.perf_counter() - start
                    size += len(piece)
                rec.update(status=r.status_code, bytes=size)
                if stream:
                    rec["first_piece_s"] = first
        except requests.RequestException as e:
            rec.update(status=0, error=type(e).__name__)
        rec["latency_s"] = time.perf_counter() - start
        with self.lock:
            self.records.append(rec)

    def run(self, clients: int, until: float, max_requests: int) -> None:
        def client():
            while time.perf_counter() < until and len(self.records) < max_requests:
                self.one()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()


class ReplicaWatch(threading.Thread):
    """Running Generator replicas over time, from serve.status()."""

    def __init__(self, t0: float):
        super().__init__(daemon=True)
        self.t0, self.samples, self.stop = t0, [], threading.Event()

    def count(self) -> int:
        from ray import serve

        app = serve.status().applications.get("onestep")
        states = app.deployments["Generator"].replica_states if app else {}
        return int(states.get("RUNNING", 0))

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter() - self.t0, self.count()))
            time.sleep(0.5)


def batch_sizes(metrics_port: int) -> dict | None:
    """Batches the generator replicas ran, from their `onestep_batch_size` histograms (one
    series per replica process): how many, the mean size, and the share larger than one."""
    try:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    except requests.RequestException:
        return None
    series: dict[str, dict] = {}
    for line in text.splitlines():
        if not line.startswith(("ray_onestep_batch_size", "ray_onestep_chunks")):
            continue
        worker = re.search(r'WorkerId="([^"]+)"', line)
        one = series.setdefault(worker.group(1)[:8] if worker else "?", {})
        value = float(line.rsplit(" ", 1)[-1])
        if line.startswith("ray_onestep_chunks"):
            one["chunks"] = value  # the histogram's own _sum is wrong in Ray 2.60
        elif line.startswith("ray_onestep_batch_size_count"):
            one["batches"] = value
        elif 'le="1.0"' in line:
            one["singles"] = value
    total = {k: sum(s.get(k, 0) for s in series.values())
             for k in ("batches", "chunks", "singles")}
    if not total["batches"]:
        return None
    return {"batches": int(total["batches"]), "mean": total["chunks"] / total["batches"],
            "share_of_batches_above_1": 1 - total["singles"] / total["batches"],
            "per_replica": series}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    p = np.percentile(values, [50, 95, 99])
    return {"p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2])}


def plot(out: Path, replicas: list, records: list, phases: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t, n = zip(*replicas)
    top.step(t, n, where="post", color="tab:blue")
    top.set_ylabel("Generator replicas (running)")
    top.set_ylim(0, max(n) + 1)
    for ax in (top, bottom):
        ax.axvspan(*phases["load"], color="tab:orange", alpha=0.12, label="burst")
    top.legend(loc="upper right")
    for route, colour in (("generate", "tab:green"), ("stream", "tab:purple")):
        rs = [r for r in records if r["route"] == route and r["status"] == 200]
        bottom.scatter([r["t"] + r["latency_s"] for r in rs], [r["latency_s"] for r in rs],
                       s=10, color=colour, label=f"/v1/{route} latency")
    rs = [r for r in records if r.get("first_piece_s") is not None]
    bottom.scatter([r["t"] + r["first_piece_s"] for r in rs], [r["first_piece_s"] for r in rs],
                   s=10, marker="x", color="black", label="stream: first piece")
    bottom.set_xlabel("time since deployment (s)")
    bottom.set_ylabel("seconds")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/adversarial-tiny/exports/1step")
    p.add_argument("--config", default=str(ROOT / "serve" / "config.yaml"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=300, help="most requests in all")
    p.add_argument("--warm-seconds", type=float, default=10.0, help="one client before the burst")
    p.add_argument("--load-seconds", type=float, default=60.0, help="longest burst")
    p.add_argument("--idle-seconds", type=float, default=90.0, help="longest wait for downscale")
    p.add_argument("--audio-seconds", type=float, default=2.0)
    p.add_argument("--stream-every", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "reports" / "serve"))
    args = p.parse_args(argv)

    import ray
    import yaml
    from ray import serve

    from serve.app import from_config

    spec = yaml.safe_load(Path(args.config).read_text())["applications"][0]
    scaling = next(d for d in spec["deployments"] if d["name"] == "Generator"
                   )["autoscaling_config"]
    metrics_port = _free_port()
    # One logical CPU per replica at most, the ingress's, and one to spare.
    ray.init(address="local", num_cpus=scaling["max_replicas"] + 2, include_dashboard=False,
             log_to_driver=False, _metrics_export_port=metrics_port)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        t0 = time.perf_counter()
        serve.run(from_config(args.config, checkpoint=args.checkpoint), name="onestep",
                  route_prefix="/")
        deployed = time.perf_counter() - t0
        watch = ReplicaWatch(t0)
        watch.start()
        load = Load(*_inputs(args.audio_seconds), args.stream_every, t0)
        phases = {"warm": (time.perf_counter() - t0, None)}
        print(f"deployed in {deployed:.1f} s; one client for {args.warm_seconds:g} s", flush=True)
        load.run(1, time.perf_counter() + args.warm_seconds, args.requests)
        start = time.perf_counter()
        print(f"burst: {args.clients} clients, ≤{args.load_seconds:g} s, ≤{args.requests} "
              "requests", flush=True)
        load.run(args.clients, start + args.load_seconds, args.requests)
        phases["load"] = (start - t0, time.perf_counter() - t0)
        print(f"burst over after {len(load.records)} requests; waiting for downscale", flush=True)
        quiet = time.perf_counter()
        while (time.perf_counter() - quiet < args.idle_seconds
               and watch.count() > scaling["min_replicas"]):
            time.sleep(1)
        time.sleep(3)
        watch.stop.set()
        watch.join()
        phases["idle"] = (quiet - t0, time.perf_counter() - t0)
        batching = batch_sizes(metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()

    records = sorted(load.records, key=lambda r: r["t"])
    ok = [r for r in records if r["status"] == 200]
    errors = [r for r in records if r["status"] != 200]
    counts = [n for _, n in watch.samples]
    in_load = [r for r in ok if phases["load"][0] <= r["t"] <= phases["load"][1]]
    load_s = phases["load"][1] - phases["load"][0]
    peak_at = next((t for t, n in watch.samples if n == max(counts)), None)
    back_at = next((t for t, n in watch.samples if t > phases["load"][1]
                    and n == scaling["min_replicas"]), None)
    summary = {
        "requests": len(records), "errors": len(errors),
        "error_statuses": sorted({r["status"] for r in errors}),
        "throughput_rps_during_burst": len(in_load) / load_s if load_s else 0.0,
        "latency_s": {route: percentiles([r["latency_s"] for r in ok if r["route"] == route])
                      for route in ("generate", "stream")},
        "first_piece_s": percentiles([r["first_piece_s"] for r in ok
                                      if r.get("first_piece_s") is not None]),
        "replicas": {"min_config": scaling["min_replicas"], "max_config":
                     scaling["max_replicas"], "start": counts[0], "peak": max(counts),
                     "end": counts[-1],
                     "peak_reached_s_after_burst": (peak_at - phases["load"][0]
                                                    if peak_at is not None else None),
                     "back_to_min_s_after_burst": (back_at - phases["load"][1]
                                                   if back_at is not None else None)},
        "batching": batching, "deploy_s": deployed, "phases_s": phases,
        "audio_seconds": args.audio_seconds, "clients": args.clients,
        "checkpoint": args.checkpoint, "autoscaling_config": scaling,
    }

    out = Path(args.out)
    meta, lines = header("Serve under load: autoscaling, latency, errors", "serve_load.py",
                         "local Ray, serve/config.yaml's application, CPU")
    lines += [(f"Checkpoint `{args.checkpoint}`; {args.audio_seconds:g} s of audio per request;"
               f" every {args.stream_every}th request streamed. Autoscaling: "
               f"{scaling['min_replicas']}–{scaling['max_replicas']} replicas, target "
               f"{scaling['target_ongoing_requests']} ongoing requests per replica."), "",
              "| | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in _table(summary)]
    lines += ["", "![replicas and latency over time](serve.png)", ""]
    plot(out, watch.samples, records, phases)
    save(out, meta, {"summary": summary, "replicas": watch.samples, "requests": records}, lines)
    return 1 if errors else 0


def _table(summary: dict) -> list[tuple[str, str]]:
    """The markdown rows: what a reader checks first (errors, scaling) and the latencies."""
    lat, rep, batching = summary["latency_s"], summary["replicas"], summary["batching"]
    rows = [("requests / errors", f"{summary['requests']} / **{summary['errors']}**"),
            (f"throughput during the burst ({summary['clients']} clients)",
             f"{summary['throughput_rps_during_burst']:.2f} req/s")]
    rows += [(f"/v1/{route} latency p50 / p95 / p99",
              " / ".join(f"{lat[route][k]:.2f} s" for k in ("p50", "p95", "p99")))
             for route in ("generate", "stream") if lat[route]]
    if summary["first_piece_s"]:
        first = summary["first_piece_s"]
        rows.append(("stream: first piece p50 / p95",
                     f"{first['p50']:.2f} s / {first['p95']:.2f} s"))
    rows += [("replicas: start → peak → end", f"{rep['start']} → {rep['peak']} → {rep['end']}"),
             ("peak reached after the burst began", _seconds(rep["peak_reached_s_after_burst"])),
             (f"back to {rep['min_config']} after the burst ended",
              _seconds(rep["back_to_min_s_after_burst"])),
             ("chunks per batch: mean; batches of more than one",
              f"{batching['mean']:.2f}; {100 * batching['share_of_batches_above_1']:.0f}% of "
              f"{batching['batches']}" if batching else "not exported")]
    return rows


def _seconds(value) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
