"""Both data paths, from a local folder and from S3, against what training consumes.

    python benchmarks/data_throughput.py --config tiny --clips 48 --epochs 4 --out reports/data_throughput

Paths: clip shards (MP4 + PCM; Ray Data decodes video and computes audio features) and the
latent shards jobs/encode.py makes from the same clips (windows cut from stored latents). Sources:
a local folder and a local S3 API server (moto on 127.0.0.1, started here). For each:
  supply  the pipeline alone over eight passes of the data: time to its first batch (start-up),
          then windows/s and shard MB/s over the rest (the steady state);
  demand  a 2-worker Ray Train + ZeRO-3 teacher run of `--epochs` passes over the data: training
          clips/s over its last quarter, the share of the whole run blocked waiting for data after the first batch
          (every epoch boundary included) and the first batch's wait;
  encode  for latents, the encode job's clips/s (paid once per data set).
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
from onestep.data import build_dataset, data_manifest, readable_shards
from onestep.encode import encode_latents
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


def windows_per_pass(cfg) -> int:
    root, manifest = data_manifest(cfg)
    clips = readable_shards(root, manifest, cfg.data.on_corrupt, cfg.data)
    return sum(clips.values()) * cfg.data.windows_per_clip


def supply(cfg, passes: int = 8) -> dict:
    """Iterate `passes` passes: start-up is the wait for the first batch (actors starting, the
    first shard read); the rates are the steady state after it, over the other batches."""
    root = resolve(cfg.data.uri)
    shard_bytes = sum(root.fs.get_file_info(root.join(n).path).size
                      for n in root.listdir() if n.endswith(".parquet"))
    per_pass = windows_per_pass(cfg)
    t0 = time.perf_counter()
    windows, first = 0, None
    dataset = build_dataset(cfg, (passes - 1) * per_pass)  # + 1 pass: pass_plan
    for batch in dataset.iter_torch_batches(batch_size=8):
        if first is None:
            first = time.perf_counter()
            continue
        windows += len(batch["audio"])
    dt = time.perf_counter() - first
    total = passes * per_pass
    return {"startup_s": first - t0, "windows_per_s": windows / dt,
            "mb_per_s": shard_bytes * passes * windows / total / 2 ** 20 / dt}


def demand(cfg) -> dict:
    result = launch(cfg)
    if result.error:
        raise RuntimeError(result.error)
    m = result.metrics
    return {"train_clips_per_s": m["samples_per_s"], "data_wait_run_frac": m["data_wait_run_frac"],
            "first_batch_wait_s": m["first_batch_wait_s"], "steps": m["step"]}


def encode(cfg, clips: str, out: str) -> float:
    t0 = time.perf_counter()
    manifest = encode_latents(cfg, resolve(clips), resolve(out))
    return manifest["num_clips"] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--epochs", type=int, default=4, help="passes over the data per training run")
    p.add_argument("--out", default="reports/data_throughput")
    args = p.parse_args()
    server, endpoint = _s3_server()
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False)
    work = Path(tempfile.mkdtemp(prefix="onestep-bench-"))
    sources = {"local folder": str(work), "S3 (moto, 127.0.0.1)": "s3://bench"}
    rows = {}
    for source, root in sources.items():
        clips, latent_uri = f"{root}/synthtalk", f"{root}/latents"
        base = load_config(args.config, [f"data.uri={clips}", f"synth.num_clips={args.clips}"])
        prepare_synthtalk(base.synth, resolve(clips))
        encode_rate = encode(base, clips, latent_uri)
        for path, uri in (("clips (MP4)", clips), ("latents", latent_uri)):
            sets = [f"data.uri={uri}", f"synth.num_clips={args.clips}"]
            cfg = load_config(args.config, sets)
            batch = cfg.train.global_batch
            total = args.epochs * windows_per_pass(cfg) // batch * batch
            cfg = load_config(args.config, sets + [
                f"run.root={work / 'runs'}", f"run.name=bench-{len(rows)}",
                f"train.total_clips={total}", f"train.log_every_steps={total // batch // 4}",
                f"train.checkpoint_every_clips={total}", "validation.every_clips=0"])
            supply(cfg)  # a first execution: Ray Data's actors and the encoders start here
            row = {"source": source, "path": path, **supply(cfg), **demand(cfg)}
            if path == "latents":
                row["encode_clips_per_s"] = encode_rate
            rows[f"{source} / {path}"] = row
            print(row, flush=True)
    server.stop()

    meta, lines = header(f"Data throughput: Ray Data supply vs training demand ({args.config})",
                         "data_throughput.py", "Ray Data and 2 Train workers share them")
    lines += ["| source | shards | pipeline start-up s | windows/s | shard MB/s | "
              "training clips/s | supply / demand | blocked on data, whole run | first batch s |"
              " encode clips/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['source']} | {r['path']} | {r['startup_s']:.1f} | "
                     f"{r['windows_per_s']:.1f} | {r['mb_per_s']:.2f} | "
                     f"{r['train_clips_per_s']:.1f} | "
                     f"{r['windows_per_s'] / r['train_clips_per_s']:.1f}× | "
                     f"{100 * r['data_wait_run_frac']:.2f}% | {r['first_batch_wait_s']:.1f} | "
                     + (f"{r['encode_clips_per_s']:.1f} |" if "encode_clips_per_s" in r else "– |"))
    lines += ["", f"Each training run makes {args.epochs} passes over the data ({args.clips} "
              "clips, `data.windows_per_clip` windows each per pass) in one Ray Data pipeline, "
              "so epoch boundaries are inside it. 'Blocked, whole run' is the share of the run's "
              "wall time after its first batch that the training loop spent in `next(batch)`; "
              "the first batch waits for the pipeline to start, once per launch (before, every "
              "epoch restarted the pipeline and paid that again). A training example is one "
              "window, so supply/demand compares windows/s with training clips/s."]
    save(Path(args.out), meta, rows, lines)


if __name__ == "__main__":
    main()
