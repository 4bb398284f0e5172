"""A video file read forward, frame by frame and audio piece by piece, so that what ingest holds
never grows with the video's length: a 10-minute 1080p file decoded whole is ~90 GB.

Frames are scaled by FFmpeg's scaler as they are converted (no full-size copy when a smaller one
is asked for), FFmpeg decodes with its own threads, and times are in seconds from the video
stream's first frame, whatever the container's frame rate says (variable-rate files included).
Audio is mono float32 at the requested rate on the same clock: a track that starts later than
the picture (an A/V offset in the container) is padded with silence, not shifted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from onestep.media import MediaError, to_mono

SEEK_MARGIN = 0.5  # seconds: an audio seek lands this much early, so no sample is missed


@dataclass
class VideoInfo:
    width: int
    height: int
    duration: float  # seconds of picture, from the headers (0 if they do not say)
    has_audio: bool
    start: float  # the video stream's first timestamp, seconds (the clock's zero)
    audio_start: float


def probe(path: Path | BinaryIO, name: str = "") -> VideoInfo:
    """What the headers say, and the first frame's timestamp; a file that FFmpeg cannot open or
    without a picture is a MediaError naming it (`name`, or `path`). `path` may be an open
    seekable file (an S3 object read by ranges: only the headers and the first frame are read).
    """
    name = name or str(path)
    try:
        with av.open(path if hasattr(path, "read") else str(path)) as box:
            if not box.streams.video:
                raise MediaError(f"{name}: no video stream")
            stream = box.streams.video[0]
            first = next(box.decode(stream), None)
            if first is None:
                raise MediaError(f"{name}: the video stream has no frames")
            duration = (float(stream.duration * stream.time_base) if stream.duration
                        else (box.duration or 0) / av.time_base)
            audio = box.streams.audio[0] if box.streams.audio else None
            audio_start = (float(audio.start_time * audio.time_base)
                           if audio is not None and audio.start_time is not None else 0.0)
            return VideoInfo(first.width, first.height, duration, audio is not None,
                             first.time or 0.0, audio_start)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise MediaError(f"{name}: not a decodable video ({e})") from None


def frames(path: Path, start: float, width: int | None = None, height: int | None = None,
           step: float = 0.0, since: float = 0.0, until: float = math.inf
           ) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds since `start`, uint8 (H, W, 3)) for every frame in [since, until), or with
    `step` the first frame at or after each multiple of `step` seconds (the rest are decoded,
    never converted), scaled to width × height when given. Reading from `since` seeks to the
    key frame before it, so a part late in a long video costs no decoding of what precedes it.
    A file that breaks off mid-way ends there (its frames so far stand)."""
    due = since
    try:
        with av.open(str(path)) as box:
            stream = box.streams.video[0]
            stream.thread_type = "AUTO"
            if since > 0:
                box.seek(int((start + since) / stream.time_base), stream=stream)
            for frame in box.decode(stream):
                if frame.time is None or frame.time - start < due - 1e-6:
                    continue
                t = frame.time - start
                if t >= until - 1e-6:
                    return
                if step:
                    due = (np.floor(t / step + 1e-6) + 1) * step
                yield t, frame.to_ndarray(format="rgb24", width=width, height=height)
    except av.error.FFmpegError:
        return


class AudioReader:
    """The file's audio as mono float32 at `rate`, served in forward order on the picture's
    clock: `read(a, b)` returns the samples of [a, b) seconds, silence where there are none.
    Reads start at `since` seconds (seeking there, as `frames` does)."""

    def __init__(self, path: Path, rate: int, start: float, audio_start: float,
                 since: float = 0.0):
        self.rate = rate
        self._start, self._since = start, since
        self._box = av.open(str(path))
        stream = self._box.streams.audio[0]
        # Index (on the picture's clock, in samples) of the buffer's first sample; after a seek,
        # the first decoded frame's time says it.
        self._at: int | None = int(round((audio_start - start) * rate))
        if since > 0:
            at = start + max(0.0, since - SEEK_MARGIN)
            self._box.seek(int(at / stream.time_base), stream=stream)
            self._at = None
        self._frames = self._box.decode(stream)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self._buffer = np.zeros(0, np.float32)
        self._ended = False
        self.covered = 1.0  # the share of the last read that the track had samples for

    def _pull(self) -> bool:
        """Decode one more piece into the buffer; False at the end of the track."""
        if self._ended:
            return False
        try:
            frame = next(self._frames, None)
        except av.error.FFmpegError:
            frame = None
        pieces = (self._resampler.resample(to_mono(frame)) if frame is not None
                  else self._resampler.resample(None))
        if frame is None:
            self._ended = True
        elif self._at is None:
            t = frame.time if frame.time is not None else self._start + self._since
            self._at = int(round((t - self._start) * self.rate))
        new = [p.to_ndarray()[0] for p in pieces]
        if new:
            self._buffer = np.concatenate([self._buffer, *new])
        return True

    def read(self, a: float, b: float) -> np.ndarray:
        first, last = int(round(a * self.rate)), int(round(b * self.rate))
        while (self._at is None or self._at + len(self._buffer) < last) and self._pull():
            pass
        if self._at is None:  # nothing after the seek: the track ended before `since`
            self._at = first
        out = np.zeros(last - first, np.float32)
        lo, hi = max(first, self._at), min(last, self._at + len(self._buffer))
        if hi > lo:
            out[lo - first:hi - first] = self._buffer[lo - self._at:hi - self._at]
        self.covered = max(0, hi - lo) / max(1, last - first)
        drop = max(0, min(last - self._at, len(self._buffer)))  # reads only go forward
        self._buffer, self._at = self._buffer[drop:], self._at + drop
        return np.clip(np.nan_to_num(out), -1.0, 1.0)

    def close(self) -> None:
        self._box.close()
