"""Shards → training examples, streamed with Ray Data, for a whole run in one pipeline.

Two kinds of shards train: clip shards (jobs/prepare_data.py: MP4 + PCM per clip), decoded and
cut into pixel windows by Ray Data tasks (never in the training workers), and latent shards
(jobs/encode.py, `onestep.latents`), cut into latent windows with no decoding at all.

The pipeline is a plan of (shard, pass) items covering every pass over the data the run needs,
each pass in its own seeded shard order, executed once. Ray Data therefore never restarts between
epochs: restarting cost ~20 s of blocked training per epoch (its actors start again and the first
shards must be read before a batch exists). A clip's windows are drawn from (seed, clip, pass),
so they do not depend on which actor cuts them. Nothing holds the data set in memory.
"""

from __future__ import annotations

import logging
import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from onestep import latents, shards
from onestep.audio_features import build_audio_encoder
from onestep.config import TIERS, Config, DataConfig
from onestep.media import MediaError, decode_video, pcm16_array
from onestep.storage import Location, StorageError, resolve

log = logging.getLogger(__name__)
COLUMNS = ["clip_id", "mp4", "audio_pcm16", "sample_rate", "fps", "split", "tier"]


class DataError(StorageError):
    """The data at `data.uri` cannot be trained on; the message names the shard."""


class CorruptClip(ValueError):
    pass


def to_unit(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) → float32 (3, ..., H, W) in [-1, 1]."""
    x = frames.astype(np.float32) / 127.5 - 1.0
    return np.moveaxis(x, -1, 0)


def decoded_clip(row: dict, cfg: Config, encoder) -> tuple[np.ndarray, np.ndarray]:
    """A clip row's frames (n, H, W, 3) uint8 and audio features (n·r, D), r per frame, cut to
    the n frames both cover; a clip that does not match the config is a `CorruptClip`."""
    clip_id = row["clip_id"]
    try:
        frames, fps = decode_video(row["mp4"])
    except MediaError as e:
        raise CorruptClip(f"clip {clip_id}: {e}") from None
    if int(round(fps)) != cfg.synth.fps or int(row["sample_rate"]) != cfg.audio.sample_rate:
        raise CorruptClip(f"clip {clip_id}: {fps} fps / {row['sample_rate']} Hz, expected "
                          f"{cfg.synth.fps} fps / {cfg.audio.sample_rate} Hz")
    if frames.shape[1] != cfg.resolution or frames.shape[2] != cfg.resolution:
        raise CorruptClip(f"clip {clip_id}: {frames.shape[2]}x{frames.shape[1]} frames, expected "
                          f"{cfg.resolution}x{cfg.resolution}")
    if len(row["audio_pcm16"]) % 2:
        raise CorruptClip(f"clip {clip_id}: {len(row['audio_pcm16'])} bytes of 16-bit PCM audio, "
                          "an odd count (truncated?)")
    per_frame = cfg.audio.feature_rate // cfg.synth.fps
    feats = encoder(pcm16_array(row["audio_pcm16"]))
    n = min(len(frames), len(feats) // per_frame)
    return frames[:n], feats[:n * per_frame]


def tier_code(row: dict) -> np.int8:
    """A clip's quality tier as its index in TIERS (what a batch carries); a clip of shards
    written before tiers counts as `high`, as every clip was trained on alike then."""
    return np.int8(TIERS.index(row.get("tier") or TIERS[0]))


def clip_windows(row: dict, cfg: Config, encoder, rng: np.random.Generator) -> list[dict]:
    """Cut one clip row into `windows_per_clip` pixel training examples."""
    frames, feats = decoded_clip(row, cfg, encoder)
    n, f_len = len(frames), cfg.data.frames
    per_frame = cfg.audio.feature_rate // cfg.synth.fps
    if n < f_len:
        raise CorruptClip(f"clip {row['clip_id']}: {n} usable frames, need at least {f_len}")
    out = []
    for _ in range(cfg.data.windows_per_clip):
        start = int(rng.integers(0, n - f_len + 1))
        ref_index = int(rng.integers(0, n))
        out.append({
            "video": to_unit(frames[start:start + f_len]),  # (3, F, H, W)
            "ref": to_unit(frames[ref_index]),  # (3, H, W)
            "audio": feats[start * per_frame:(start + f_len) * per_frame],  # (F·r, D)
            "use_motion": np.bool_(rng.random() < cfg.data.motion_prob),
            "tier": tier_code(row),
        })
    return out


def latent_windows(row: dict, cfg: Config, dtype: np.dtype,
                   rng: np.random.Generator) -> list[dict]:
    """Cut one latent-shard row into `windows_per_clip` training examples (float32)."""
    try:
        latent = latents.tensor(row, "latent", dtype)  # (C, L, h, w)
        audio = latents.tensor(row, "audio", np.float32)  # (L·tf·r, D), aligned per latent frame
        refs = latents.tensor(row, "refs", dtype)  # (K, C, h, w)
        images = latents.tensor(row, "image", np.float32)  # (K, tokens, D) or None
    except (TypeError, ValueError) as e:  # bytes that do not fill the recorded shape
        raise CorruptClip(f"clip {row['clip_id']}: its stored tensors do not match their "
                          f"shapes ({e})") from None
    length = latent.shape[1]
    window = 1 + (cfg.data.frames - 1) // cfg.codec.temporal_factor
    if length < window:
        raise CorruptClip(f"clip {row['clip_id']}: {length} latent frames, a window of "
                          f"data.frames={cfg.data.frames} needs {window}")
    per_latent = audio.shape[0] // length
    out = []
    for _ in range(cfg.data.windows_per_clip):
        start, k = int(rng.integers(0, length - window + 1)), int(rng.integers(0, len(refs)))
        example = {
            "latent": latent[:, start:start + window].astype(np.float32),  # (C, F', h, w)
            "ref_latent": refs[k].astype(np.float32),
            "audio": audio[start * per_latent:(start + window) * per_latent],
            "use_motion": np.bool_(rng.random() < cfg.data.motion_prob),
            "tier": tier_code(row),
        }
        if images is not None:
            example["image"] = images[k]
        out.append(example)
    return out


def _by_tier(data: DataConfig) -> bool:
    return set(data.tiers) != set(TIERS)


def selection(data: DataConfig) -> pads.Expression:
    """The rows a run trains on (`data.split`, `data.tiers`) as a filter that Parquet reads
    apply: other rows' videos are never read, let alone decoded."""
    rows = pc.field("split") == data.split
    return rows & pc.field("tier").isin(data.tiers) if _by_tier(data) else rows


class ShardWindows:
    """Ray Data callable class: a (shard path, pass) item in, that shard's windows out, one
    batch per clip. Holds what cutting needs per actor (the audio encoder's weights)."""

    def __init__(self, cfg: Config, manifest: dict):
        self.cfg, self.rows = cfg, selection(cfg.data)
        self.fs = resolve(cfg.data.uri, cfg.run.s3_endpoint_url).fs
        self.latent = manifest["format"] == latents.FORMAT
        if self.latent:
            self.columns, self.dtype = latents.COLUMNS, np.dtype(manifest["dtype"])
        else:
            self.columns, self.encoder = COLUMNS, build_audio_encoder(cfg.audio)

    def windows(self, row: dict, rng: np.random.Generator) -> list[dict]:
        if self.latent:
            return latent_windows(row, self.cfg, self.dtype, rng)
        return clip_windows(row, self.cfg, self.encoder, rng)

    def __call__(self, item: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for path, visit in zip(item["path"], item["pass"]):
            with self.fs.open_input_file(path) as f:
                present = pq.read_schema(f).names
                columns = [c for c in self.columns if c in present]
                table = pq.read_table(f, columns=columns, filters=self.rows)
            for row in table.to_pylist():
                rng = np.random.default_rng([self.cfg.data.seed,
                                             zlib.crc32(row["clip_id"].encode()), int(visit)])
                try:
                    examples = self.windows(row, rng)
                except CorruptClip as e:
                    e.args = (f"{e} (shard {path})",)
                    if self.cfg.data.on_corrupt == "fail":
                        raise
                    log.warning("skipping corrupt clip: %s", e)
                    _corrupt_counter().inc()
                    continue
                yield {k: np.stack([e[k] for e in examples]) for k in examples[0]}


_COUNTER = None


def _corrupt_counter():
    """A Ray metric (visible in the dashboard / Prometheus) counting skipped clips."""
    global _COUNTER
    if _COUNTER is None:
        from ray.util.metrics import Counter

        _COUNTER = Counter("onestep_corrupt_clips", description="clips skipped as corrupt")
    return _COUNTER


def readable_shards(root: Location, manifest: dict, on_corrupt: str,
                    data: DataConfig | None = None) -> dict[str, int]:
    """The manifest's shards whose Parquet footer reads and holds the rows it lists, checked on
    the driver before Ray Data starts: a truncated or replaced shard would otherwise stop the
    pipeline in a read task with a trace that does not name the file. Bad shards are skipped
    with a warning naming them (`on_corrupt: skip`) or stop the job at once (`fail`).

    Returns {path: clips}, counting the clips `data` selects when given (`selection`: their
    columns are read; shards without such a clip are left out of the plan), else all rows. A
    selection by tier of shards written before tiers existed is a problem of its own."""
    columns = ["split", "tier"] if data is not None and _by_tier(data) else ["split"]

    def check(shard: dict, path: str) -> tuple[str, int]:
        try:
            with root.fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                count = parquet.metadata.num_rows
                if count != shard["rows"]:
                    return f"{count} rows, the manifest says {shard['rows']}", 0
                if data is None:
                    return "", count
                if not set(columns) <= set(parquet.schema_arrow.names):
                    return ("no tier column (written before quality tiers): write it again to "
                            "select data.tiers"), 0
                return "", parquet.read(columns=columns).filter(selection(data)).num_rows
        except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (a ValueError), IOError
            return f"not a readable Parquet file ({str(e).splitlines()[0][:160]})", 0

    paths = shards.shard_uris(root, manifest)
    with ThreadPoolExecutor(16) as pool:  # a footer is one ranged read: S3 latency bound
        checked = list(pool.map(check, manifest["shards"], paths))
    good = {}
    for shard, path, (problem, clips) in zip(manifest["shards"], paths, checked):
        where = root.join(shard["name"]).uri
        if not problem:
            good[path] = clips
            continue
        if on_corrupt == "fail":
            raise DataError(f"{where}: {problem}; write it again (jobs/prepare_data.py or "
                            "jobs/encode.py), or --set data.on_corrupt=skip to train without it")
        log.warning("skipping shard %s: %s", where, problem)
    if not good:
        raise DataError(f"{root.uri}: none of its {len(manifest['shards'])} shards is readable")
    return good


def pass_plan(clips_per_shard: dict[str, int], examples: int, windows_per_clip: int,
              seed: int) -> list[dict]:
    """(shard, pass) items for enough passes to yield `examples` windows, plus one: per-worker
    `drop_last` and skipped clips take some, and running out would restart the pipeline."""
    usable = {p: n for p, n in clips_per_shard.items() if n}
    per_pass = sum(usable.values()) * windows_per_clip
    if not per_pass:
        raise DataError("no clip of the training split in any shard")
    passes = math.ceil(examples / per_pass) + 1
    paths = sorted(usable)
    return [{"path": paths[i], "pass": visit} for visit in range(passes)
            for i in np.random.default_rng([seed, visit]).permutation(len(paths))]


def data_manifest(cfg: Config) -> tuple[Location, dict]:
    """`data.uri`'s manifest, clip or latent shards; latents are checked against the run."""
    root = resolve(cfg.data.uri, cfg.run.s3_endpoint_url)
    manifest = shards.read_manifest(root, formats=(shards.FORMAT, latents.FORMAT))
    if manifest["format"] == latents.FORMAT:
        try:
            latents.check_compatible(manifest, latents.compatibility(cfg), cfg)
        except ValueError as e:
            raise DataError(f"{root.join(shards.MANIFEST).uri}: {e}") from None
    return root, manifest


def build_dataset(cfg: Config, examples: int):
    """The streaming Ray Dataset of at least `examples` training windows of `cfg.data`."""
    import ray.data

    root, manifest = data_manifest(cfg)
    counts = readable_shards(root, manifest, cfg.data.on_corrupt, cfg.data)
    plan = pass_plan(counts, examples, cfg.data.windows_per_clip, cfg.data.seed)
    ds = ray.data.from_items(plan, override_num_blocks=len(plan))
    return ds.map_batches(ShardWindows, fn_constructor_kwargs={"cfg": cfg, "manifest": manifest},
                          batch_size=1, concurrency=tuple(cfg.data.decode_actors),
                          batch_format="numpy")
