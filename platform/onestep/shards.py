"""Parquet shards of clips plus a manifest, in a local folder or S3.

One row per clip: the MP4 (H.264+AAC) as training sees it, raw 16 kHz PCM (so audio features are
not computed from a lossy AAC track), metadata and per-frame labels. Shards are written atomically
and the manifest last, so a re-run skips complete shards and an interrupted run leaves no half
shard under a final name.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq

from onestep.config import SynthConfig
from onestep.media import encode_mp4, pcm16_bytes
from onestep.storage import Location, StorageError
from onestep.synth import Clip, make_clip

MANIFEST = "manifest.json"
FORMAT = "onestep-shards/1"
LABELS = ["mouth_open", "mouth_width", "head_x", "head_y", "blink"]
QUALITY = ["sharpness", "face_px", "head_motion", "loudness_db", "snr_db", "sync_confidence",
           "sync_offset"]
CROP = ["crop_x", "crop_y", "crop_size"]

SCHEMA = pa.schema(
    [("clip_id", pa.string()), ("mp4", pa.binary()), ("clean_mp4", pa.binary()),
     ("audio_pcm16", pa.binary()), ("sample_rate", pa.int32()), ("fps", pa.int32()),
     ("num_frames", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
     ("identity", pa.int32()), ("quality", pa.float32()), ("split", pa.string()),
     ("degradations", pa.string())]
    + [(name, pa.list_(pa.float32())) for name in LABELS]
    # Quality tier (config.TIERS) and, for ingested video, its metrics (onestep.ingest.quality),
    # where the clip came from ({"video", "start"} JSON) and its crop per frame (centre x, y as
    # fractions of the source frame's width and height; side as a fraction of its shorter side).
    + [("tier", pa.string())] + [(name, pa.float32()) for name in QUALITY]
    + [("source", pa.string())] + [(name, pa.list_(pa.float32())) for name in CROP]
)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def synthtalk_tier(degradations: dict) -> str:
    """A clean render is `high`; one degradation of the picture alone (blur, compression,
    jitter) is `moderate`: worse to look at, still in sync, FADA's mixed supervision can learn
    from it; sound shifted off the picture or two degradations are `low`."""
    if not degradations:
        return "high"
    return "moderate" if len(degradations) == 1 and "offset" not in degradations else "low"


def clip_row(clip: Clip, fps: int, sample_rate: int) -> dict:
    h, w = clip.frames.shape[1:3]
    degraded = bool(clip.degradations)
    return {
        "clip_id": clip.clip_id,
        "mp4": encode_mp4(clip.frames, fps, clip.audio, sample_rate, crf=clip.crf),
        # The clean render is the PSNR/SSIM reference; only stored where it differs.
        "clean_mp4": encode_mp4(clip.clean_frames, fps, None, sample_rate) if degraded else None,
        "audio_pcm16": pcm16_bytes(clip.audio),
        "sample_rate": sample_rate, "fps": fps, "num_frames": len(clip.frames),
        "height": h, "width": w, "identity": clip.identity, "quality": clip.quality,
        "split": clip.split, "degradations": json.dumps(clip.degradations),
        "tier": synthtalk_tier(clip.degradations),
        **{k: (clip.labels[k].tolist() if k in clip.labels else None) for k in LABELS},
    }


def rows_to_parquet(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def shard_is_complete(loc: Location, rows: int) -> bool:
    """A shard counts as done only if its footer is readable and holds the expected rows."""
    if not loc.exists():
        return False
    try:
        with loc.fs.open_input_file(loc.path) as f:
            return pq.ParquetFile(f).metadata.num_rows == rows
    except (OSError, pa.ArrowInvalid):
        return False


def write_synth_shard(root: Location, index: int, cfg: SynthConfig) -> dict:
    """Generate and write shard `index` (clips [index*n, (index+1)*n)); skip it if complete."""
    first = index * cfg.clips_per_shard
    last = min(cfg.num_clips, first + cfg.clips_per_shard)
    loc = root.join(shard_name(index))
    if not shard_is_complete(loc, last - first):
        rows = [clip_row(make_clip(i, cfg), cfg.fps, cfg.sample_rate) for i in range(first, last)]
        loc.write_bytes(rows_to_parquet(rows))
        skipped = False
    else:
        skipped = True
    meta = pq.read_metadata(loc.fs.open_input_file(loc.path))
    return {"name": shard_name(index), "rows": meta.num_rows, "skipped": skipped}


def write_manifest(root: Location, shards: list[dict], source: dict, fmt: str = FORMAT,
                   extra: dict | None = None) -> dict:
    """The manifest, written last (a folder with one is complete); `extra`: a format's own keys."""
    manifest = {
        "format": fmt,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_clips": sum(s["rows"] for s in shards),
        "shards": [{"name": s["name"], "rows": s["rows"]} for s in shards],
        "source": source,
        **(extra or {}),
    }
    root.join(MANIFEST).write_bytes(json.dumps(manifest, indent=2).encode())
    return manifest


def read_manifest(root: Location, formats: tuple[str, ...] = (FORMAT,)) -> dict:
    """The manifest under `root`, refusing one of another format (clip shards by default;
    training also reads latent shards)."""
    loc = root.join(MANIFEST)
    if not loc.exists():
        raise StorageError(f"{loc.uri}: no manifest; run jobs/prepare_data.py --out {root.uri} "
                           "first")
    manifest = json.loads(loc.read_bytes())
    if manifest.get("format") not in formats:
        expected = " or ".join(repr(f) for f in formats)
        raise StorageError(f"{loc.uri}: format {manifest.get('format')!r}, expected {expected}")
    return manifest


def shard_uris(root: Location, manifest: dict) -> list[str]:
    return [root.join(s["name"]).path for s in manifest["shards"]]


def synth_source(cfg: SynthConfig) -> dict:
    return {"kind": "synthtalk", "config": asdict(cfg)}
