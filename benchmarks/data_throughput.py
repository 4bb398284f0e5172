"""Ray Data throughput from a local folder and from S3, against what training consumes.

    python benchmarks/data_throughput.py --config tiny --clips 96 --out reports/data_throughput

For each source (a local folder; a local S3 API server — moto on 127.0.0.1, started here):
  supply  the pipeline alone (read_parquet → PyAV decode → audio features → windows), iterated
          to the end twice; the second (warm) pass gives source clips/s, training windows/s
          and shard MB/s;
  demand  a 2-worker Ray Train + ZeRO-3 teacher run fed by the same pipeline: training
          clips/s and the fraction of each step spent blocked waiting for the next batch.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import ray
from _report import header, save

from onestep.config import load_config
from onestep.data import build_dataset
from onestep.prepare import prepare_synthtalk
from onestep.storage import resolve
from onestep.train.ray_job import launch


def _s3_server() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    return server, endpoint


def supply(cfg) -> dict:
    """Iterate the whole pipeline once; rates over the wall time of that pass."""
    root = resolve(cfg.data.uri)
    shard_bytes = sum(root.fs.get_file_info(root.join(n).path).size
                      for n in root.listdir() if n.endswith(".parquet"))
    t0 = time.perf_counter()
    windows = 0
    for batch in build_dataset(cfg).iter_torch_batches(batch_size=8):
        windows += len(batch["video"])
    dt = time.perf_counter() - t0
    clips = windows / cfg.data.windows_per_clip
    return {"seconds": dt, "clips_per_s": clips / dt, "windows_per_s": windows / dt,
            "mb_per_s": shard_bytes / 2 ** 20 / dt}


def demand(cfg, steps: int) -> dict:
    result = launch(cfg)
    if result.error:
        raise RuntimeError(result.error)
    m = result.metrics
    return {"train_clips_per_s": m["samples_per_s"], "data_wait_frac": m["data_wait_frac"],
            "step_time_s": m["step_time_s"], "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--train-steps", type=int, default=12)
    p.add_argument("--out", default="reports/data_throughput")
    args = p.parse_args()
    server, endpoint = _s3_server()
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    work = Path(tempfile.mkdtemp(prefix="onestep-bench-"))
    sources = {"local folder": str(work / "synthtalk"), "S3 (moto, 127.0.0.1)": "s3://bench/synthtalk"}
    rows = {}
    for name, uri in sources.items():
        base = load_config(args.config, [f"data.uri={uri}", f"synth.num_clips={args.clips}"])
        prepare_synthtalk(base.synth, resolve(uri))
        batch = base.train.global_batch
        cfg = load_config(args.config, [
            f"data.uri={uri}", f"synth.num_clips={args.clips}",
            f"run.root={work / 'runs'}", f"run.name=bench-{len(rows)}",
            f"train.total_clips={args.train_steps * batch}",
            f"train.log_every_steps={args.train_steps // 2}",
            f"train.checkpoint_every_clips={args.train_steps * batch}"])
        cold = supply(cfg)  # start-up (actors, encoder construction) lands in this pass
        rows[name] = {**supply(cfg), "cold_seconds": cold["seconds"],
                      **demand(cfg, args.train_steps)}
        print(name, rows[name], flush=True)
    server.stop()

    meta, lines = header(f"Data throughput: Ray Data supply vs training demand ({args.config})",
                         "data_throughput.py", "Ray Data and 2 Train workers share them")
    lines += ["| source | pipeline clips/s | windows/s | shard MB/s | training clips/s | "
             "supply / demand | step time blocked on data |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['clips_per_s']:.1f} | {r['windows_per_s']:.1f} | "
                     f"{r['mb_per_s']:.2f} | {r['train_clips_per_s']:.1f} | "
                     f"{r['windows_per_s'] / r['train_clips_per_s']:.1f}× | "
                     f"{100 * r['data_wait_frac']:.1f}% |")
    lines += ["", "A training example is one window; each decoded clip yields "
              "`data.windows_per_clip` windows, so supply/demand compares windows/s with "
              "training clips/s. 'Blocked' is the share of wall time the training loop spent "
              "in `next(batch)` over the last report interval (after start-up)."]
    save(Path(args.out), meta, rows, lines)


if __name__ == "__main__":
    main()
