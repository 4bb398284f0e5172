"""Write a data set as shards with parallel Ray tasks: SynthTalk, or a folder of the user's MP4s."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from onestep.config import SynthConfig
from onestep.shards import (clip_row, rows_to_parquet, shard_name, synth_source, video_clips,
                            write_manifest, write_synth_shard)
from onestep.storage import Location, check_reachable, resolve

log = logging.getLogger(__name__)


def _run_tasks(refs: list, desc: str) -> list[dict]:
    """Wait for tasks in completion order with a progress bar; results in submission order."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="shard") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[index[done[0]]] = ray.get(done[0])
            bar.update(1)
    return results


@ray.remote(num_cpus=1)
def _synth_shard(uri: str, endpoint: str, index: int, cfg: SynthConfig) -> dict:
    return write_synth_shard(resolve(uri, endpoint), index, cfg)


@ray.remote(num_cpus=1)
def _video_shard(uri: str, endpoint: str, index: int, video: str, cfg: SynthConfig) -> dict:
    root = resolve(uri, endpoint)
    loc = root.join(shard_name(index))
    if not loc.exists():  # writes are atomic: an existing shard is a complete one
        rows = [clip_row(c, cfg.fps, cfg.sample_rate)
                for c in video_clips(Path(video).stem, Path(video).read_bytes(), cfg)]
        if not rows:
            return {"name": None, "rows": 0, "video": video}
        loc.write_bytes(rows_to_parquet(rows))
    return {"name": shard_name(index), "rows": pq.read_metadata(
        loc.fs.open_input_file(loc.path)).num_rows, "video": video}


def prepare_synthtalk(cfg: SynthConfig, out: Location) -> dict:
    """Generate `cfg.num_clips` SynthTalk clips into shards under `out`; idempotent."""
    check_reachable(out, create=True)
    n_shards = -(-cfg.num_clips // cfg.clips_per_shard)
    refs = [_synth_shard.remote(out.uri, out.endpoint_url, i, cfg) for i in range(n_shards)]
    shards = _run_tasks(refs, f"SynthTalk → {out.uri}")
    skipped = sum(s["skipped"] for s in shards)
    if skipped:
        log.info("%d of %d shards were already complete and were kept", skipped, n_shards)
    return write_manifest(out, shards, synth_source(cfg))


def ingest_videos(folder: str, cfg: SynthConfig, out: Location) -> dict:
    """Cut every .mp4 under `folder` into clips, one shard per video."""
    videos = sorted(str(p) for p in Path(folder).expanduser().rglob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"{folder}: no .mp4 files found to ingest")
    check_reachable(out, create=True)
    refs = [_video_shard.remote(out.uri, out.endpoint_url, i, v, cfg)
            for i, v in enumerate(videos)]
    shards = _run_tasks(refs, f"ingest → {out.uri}")
    for s in shards:
        if s["rows"] == 0:
            log.warning("%s is shorter than one clip (%.1f s); skipped", s["video"],
                        cfg.clip_seconds)
    return write_manifest(out, [s for s in shards if s["rows"]],
                          {"kind": "videos", "folder": str(folder), "count": len(videos)})

