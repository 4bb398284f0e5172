"""Collapse guards: signs, in a distilling network's validation samples, that it stopped making
video.

The failures the field reports most (static video, solid-colour or oversaturated frames, lost
lip-sync) show in no training loss and are found thousands of steps late. Each check here compares
the samples with a *reference made from the same clips*: the teacher's own samples when the stage
has a teacher, else the ground-truth clips. Ratios and differences to a reference carry across
resolutions and data sets where absolute pixel thresholds would not.

A check is armed once it has passed: a network still learning (a teacher trained from scratch
starts as noise) is not collapsing, and a guard that fired before the first good sample could
only ever stop a run at its start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onestep.config import ValidationConfig
from onestep.evaluation.metrics import flicker

BINS = 32  # colour histogram bins per channel
CLIPPED_LOW, CLIPPED_HIGH = 2, 253  # uint8 values counted as clipped (crushed or blown out)


@dataclass(frozen=True)
class Check:
    key: str  # the validation metric, val_<key>
    failure: str  # what it means when it trips
    threshold: str  # the ValidationConfig field holding the bound
    minimum: bool  # True: the metric must stay ≥ the bound, else ≤

    def trips(self, value: float, bound: float) -> bool:
        if np.isnan(value):  # NaN frames are the extreme collapse
            return True
        return value < bound if self.minimum else value > bound


CHECKS = (
    Check("motion_ratio", "static video", "min_motion_ratio", True),
    Check("std_ratio", "solid colour", "min_std_ratio", True),
    Check("clipped_excess", "oversaturated", "max_clipped_excess", False),
    Check("color_distance", "colours drifted", "max_color_distance", False),
    Check("sync_ratio", "lip-sync lost", "min_sync_ratio", True),
)


def frame_std(frames: np.ndarray) -> float:
    """Mean over frames and channels of the spatial standard deviation: 0 for a solid colour."""
    return float(frames.astype(np.float32).std(axis=(1, 2)).mean())


def clipped_share(frames: np.ndarray) -> float:
    """Share of channel values at the ends of the range."""
    return float(((frames <= CLIPPED_LOW) | (frames >= CLIPPED_HIGH)).mean())


def colour_histogram(videos: list[np.ndarray]) -> np.ndarray:
    """(3, BINS) normalised per-channel histograms over every pixel of `videos`."""
    counts = np.zeros((3, BINS))
    for v in videos:
        for c in range(3):
            counts[c] += np.bincount(v[..., c].ravel() // (256 // BINS), minlength=BINS)
    return counts / counts.sum(axis=1, keepdims=True)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation between histograms, averaged over channels: 0 equal, 1 disjoint."""
    return float(0.5 * np.abs(a - b).sum(axis=1).mean())


def collapse_metrics(videos: list[np.ndarray], reference: list[np.ndarray], sync: float,
                     reference_sync: float) -> dict[str, float]:
    """The checks' metrics for generated `videos` against `reference` videos of the same clips
    (each pair trimmed to the shorter). A ratio to a reference without the property (no motion,
    no lip-sync to lose) is inf: it cannot trip."""
    pairs = [(v[:min(len(v), len(r))], r[:min(len(v), len(r))]) for v, r in zip(videos, reference)]
    gen, ref = [p[0] for p in pairs], [p[1] for p in pairs]

    def mean(f, vs):
        return float(np.mean([f(v) for v in vs]))

    def ratio(a: float, b: float) -> float:
        return a / b if b > 1e-6 else float("inf")

    return {
        "motion_ratio": ratio(mean(flicker, gen), mean(flicker, ref)),  # frame-to-frame motion
        "std_ratio": ratio(mean(frame_std, gen), mean(frame_std, ref)),
        "clipped_excess": mean(clipped_share, gen) - mean(clipped_share, ref),
        "color_distance": histogram_distance(colour_histogram(gen), colour_histogram(ref)),
        "sync_ratio": ratio(sync, reference_sync),
    }


def failing(metrics: dict[str, float], v: ValidationConfig, among) -> list[Check]:
    """The checks named in `among` (armed ones) that `metrics` (val_-prefixed) fail."""
    return [c for c in CHECKS if c.key in among and f"val_{c.key}" in metrics
            and c.trips(metrics[f"val_{c.key}"], getattr(v, c.threshold))]


def passing(metrics: dict[str, float], v: ValidationConfig) -> set[str]:
    """The checks `metrics` pass (the ones a guard arms)."""
    return {c.key for c in CHECKS if f"val_{c.key}" in metrics
            and not c.trips(metrics[f"val_{c.key}"], getattr(v, c.threshold))}


def describe(checks: list[Check], metrics: dict[str, float], v: ValidationConfig) -> str:
    """e.g. "static video (val_motion_ratio 0.031 < validation.min_motion_ratio=0.25)"."""
    return "; ".join(f"{c.failure} (val_{c.key} {metrics[f'val_{c.key}']:.3f} "
                     f"{'<' if c.minimum else '>'} validation.{c.threshold}="
                     f"{getattr(v, c.threshold):g})" for c in checks)
