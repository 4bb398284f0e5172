"""A render whose audio arrives while it plays: each chunk is generated as soon as the sound it
covers is in, and handed out with that sound.

The chunks, motion frames, seeded noise and streaming decoder are those of a whole-file render
(onestep.generate.Render); only the audio features differ. A file's are computed once over the
whole file; here each chunk's come from a window of the sound received so far that ends with the
chunk and reaches `CONTEXT_FRAMES` video frames before it, so an encoder that looks around each
frame (a log-mel's FFT window, wav2vec2's context) sees what it would see in the whole file, up to
the window's edges. The buffer keeps only what later chunks can still need: memory does not grow
with the session's length.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from onestep.generate import AvatarGenerator, Render, Sampling

CONTEXT_FRAMES = 8  # video frames of sound before a chunk that its features are computed with


class LiveRender(Render):
    """push(sound) as it comes; while `ready`: next_job → denoise → accept, and `take_sound()`
    for the stretch of sound that goes with the frames accepted."""

    def __init__(self, gen: AvatarGenerator, image: np.ndarray, sampling: Sampling):
        self._begin(gen, image, sampling)
        self.n_frames = sys.maxsize  # no end: the session's
        codec = gen.codec
        self.tf = codec.temporal_factor
        self.rate = gen.cfg.audio.sample_rate
        self.per_video_frame = self.rate / gen.fps  # samples
        self.sound = np.zeros(0, np.float32)
        self.base = 0  # samples of the session dropped from the buffer's front
        self.received = 0  # samples of the session so far
        self.handed = 0  # samples handed out with frames

    def push(self, sound: np.ndarray) -> None:
        """Mono float32 at the model's sample rate, in order."""
        self.sound = np.concatenate([self.sound, np.asarray(sound, np.float32)])
        self.received += len(sound)

    def _video_frames_of(self, start: int) -> tuple[int, int]:
        """[first, last] video frame whose sound the chunk at latent frame `start` hears (the
        first latent frame of a causal codec hears frame 0 alone)."""
        return (max(0, (start - 1) * self.tf + 1) if start else 0,
                (start + self.chunk - 1) * self.tf)

    def _sample(self, frame: int) -> int:
        return int(round(frame * self.per_video_frame))

    @property
    def ready(self) -> bool:
        """The sound of the next chunk is all in."""
        _, last = self._video_frames_of(self.k * (self.chunk - self.motion))
        return self.received >= self._sample(last + 1)

    @property
    def done(self) -> bool:
        return False  # a session ends when it is closed, not when its sound does

    def _chunk_audio(self, start: int) -> torch.Tensor:
        first, last = self._video_frames_of(start)
        lo = max(0, first - CONTEXT_FRAMES)
        window = self.sound[self._sample(lo) - self.base:self._sample(last + 1) - self.base]
        with torch.no_grad():
            feats = torch.from_numpy(self.gen.encoder(window))[None].to(self.gen.device)
        per = self.gen.per_frame
        short = (last + 1 - lo) * per - feats.shape[1]
        if short > 0:  # an encoder whose frames end before the window does: its last row on
            feats = torch.cat([feats, feats[:, -1:].expand(-1, short, -1)], dim=1)
        rows = []
        for j in range(start, start + self.chunk):  # each latent frame: its video frames' rows
            frames = [0] * self.tf if j == 0 else range((j - 1) * self.tf + 1, j * self.tf + 1)
            rows += [feats[:, (f - lo) * per:(f - lo + 1) * per] for f in frames]
        out = torch.cat(rows, dim=1)
        # What no later chunk can need: before the next chunk's context.
        first_next, _ = self._video_frames_of(start + self.chunk - self.motion)
        keep = self._sample(max(0, first_next - CONTEXT_FRAMES))
        keep = min(keep, self.handed)  # nor what goes out with frames still to come
        self.sound, self.base = self.sound[keep - self.base:], keep
        return out

    def take_sound(self) -> np.ndarray:
        """The sound of the frames accepted since the last call (silence where none came)."""
        end = self._sample(self.emitted)
        out = np.zeros(end - self.handed, np.float32)
        piece = self.sound[self.handed - self.base:end - self.base]
        out[:len(piece)] = piece
        self.handed = end
        return out
