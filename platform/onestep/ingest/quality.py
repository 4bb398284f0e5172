"""Per-clip quality of ingested video, and the tier it puts a clip in.

FADA's mixed supervision weighs clips by quality tier, and a team filtering its own footage needs
the same numbers to decide what to keep; so every ingested clip carries them (in its shard row
and summed in the manifest):

  sharpness    variance of the Laplacian of the face crop, grey, 128×128, 0–255 (the usual
               focus measure: blur and heavy compression lower it)
  face_px      the face's side in source pixels (how much detail the crop was cut from)
  head_motion  how far the face centre moves per second, in face sides
  loudness_db  RMS level of the clip's audio, dBFS
  snr_db       the loud half of its 20 ms frames over the quietest tenth (speech over the floor)
  sync_confidence, sync_offset   with a lip-sync expert (onestep.sync): LSE-C and the offset
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from onestep.config import IngestConfig

SHARPNESS_SIZE = 128
FRAME_S = 0.02


def sharpness(crop: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of an RGB uint8 crop, at a fixed size."""
    gray = np.asarray(Image.fromarray(crop).convert("L").resize(
        (SHARPNESS_SIZE, SHARPNESS_SIZE), Image.Resampling.BILINEAR), np.float32)
    lap = (gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
           - 4 * gray[1:-1, 1:-1])
    return float(lap.var())


def audio_levels(audio: np.ndarray, rate: int) -> tuple[float, float]:
    """(loudness dBFS, SNR dB) of mono float audio."""
    eps = 1e-10
    loudness = 10 * np.log10(float(np.mean(audio ** 2)) + eps)
    n = int(rate * FRAME_S)
    frames = audio[:len(audio) // n * n].reshape(-1, n)
    if len(frames) < 10:
        return loudness, 0.0
    energy = np.sort((frames ** 2).mean(axis=1))
    floor = energy[:max(1, len(energy) // 10)].mean()
    speech = energy[len(energy) // 2:].mean()
    return loudness, float(10 * np.log10((speech + eps) / (floor + eps)))


def head_motion(track: np.ndarray, seconds: float) -> float:
    """Path length of the face centre per second, in face sides. track: (n, 3) cx, cy, side."""
    if len(track) < 2 or seconds <= 0:
        return 0.0
    path = np.hypot(*np.diff(track[:, :2], axis=0).T).sum()
    return float(path / np.median(track[:, 2]) / seconds)


def tier(metrics: dict, cfg: IngestConfig) -> str:
    """`high` if every metric reaches its high threshold, `moderate` if every one reaches its
    moderate one, else `low`."""
    thresholds = {"sharpness": cfg.sharpness_tiers, "face_px": cfg.face_px_tiers,
                  "snr_db": cfg.snr_db_tiers}
    if metrics.get("sync_confidence") is not None:
        thresholds["sync_confidence"] = cfg.sync_tiers
    for level, name in enumerate(("high", "moderate")):
        if all(metrics[k] >= t[level] for k, t in thresholds.items()):
            return name
    return "low"
