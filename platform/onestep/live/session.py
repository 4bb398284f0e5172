"""One live session: PCM16 audio messages in, fragmented-MP4 segments out, one per chunk.

The session holds everything that must live between messages on the replica that owns it: the
portrait encoded once, the motion latents and the decoder's state (onestep.live.render), the
sound not yet used, the seeded noise, and the MP4 encoders (onestep.live.fmp4). Its methods are
plain calls; the server decides when they run (onestep.serving.sessions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import av
import numpy as np
import torch

from onestep.generate import AvatarGenerator, ChunkJob, Sampling
from onestep.live.fmp4 import FragmentedMP4
from onestep.live.render import LiveRender


class AudioMessageError(ValueError):
    """An audio message that is not what the session was told to expect."""


def check_pcm16(message: bytes) -> None:
    if len(message) % 2:
        raise AudioMessageError(f"audio message of {len(message)} bytes: PCM16 mono comes in "
                                "whole 2-byte samples")


@dataclass
class Chunk:
    """A generated chunk as sent: its media segment and what the client is told of it."""

    index: int
    segment: bytes
    frames: int
    seconds: float  # of video
    latency_s: float  # from the sound that completed it arriving to the segment being ready


class LiveSession:
    """Audio in (`feed`), chunks out (`chunks`); `init` is the MP4 init segment to send first."""

    def __init__(self, gen: AvatarGenerator, image: np.ndarray, sampling: Sampling,
                 input_rate: int, audio_format: str = "pcm16"):
        cfg = gen.cfg
        self.fps, self.rate, self.input_rate = gen.fps, cfg.audio.sample_rate, input_rate
        # What the client sends: decoded to PCM16 where it arrives (onestep.live.webm) before
        # it reaches `feed`.
        self.audio_format = audio_format
        self.render = LiveRender(gen, image, sampling)
        self.mp4 = FragmentedMP4(image.shape[1], image.shape[0], gen.fps, self.rate)
        self._resampler = (av.AudioResampler(format="flt", layout="mono", rate=self.rate)
                           if input_rate != self.rate else None)
        self._arrived: list[tuple[int, float]] = []  # (sample count reached, when)
        self.chunks_sent = 0

    @property
    def init(self) -> bytes:
        return self.mp4.init

    @property
    def chunk_frames(self) -> int:
        """Video frames each chunk after the first adds (its first frames continue the previous
        chunk's, as motion frames, and are not sent again)."""
        r = self.render
        return (r.chunk - r.motion) * r.gen.codec.temporal_factor

    def feed(self, message: bytes, arrived: float | None = None) -> None:
        """A binary message of PCM16 mono samples at the session's input rate; `arrived`: when
        it reached the server (time.time(); now if not given), what chunk latency counts from."""
        check_pcm16(message)
        if not message:
            return
        pcm = np.frombuffer(message, "<i2")
        sound = pcm.astype(np.float32) / 32768.0
        if self._resampler is not None:
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.input_rate
            pieces = self._resampler.resample(frame)
            sound = (np.concatenate([p.to_ndarray()[0] for p in pieces]) if pieces
                     else np.zeros(0, np.float32))
        self.render.push(sound)
        self._arrived.append((self.render.received, time.time() if arrived is None else arrived))

    @property
    def ready(self) -> bool:
        return self.render.ready

    def next_job(self) -> ChunkJob:
        """The chunk whose sound is in (call while `ready`), to denoise alone or batched with
        other sessions' and requests' chunks (AvatarGenerator.denoise)."""
        return self.render.next_job()

    def finish(self, latent: torch.Tensor) -> Chunk:
        """The denoised chunk → its media segment, with the time since its sound was in."""
        r = self.render
        frames = r.accept(latent)
        segment = self.mp4.segment(frames, r.take_sound())
        needed = int(round(r.emitted * self.rate / self.fps))
        completed = next((t for n, t in self._arrived if n >= needed), time.time())
        self._arrived = [(n, t) for n, t in self._arrived if n > needed]
        chunk = Chunk(self.chunks_sent, segment, len(frames), len(frames) / self.fps,
                      time.time() - completed)
        self.chunks_sent += 1
        return chunk

    def next_chunk(self) -> Chunk:
        """next_job, denoised alone, finished."""
        return self.finish(self.render.gen.denoise([self.next_job()])[0])

    def close(self) -> None:
        self.mp4.close()
