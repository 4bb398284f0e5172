"""Where the talking face is, over a whole video: scene cuts, one face per moment, a smooth track.

The first of ingest's two passes. Frames are analysed `detect_fps` times a second at
`detect_width`: a colour histogram (a cut is a jump in it) and face detection. Each analysed
moment stands for the time up to the next one and is `ok` (exactly one dominant face, large
enough) or a drop reason: `no_face`, `several_faces`, `small_face`, or `scene_cut` (the moment
before a cut, whose end is in another scene). Runs of `ok` moments in one scene, the face not
jumping between them, are spans; their face boxes, smoothed over `smooth_seconds`, give the crop
of any frame in them (HDTF / CelebV-HQ crop the same way: a square around the tracked face with
margin, smoothed so the crop does not shake).

The detector is scikit-image's LBP frontal-face cascade (OpenCV's, trained on frontal faces),
chosen because its weights ship inside a PyPI package: nothing is downloaded at run time, and a
talking-head video is a frontal face by definition. Profiles and strong rotations go
undetected and are dropped as `no_face`, which costs data, never quality.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onestep.config import IngestConfig
from onestep.ingest.stream import VideoInfo, frames

DOMINANT = 0.5  # faces smaller than this × the largest in a frame are background, not speakers
SAME_FACE = 0.8  # boxes whose centres are closer than this × the larger one's side: one face
MIN_DETECT_PX = 20  # the cascade's smallest window at the analysed size


class FaceDetector:
    """Face boxes (cx, cy, side) in a frame's pixels, dominant faces only."""

    def __init__(self):
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        self.cascade = Cascade(lbp_frontal_face_cascade_filename())

    def __call__(self, rgb: np.ndarray) -> list[tuple[float, float, float]]:
        gray = rgb.astype(np.float32).mean(axis=2) / 255.0
        short = min(gray.shape)
        found = self.cascade.detect_multi_scale(img=gray, scale_factor=1.2, step_ratio=1,
                                                min_size=(MIN_DETECT_PX, MIN_DETECT_PX),
                                                max_size=(short, short))
        boxes = []  # largest first; a box centred inside a kept one is the same face again
        for cx, cy, side in sorted(((d["c"] + d["width"] / 2, d["r"] + d["height"] / 2,
                                     float(d["width"])) for d in found), key=lambda b: -b[2]):
            if all(np.hypot(cx - x, cy - y) > SAME_FACE * s for x, y, s in boxes):
                boxes.append((cx, cy, side))
        return [b for b in boxes if b[2] >= DOMINANT * boxes[0][2]]


def _histogram(rgb: np.ndarray) -> np.ndarray:
    q = (rgb // 32).reshape(-1, 3).astype(np.int64)  # 8 levels per channel
    counts = np.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512)
    return counts / counts.sum()


@dataclass
class Span:
    """A stretch of one scene with one tracked face; `track` is (time, cx, cy, side) in source
    pixels, smoothed."""

    start: float
    end: float
    track: np.ndarray

    def face_at(self, t: float) -> tuple[float, float, float]:
        times = self.track[:, 0]
        return tuple(float(np.interp(t, times, self.track[:, k])) for k in (1, 2, 3))


@dataclass
class Analysis:
    spans: list[Span]
    dropped: dict[str, float] = field(default_factory=dict)  # seconds per reason
    # The analysed stretch [start, end), seconds: its end is what was read, not the header's.
    start: float = 0.0
    end: float = 0.0


def _status(boxes: list, short_side: float, cfg: IngestConfig) -> str:
    if not boxes:
        return "no_face"
    if len(boxes) > 1:
        return "several_faces"
    if boxes[0][2] < cfg.min_face * short_side:
        return "small_face"
    return "ok"


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < 2:
        return values
    pad = window // 2
    padded = np.pad(values, ((pad, window - 1 - pad), (0, 0)), mode="edge")
    kernel = np.ones(window) / window
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid")
                     for k in range(values.shape[1])], axis=1)


def analyse(path: Path, info: VideoInfo, cfg: IngestConfig, detector: FaceDetector | None = None,
            since: float = 0.0, until: float = math.inf) -> Analysis:
    """Scene cuts, faces and crop tracks of the video at `path` (read once, small), over
    [since, until) seconds of it: a span still going at `until` ends there."""
    detector = detector or FaceDetector()
    width = min(cfg.detect_width, info.width)
    height = max(2, round(info.height * width / info.width / 2) * 2)
    scale = info.width / width  # analysed → source pixels
    step = 1.0 / cfg.detect_fps
    times, statuses, boxes, cuts = [], [], [], []
    previous = None
    last_t = 0.0
    for t, rgb in frames(path, info.start, width, height, step=step, since=since, until=until):
        hist = _histogram(rgb)
        cuts.append(previous is not None
                    and 0.5 * np.abs(hist - previous).sum() > cfg.scene_threshold)
        previous = hist
        found = detector(rgb)
        times.append(t)
        statuses.append(_status(found, min(width, height), cfg))
        boxes.append(found[0] if len(found) == 1 else None)
        last_t = t
    if not times:
        return Analysis([], {}, since, since)
    # Up to the header's duration, but no further than was decoded: a truncated file's header
    # overstates it.
    duration = min(last_t + step, info.duration) if info.duration > last_t else last_t + step
    duration = min(duration, until)
    ends = times[1:] + [duration]
    for i in range(len(times) - 1):
        if cuts[i + 1]:
            statuses[i] = "scene_cut"
    dropped: dict[str, float] = defaultdict(float)
    spans, run = [], []

    def close():
        if run:
            track = np.array([[times[i], *(np.array(boxes[i]) * scale)] for i in run])
            window = max(1, round(cfg.smooth_seconds * cfg.detect_fps))
            track[:, 1:] = _smooth(track[:, 1:], window)
            spans.append(Span(times[run[0]], ends[run[-1]], track))
            run.clear()

    for i, status in enumerate(statuses):
        if status != "ok":
            close()
            dropped[status] += ends[i] - times[i]
            continue
        if run:
            (cx, cy, side), (px, py, _) = boxes[i], boxes[run[-1]]
            if cuts[i] or np.hypot(cx - px, cy - py) > cfg.max_jump * side:
                close()
        run.append(i)
    close()
    return Analysis(spans, dict(dropped), since, duration)
