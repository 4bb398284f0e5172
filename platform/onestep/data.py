"""Shards → training examples, streamed with Ray Data.

read_parquet (file order shuffled, seeded) → decode MP4 with PyAV and compute audio features in
Ray Data CPU tasks (never in the training workers) → random windows of F frames with a reference
frame and a motion-frame flag → normalised float arrays → each Train worker's dataset shard, with a
local shuffle buffer. Nothing holds the data set in memory.
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from onestep.audio_features import build_audio_encoder, feature_dim
from onestep.config import Config
from onestep.media import MediaError, decode_video, pcm16_array
from onestep.shards import read_manifest, shard_uris
from onestep.storage import Location, StorageError, resolve

log = logging.getLogger(__name__)
COLUMNS = ["clip_id", "mp4", "audio_pcm16", "sample_rate", "fps", "split"]


class DataError(StorageError):
    """The data at `data.uri` cannot be trained on; the message names the shard."""


class CorruptClip(ValueError):
    pass


def to_unit(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) → float32 (3, ..., H, W) in [-1, 1]."""
    x = frames.astype(np.float32) / 127.5 - 1.0
    return np.moveaxis(x, -1, 0)


def clip_windows(row: dict, cfg: Config, encoder, rng: np.random.Generator) -> list[dict]:
    """Cut one decoded clip into `windows_per_clip` training examples."""
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
    audio = pcm16_array(row["audio_pcm16"])
    per_frame = cfg.audio.feature_rate // cfg.synth.fps
    feats = encoder(audio)
    n = min(len(frames), len(feats) // per_frame)
    f_len = cfg.data.frames
    if n < f_len:
        raise CorruptClip(f"clip {clip_id}: {n} usable frames, need at least {f_len}")
    out = []
    for _ in range(cfg.data.windows_per_clip):
        start = int(rng.integers(0, n - f_len + 1))
        ref_index = int(rng.integers(0, n))
        out.append({
            "video": to_unit(frames[start:start + f_len]),  # (3, F, H, W)
            "ref": to_unit(frames[ref_index]),  # (3, H, W)
            "audio": feats[start * per_frame:(start + f_len) * per_frame],  # (F·r, D)
            "use_motion": np.bool_(rng.random() < cfg.data.motion_prob),
        })
    return out


class WindowMaker:
    """Ray Data callable class: holds the audio encoder (e.g. Wav2Vec2 weights) per actor/task."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.encoder = build_audio_encoder(cfg.audio)
        self.visits: dict[str, int] = defaultdict(int)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        examples: list[dict] = []
        for i, clip_id in enumerate(batch["clip_id"]):
            if batch["split"][i] != self.cfg.data.split:
                continue
            row = {k: batch[k][i] for k in COLUMNS}
            # A clip gets fresh windows each time it is visited, reproducibly from the seed.
            rng = np.random.default_rng([self.cfg.data.seed, zlib.crc32(clip_id.encode()),
                                         self.visits[clip_id]])
            self.visits[clip_id] += 1
            try:
                examples.extend(clip_windows(row, self.cfg, self.encoder, rng))
            except CorruptClip as e:
                e.args = (f"{e} (shard {batch['path'][i]})",)
                if self.cfg.data.on_corrupt == "fail":
                    raise
                log.warning("skipping corrupt clip: %s", e)
                _corrupt_counter().inc()
        if not examples:
            return _empty(self.cfg)
        return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _empty(cfg: Config) -> dict[str, np.ndarray]:
    r, f, s = cfg.audio.feature_rate // cfg.synth.fps, cfg.data.frames, cfg.resolution
    return {"video": np.zeros((0, 3, f, s, s), np.float32),
            "ref": np.zeros((0, 3, s, s), np.float32),
            "audio": np.zeros((0, f * r, feature_dim(cfg.audio)), np.float32),
            "use_motion": np.zeros((0,), bool)}


_COUNTER = None


def _corrupt_counter():
    """A Ray metric (visible in the dashboard / Prometheus) counting skipped clips."""
    global _COUNTER
    if _COUNTER is None:
        from ray.util.metrics import Counter

        _COUNTER = Counter("onestep_corrupt_clips", description="clips skipped as corrupt")
    return _COUNTER


def readable_shards(root: Location, manifest: dict, on_corrupt: str) -> list[str]:
    """The manifest's shards whose Parquet footer reads and holds the rows it lists, checked on
    the driver before Ray Data starts: a truncated or replaced shard would otherwise stop the
    pipeline in a read task with a trace that does not name the file. Bad shards are skipped
    with a warning naming them (`on_corrupt: skip`) or stop the job at once (`fail`)."""
    import pyarrow.parquet as pq

    def check(shard: dict, path: str) -> str:
        try:
            with root.fs.open_input_file(path) as f:
                rows = pq.read_metadata(f).num_rows
        except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (a ValueError), IOError
            return f"not a readable Parquet file ({str(e).splitlines()[0][:160]})"
        return "" if rows == shard["rows"] else f"{rows} rows, the manifest says {shard['rows']}"

    paths = shard_uris(root, manifest)
    with ThreadPoolExecutor(16) as pool:  # a footer is one ranged read: S3 latency bound
        problems = list(pool.map(check, manifest["shards"], paths))
    good = []
    for shard, path, problem in zip(manifest["shards"], paths, problems):
        where = root.join(shard["name"]).uri
        if not problem:
            good.append(path)
            continue
        if on_corrupt == "fail":
            raise DataError(f"{where}: {problem}; rewrite it with jobs/prepare_data.py, or "
                            "--set data.on_corrupt=skip to train without it")
        log.warning("skipping shard %s: %s", where, problem)
    if not good:
        raise DataError(f"{root.uri}: none of its {len(manifest['shards'])} shards is readable")
    return good


def build_dataset(cfg: Config):
    """The streaming Ray Dataset of training examples for `cfg.data`."""
    import ray.data
    from ray.data.datasource.file_based_datasource import FileShuffleConfig

    root = resolve(cfg.data.uri, cfg.run.s3_endpoint_url)
    paths = readable_shards(root, read_manifest(root), cfg.data.on_corrupt)
    ds = ray.data.read_parquet(paths, filesystem=root.fs, columns=COLUMNS, include_paths=True,
                               shuffle=FileShuffleConfig(seed=cfg.data.seed))
    return ds.map_batches(WindowMaker, fn_constructor_kwargs={"cfg": cfg}, batch_size=4,
                          concurrency=(1, 2), batch_format="numpy")
