"""The second of ingest's two passes: the spans of one video (onestep.ingest.faces) → clip rows.

The video is decoded once more, forward, at the smallest size that still gives every crop its
full detail at the training resolution (FFmpeg scales as it converts). Each clip is `clip_seconds`
of `fps` frames resampled by timestamp (the newest frame at or before each output time, so any
source rate, variable too, becomes 25 fps), each frame cut to the span's smoothed crop and scaled
to `resolution`; its audio is the same stretch of the track at `sample_rate`. A clip is a shard
row as SynthTalk's are (onestep.shards.SCHEMA), plus its quality metrics and tier. Only one clip's
frames are held at a time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from onestep.config import Config
from onestep.ingest import quality
from onestep.ingest.faces import Analysis, Span
from onestep.ingest.stream import AudioReader, VideoInfo, frames
from onestep.media import encode_mp4, pcm16_bytes
from onestep.sync.score import SyncScorer

MIN_AUDIO = 0.9  # a clip whose stretch of the track is less covered than this has no audio
DETAIL = 1.25  # decode at up to this × the size that maps the smallest crop onto the resolution
SHARPNESS_FRAMES = 3  # frames per clip whose crop is scored for sharpness


@dataclass
class ClipPlan:
    span: Span
    start: float  # seconds on the picture's clock


@dataclass
class Tally:
    """What one video gave: clips per tier and seconds dropped per reason."""

    tiers: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dropped: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def plan_clips(analysis: Analysis, clip_seconds: float) -> tuple[list[ClipPlan], dict]:
    """Whole clips cut from each span, and the spans' remainders (too_short, seconds)."""
    plans, short = [], 0.0
    for span in analysis.spans:
        n = int((span.end - span.start + 1e-6) // clip_seconds)
        plans += [ClipPlan(span, span.start + k * clip_seconds) for k in range(n)]
        short += span.end - span.start - n * clip_seconds
    return plans, {"too_short": short} if short > 1e-6 else {}


def _crop_box(face: tuple[float, float, float], crop_scale: float, width: int, height: int
              ) -> tuple[float, float, float]:
    """The square (x0, y0, side) around a face, in the frame (shifted inward at its edges)."""
    cx, cy, side = face
    side = min(side * crop_scale, width, height)
    return (float(np.clip(cx - side / 2, 0, width - side)),
            float(np.clip(cy - side / 2, 0, height - side)), side)


def cut_clips(path: Path, info: VideoInfo, analysis: Analysis, cfg: Config, name: str,
              split: str, tally: Tally, scorer: SyncScorer | None = None) -> Iterator[dict]:
    """The clip rows of the video at `path`, in time order; `tally` counts tiers and drops.
    With a lip-sync `scorer`, clips are scored and those out of sync dropped."""
    s, ing = cfg.synth, cfg.ingest
    per_clip = int(round(s.clip_seconds * s.fps))
    clip_seconds = per_clip / s.fps
    plans, short = plan_clips(analysis, clip_seconds)
    for reason, seconds in {**analysis.dropped, **short}.items():
        tally.dropped[reason] += seconds
    if not plans:
        return
    smallest = min(_crop_box(p.span.face_at(p.start), ing.crop_scale, info.width,
                             info.height)[2] for p in plans)
    scale = min(1.0, DETAIL * s.resolution / smallest)
    width = max(2, round(info.width * scale / 2) * 2)
    height = max(2, round(info.height * scale / 2) * 2)
    scale = width / info.width
    decoded = frames(path, info.start, width, height, since=analysis.start)
    current, upcoming = None, next(decoded, None)
    audio = AudioReader(path, s.sample_rate, info.start, info.audio_start, since=analysis.start)
    try:
        for plan in plans:
            pictures, track, crops, sharp = [], [], [], []
            for j in range(per_clip):
                t = plan.start + j / s.fps
                while upcoming is not None and upcoming[0] <= t + 1e-6:
                    current, upcoming = upcoming, next(decoded, None)
                if current is None:  # the picture starts after t: nothing to show yet
                    current = upcoming
                face = plan.span.face_at(t)
                x0, y0, side = _crop_box(face, ing.crop_scale, info.width, info.height)
                box = (x0 * scale, y0 * scale, min(width, (x0 + side) * scale),
                       min(height, (y0 + side) * scale))
                image = Image.fromarray(current[1])
                pictures.append(np.asarray(image.resize((s.resolution, s.resolution),
                                                        Image.Resampling.BILINEAR, box=box)))
                if j in np.linspace(0, per_clip - 1, SHARPNESS_FRAMES).round():
                    sharp.append(quality.sharpness(np.asarray(image.crop(tuple(
                        round(v) for v in box)))))
                track.append(face)
                crops.append(((x0 + side / 2) / info.width, (y0 + side / 2) / info.height,
                              side / min(info.width, info.height)))
            sound = audio.read(plan.start, plan.start + clip_seconds)
            if audio.covered < MIN_AUDIO:
                tally.dropped["no_audio"] += clip_seconds
                continue
            loudness, snr = quality.audio_levels(sound, s.sample_rate)
            track = np.array(track)
            metrics = {"sharpness": float(np.median(sharp)),
                       "face_px": float(np.median(track[:, 2])),
                       "head_motion": quality.head_motion(track, clip_seconds),
                       "loudness_db": loudness, "snr_db": snr,
                       "sync_confidence": None, "sync_offset": None}
            if scorer is not None:
                synced = scorer.score(np.stack(pictures), sound)
                if abs(synced.offset) > ing.max_sync_offset:
                    tally.dropped["out_of_sync"] += clip_seconds
                    continue
                metrics.update(sync_confidence=synced.confidence, sync_offset=synced.offset)
            tier = quality.tier(metrics, ing)
            tally.tiers[tier] += 1
            crops = np.array(crops, np.float32)
            yield {"clip_id": f"{name}@{plan.start:.2f}",  # unique across a video's parts
                   "mp4": encode_mp4(np.stack(pictures), s.fps, sound, s.sample_rate),
                   "audio_pcm16": pcm16_bytes(sound), "sample_rate": s.sample_rate,
                   "fps": s.fps, "num_frames": per_clip, "height": s.resolution,
                   "width": s.resolution, "identity": -1, "split": split,
                   "degradations": "[]", "tier": tier, **metrics,
                   "source": json.dumps({"video": name, "start": round(plan.start, 3)}),
                   "crop_x": crops[:, 0].tolist(), "crop_y": crops[:, 1].tolist(),
                   "crop_size": crops[:, 2].tolist()}
    finally:
        audio.close()
        decoded.close()
