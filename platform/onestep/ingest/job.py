"""Ingest a folder or S3 prefix of talking-head videos: Ray tasks over videos and their parts,
resumable.

A video longer than `ingest.part_seconds` is cut into parts of about that length, each its own
task, so that one long recording spreads over the cluster as a folder of short ones does. Each
task analyses its stretch (onestep.ingest.faces, seeking to its start), cuts its clips
(onestep.ingest.clips) into one shard written as it goes (row groups of a few clips: memory does
not grow with the video), then writes its part record under `videos/<video>/`: its clips, tiers
and dropped seconds per reason. A face span that runs over a part's end is cut there, so each
part edge costs at most one clip's length of footage (counted as `too_short`).

When the last part of a video is in, the video's record (`videos/<video>.json`, the parts summed)
marks it done. Records carry the file's version (size and modification time, or ETag on S3): a
re-run skips videos, and parts of unfinished videos, whose record matches the file, so an
interrupted ingest finishes by running it again, and a replaced video is done again. A file
that cannot be used gets a video record saying why. The manifest, written last, lists the shards
and sums the records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from onestep.config import Config, from_dict
from onestep.ingest.clips import Tally, cut_clips
from onestep.ingest.faces import analyse
from onestep.ingest.stream import VideoInfo, probe
from onestep.media import MediaError
from onestep.shards import SCHEMA, write_manifest
from onestep.storage import Location, StorageError, check_reachable, resolve
from onestep.sync.score import load_scorer

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
RECORDS = "videos"
ROW_GROUP = 8  # clips per Parquet row group: what a writer holds before flushing
SUMMED = ("clips", "seconds", "analyse_s", "cut_s")  # part record fields a video record adds up


@dataclass(frozen=True)
class Part:
    """Seconds [start, end) of a video's picture that one task ingests: the `index`th of `count`
    parts starting every `every` seconds (the last one's end is open: headers can understate a
    file's length)."""

    index: int
    count: int
    every: float

    @property
    def start(self) -> float:
        return self.index * self.every

    @property
    def end(self) -> float:
        return math.inf if self.index == self.count - 1 else self.start + self.every

    @property
    def name(self) -> str:  # the layout is in the name: records of another split never match
        return (f"part-{self.index + 1:03d}-of-{self.count:03d}"
                + (f"-every-{self.every:g}s" if self.count > 1 else ""))


def parts_of(duration: float, part_seconds: float) -> list[Part]:
    """Parts starting every `part_seconds` (one when that is 0); the last takes the rest, so none
    is shorter than half a part."""
    count = max(1, round(duration / part_seconds)) if part_seconds > 0 else 1
    return [Part(k, count, part_seconds if count > 1 else 0.0) for k in range(count)]


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


def _video_record(out: Location, rel: str) -> Location:
    return out.join(RECORDS, f"{_key(rel)}.json")


def _done(record_loc: Location, version: str) -> dict | None:
    """The record at `record_loc` if it was written for this version of the video."""
    if record_loc.exists():
        record = json.loads(record_loc.read_bytes())
        if record.get("version") == version:
            return record
    return None


def _failed(rel: str, path, error: MediaError) -> str:
    """A file's error, naming it by its path in the input rather than where it was read."""
    return f"{rel}: {str(error).split(': ', 1)[-1]}".replace(str(path), rel)


def survey(video: Location, rel: str, out: Location, cfg: Config) -> dict:
    """What is left to do for one video: `{"record": ...}` when it is done (or unusable: the
    record says why, and is written), else its version, stream facts and parts. Reads only the
    headers and first frame (S3: by range requests, nothing downloaded)."""
    version = video.version()
    record_loc = _video_record(out, rel)
    if (record := _done(record_loc, version)) is not None:
        return {"record": {**record, "skipped": True}}
    try:
        with video.fs.open_input_file(video.path) as f:
            info = probe(f, name=video.path)
        if not info.has_audio:
            raise MediaError(f"{video.path}: no audio track")
    except MediaError as e:
        record = combine(rel, version, [], _failed(rel, video.path, e))
        record_loc.write_bytes(json.dumps(record, indent=1).encode())
        return {"record": {**record, "skipped": False}}
    return {"version": version, "info": asdict(info),
            "parts": [asdict(p) for p in parts_of(info.duration, cfg.ingest.part_seconds)]}


def _local_copy(video: Location, dest: Path) -> Path:
    """The video as a local file: itself, or downloaded to `dest`."""
    if not video.is_s3:
        return Path(video.path)
    video.download(dest)
    return dest


def ingest_part(video: Location, rel: str, out: Location, cfg: Config, version: str,
                info: VideoInfo, part: Part) -> dict:
    """Ingest one part of a video into `out` (shard + part record) unless its record says it
    is done for this version of the file."""
    record_loc = out.join(RECORDS, _key(rel), f"{part.name}.json")
    if (record := _done(record_loc, version)) is not None:
        return {**record, "skipped": True}
    shard = f"shard-{_key(rel)}-{part.name}.parquet"
    tally, clips, error, timing = Tally(), 0, None, {}
    with tempfile.TemporaryDirectory(prefix="onestep-ingest-") as tmp:
        path = Path(tmp) / Path(video.path).name
        try:
            path = _local_copy(video, path)
            t0 = time.perf_counter()
            analysis = analyse(path, info, cfg.ingest, since=part.start, until=part.end)
            t1 = time.perf_counter()
            scorer = load_scorer(cfg.sync, cfg.run.s3_endpoint_url) if cfg.sync.weights else None
            rows = cut_clips(path, info, analysis, cfg, rel, _split(rel, cfg.ingest.test_fraction),
                             tally, scorer)
            clips = _write_shard(rows, Path(tmp) / shard)
            timing = {"seconds": round(analysis.end - analysis.start, 2),
                      "analyse_s": round(t1 - t0, 2), "cut_s": round(time.perf_counter() - t1, 2)}
            if clips:
                out.join(shard).upload(Path(tmp) / shard)
        except MediaError as e:  # the file, not the job: named in its record and the log
            error = _failed(rel, path, e)
    record = {"video": rel, "version": version, "part": part.name,
              "shards": [{"name": shard, "rows": clips}] if clips else [], "clips": clips,
              "tiers": dict(tally.tiers),
              "dropped": {k: round(v, 2) for k, v in tally.dropped.items()}, "error": error,
              **timing}
    record_loc.write_bytes(json.dumps(record, indent=1).encode())
    return {**record, "skipped": False}


def combine(rel: str, version: str, parts: list[dict], error: str | None = None) -> dict:
    """A video's record from its parts' (in order): shards listed, counts summed, the first
    error kept."""
    tiers, dropped = Counter(), Counter()
    for p in parts:
        tiers.update(p["tiers"])
        dropped.update(p["dropped"])
    error = error or next((p["error"] for p in parts if p["error"]), None)
    return {"video": rel, "version": version, "parts": len(parts),
            "shards": [s for p in parts for s in p["shards"]], "tiers": dict(tiers),
            "dropped": {k: round(v, 2) for k, v in dropped.items()}, "error": error,
            **{k: round(sum(p.get(k, 0) for p in parts), 2) for k in SUMMED}}


def ingest_video(video: Location, rel: str, out: Location, cfg: Config) -> dict:
    """One video, every part in this process, one after the other: what the tasks of `ingest`
    do, without Ray (benchmarks/ingest.py measures it so)."""
    plan = survey(video, rel, out, cfg)
    if "record" in plan:
        return plan["record"]
    info = VideoInfo(**plan["info"])
    parts = [ingest_part(video, rel, out, cfg, plan["version"], info, Part(**p))
             for p in plan["parts"]]
    record = combine(rel, plan["version"], parts)
    _video_record(out, rel).write_bytes(json.dumps(record, indent=1).encode())
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
def _survey_task(video_uri: str, rel: str, out_uri: str, endpoint: str, config: dict) -> dict:
    return survey(resolve(video_uri, endpoint), rel, resolve(out_uri, endpoint),
                  from_dict(config))


@ray.remote(num_cpus=1)
def _part_task(video_uri: str, rel: str, out_uri: str, endpoint: str, config: dict,
               version: str, info: dict, part: dict) -> dict:
    return ingest_part(resolve(video_uri, endpoint), rel, resolve(out_uri, endpoint),
                       from_dict(config), version, VideoInfo(**info), Part(**part))


def _seconds(totals: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in sorted(totals.items(), key=lambda kv: -kv[1]))


def ingest(src: str, cfg: Config, out: Location) -> dict:
    """Every video under `src` → clip shards + manifest under `out`. Returns the manifest."""
    endpoint = cfg.run.s3_endpoint_url
    videos = list_videos(src, endpoint)
    if not videos:
        raise IngestError(f"{src}: no video files ({', '.join(VIDEO_SUFFIXES)}) to ingest")
    check_reachable(out, create=True)
    config = cfg.to_dict()
    plans = ray.get([_survey_task.remote(v.uri, rel, out.uri, endpoint, config)
                     for v, rel in videos])
    records = {rel: p["record"] for (_, rel), p in zip(videos, plans) if "record" in p}
    refs, waiting = {}, {}  # part task → video; video → its part records so far (None: running)
    for (video, rel), plan in zip(videos, plans):
        if "record" not in plan:
            waiting[rel] = [None] * len(plan["parts"])
            for part in plan["parts"]:
                ref = _part_task.remote(video.uri, rel, out.uri, endpoint, config,
                                        plan["version"], plan["info"], part)
                refs[ref] = (rel, plan["version"], part["index"])
    parts_before = 0
    with tqdm(total=len(videos), initial=len(records), desc=f"ingest → {out.uri}",
              unit="video") as bar:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            rel, version, index = refs[done[0]]
            parts = waiting[rel]
            parts[index] = ray.get(done[0])
            parts_before += parts[index]["skipped"]
            if all(p is not None for p in parts):
                records[rel] = {**combine(rel, version, parts), "skipped": False}
                _video_record(out, rel).write_bytes(json.dumps(
                    {k: v for k, v in records[rel].items() if k != "skipped"}, indent=1).encode())
                bar.update(1)
            bar.set_postfix(clips=sum(r["clips"] for r in records.values()),
                            parts=f"{len(refs) - len(pending)}/{len(refs)}")
    records = [records[rel] for _, rel in videos]
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
    log.info("ingested %d of %d videos (%d done before%s): %d clips; tiers: %s",
             len(records) - len(failed), len(records), done_before,
             f"; {parts_before} of {len(refs)} parts of the others" if parts_before else "",
             clips, ", ".join(f"{t} {tiers[t]}" for t in ("high", "moderate", "low") if tiers[t]))
    log.info("dropped: %s", _seconds(dropped) or "nothing")
    return write_manifest(out, [s for r in records for s in r["shards"]],
                          {"kind": "videos", "input": src, "videos": len(records)},
                          extra={"tiers": dict(tiers),
                                 "dropped_seconds": {k: round(v, 2) for k, v in dropped.items()},
                                 "skipped_files": [r["error"] for r in failed]})
