"""Ingest a folder or S3 prefix of talking-head videos: one Ray task per video, resumable.

Each task analyses its video (onestep.ingest.faces), cuts its clips (onestep.ingest.clips) into
one shard written as it goes (row groups of a few clips: memory does not grow with the video),
then writes the video's record under `videos/`: its clips, tiers and dropped seconds per reason,
or why the file was skipped. A record marks a video done: a re-run skips videos whose record
matches the file (same size and modification time, or ETag on S3), so an interrupted ingest
finishes by running it again, and a replaced video is done again. The manifest, written last,
lists the shards and sums the records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from onestep.config import Config, from_dict
from onestep.ingest.clips import Tally, cut_clips
from onestep.ingest.faces import analyse
from onestep.ingest.stream import probe
from onestep.media import MediaError
from onestep.shards import SCHEMA, write_manifest
from onestep.storage import Location, StorageError, check_reachable, resolve
from onestep.sync.score import load_scorer

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
RECORDS = "videos"
ROW_GROUP = 8  # clips per Parquet row group: what a writer holds before flushing


class IngestError(ValueError):
    """Nothing usable came out of the input; the message says what each file was."""


def list_videos(src: str, endpoint_url: str = "") -> list[tuple[Location, str]]:
    """Every video under `src` (a folder or s3:// prefix) with its path relative to `src`."""
    root = resolve(src, endpoint_url)
    try:
        infos = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
    except FileNotFoundError:
        raise StorageError(f"{src}: no such folder or prefix") from None
    except OSError as e:  # S3: access denied, no such bucket, unreachable endpoint
        raise StorageError(f"{src}: cannot list it ({str(e).splitlines()[0][:200]})") from None
    found = []
    for info in infos:
        if info.type == pafs.FileType.File and info.path.lower().endswith(VIDEO_SUFFIXES):
            rel = info.path[len(root.path):].lstrip("/")
            found.append((root.join(rel), rel))
    return sorted(found, key=lambda v: v[1])


def _split(rel: str, test_fraction: float) -> str:
    return "test" if zlib.crc32(rel.encode()) % 10_000 < test_fraction * 10_000 else "train"


def _key(rel: str) -> str:
    return hashlib.sha1(rel.encode()).hexdigest()[:16]


def _local_copy(video: Location, dest: Path) -> Path:
    """The video as a local file: itself, or downloaded to `dest`."""
    if not video.is_s3:
        return Path(video.path)
    video.download(dest)
    return dest


def ingest_video(video: Location, rel: str, out: Location, cfg: Config) -> dict:
    """Ingest one video into `out` (shard + record) unless its record says it is done."""
    record_loc = out.join(RECORDS, f"{_key(rel)}.json")
    version = video.version()
    if record_loc.exists():
        record = json.loads(record_loc.read_bytes())
        if record.get("version") == version:
            return {**record, "skipped": True}
    shard = f"shard-{_key(rel)}.parquet"
    tally, clips, error, timing = Tally(), 0, None, {}
    with tempfile.TemporaryDirectory(prefix="onestep-ingest-") as tmp:
        path = Path(tmp) / Path(video.path).name
        try:
            path = _local_copy(video, path)
            info = probe(path)
            if not info.has_audio:
                raise MediaError(f"{path}: no audio track")
            t0 = time.perf_counter()
            analysis = analyse(path, info, cfg.ingest)
            t1 = time.perf_counter()
            scorer = load_scorer(cfg.sync, cfg.run.s3_endpoint_url) if cfg.sync.weights else None
            rows = cut_clips(path, info, analysis, cfg, rel, _split(rel, cfg.ingest.test_fraction),
                             tally, scorer)
            clips = _write_shard(rows, Path(tmp) / shard)
            timing = {"seconds": round(analysis.duration, 2), "analyse_s": round(t1 - t0, 2),
                      "cut_s": round(time.perf_counter() - t1, 2)}
            if clips:
                out.join(shard).upload(Path(tmp) / shard)
        except MediaError as e:  # the file, not the job: named in its record and the log
            error = f"{rel}: {str(e).split(': ', 1)[-1]}".replace(str(path), rel)
    record = {"video": rel, "version": version, "shard": shard if clips else None,
              "clips": clips, "tiers": dict(tally.tiers),
              "dropped": {k: round(v, 2) for k, v in tally.dropped.items()}, "error": error,
              **timing}
    record_loc.write_bytes(json.dumps(record, indent=1).encode())
    return {**record, "skipped": False}


def _write_shard(rows, path: Path) -> int:
    """Stream rows into a Parquet file, ROW_GROUP at a time; returns how many."""
    count, group = 0, []
    with pq.ParquetWriter(path, SCHEMA, compression="zstd") as writer:
        for row in rows:
            group.append(row)
            if len(group) == ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(group, schema=SCHEMA))
                count, group = count + len(group), []
        if group:
            writer.write_table(pa.Table.from_pylist(group, schema=SCHEMA))
            count += len(group)
    return count


@ray.remote(num_cpus=1)
def _ingest_task(video_uri: str, rel: str, out_uri: str, endpoint: str, config: dict) -> dict:
    return ingest_video(resolve(video_uri, endpoint), rel, resolve(out_uri, endpoint),
                        from_dict(config))


def _seconds(totals: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in sorted(totals.items(), key=lambda kv: -kv[1]))


def ingest(src: str, cfg: Config, out: Location) -> dict:
    """Every video under `src` → clip shards + manifest under `out`. Returns the manifest."""
    endpoint = cfg.run.s3_endpoint_url
    videos = list_videos(src, endpoint)
    if not videos:
        raise IngestError(f"{src}: no video files ({', '.join(VIDEO_SUFFIXES)}) to ingest")
    check_reachable(out, create=True)
    refs = {_ingest_task.remote(v.uri, rel, out.uri, endpoint, cfg.to_dict()): rel
            for v, rel in videos}
    records, pending = [], list(refs)
    with tqdm(total=len(refs), desc=f"ingest → {out.uri}", unit="video") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            records.append(ray.get(done[0]))
            bar.update(1)
            bar.set_postfix(clips=sum(r["clips"] for r in records))
    records.sort(key=lambda r: r["video"])
    dropped, tiers = Counter(), Counter()
    for r in records:
        dropped.update(r["dropped"])
        tiers.update(r["tiers"])
    failed = [r for r in records if r["error"]]
    done_before = sum(r["skipped"] for r in records)
    clips = sum(r["clips"] for r in records)
    for r in failed:
        log.warning("skipped %s", r["error"])
    if not clips:
        why = "; ".join(r["error"] or f"{r['video']}: dropped {_seconds(r['dropped'])}"
                        for r in records)
        raise IngestError(f"{src}: no usable clip in {len(records)} video file(s): {why}")
    log.info("ingested %d of %d videos (%d done before): %d clips; tiers: %s", len(records)
             - len(failed), len(records), done_before, clips,
             ", ".join(f"{t} {tiers[t]}" for t in ("high", "moderate", "low") if tiers[t]))
    log.info("dropped: %s", _seconds(dropped) or "nothing")
    shards = [{"name": r["shard"], "rows": r["clips"]} for r in records if r["clips"]]
    return write_manifest(out, shards, {"kind": "videos", "input": src, "videos": len(records)},
                          extra={"tiers": dict(tiers),
                                 "dropped_seconds": {k: round(v, 2) for k, v in dropped.items()},
                                 "skipped_files": [r["error"] for r in failed]})
