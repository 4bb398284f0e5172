"""One live session: PCM16 audio messages in, fragmented-MP4 segments out, one per chunk.

The session holds everything that must live between messages on the replica that owns it: the
portrait encoded once, the motion latents and the decoder's state (onestep.live.render), the
sound not yet used, the seeded noise, and the MP4 encoders (onestep.live.fmp4). Its methods are
plain calls; the server decides when they run (onestep.serving.sessions).
"""

from __future__ import annotations

import math
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


class SoundGate:
    """Holds a session's PCM16 messages where they arrive (the ingress) until they complete its
    next chunk, then lets them through as one.

    A browser sends 40 ms of sound per message; each call to the replica holding the session is
    a Serve round trip that costs CPU on both sides, and a chunk cannot be generated before all
    its sound is in anyway. Gated, the replica is called once per chunk, at no added latency.
    """

    def __init__(self, input_rate: int, fps: int, first_chunk_frames: int, chunk_frames: int):
        self.input_rate, self.fps = input_rate, fps
        self.first, self.later = first_chunk_frames, chunk_frames
        self.held: list[bytes] = []
        self.received = 0  # samples
        self.chunks = 0  # chunks the replica has sent back

    def add(self, message: bytes) -> bytes | None:
        """The sound to send on now (all that is held), or None while the next chunk's sound is
        not all in."""
        self.held.append(message)
        self.received += len(message) // 2
        frames = self.first + self.chunks * self.later
        if self.received < math.ceil(frames * self.input_rate / self.fps):
            return None
        out, self.held = b"".join(self.held), []
        return out


class IdleClock:
    """Silence for a client that has gone quiet, so the avatar goes on (listening, not frozen)
    and the video stays live while nobody speaks.

    Quiet means no message for `idle_after_s` once the session's sound has started; then, and
    every `step_s` (a chunk's length) while it stays quiet, silence is filled in up to the wall
    clock, at most `idle_after_s + step_s` at a time (a server slower than real time gets no
    backlog of silence). A client ahead of the clock (a file sent at once) gets none until the
    clock has caught up with its sound. Waiting is for the socket's next message, so a client
    is never kept waiting by silence.
    """

    def __init__(self, input_rate: int, idle_after_s: float, step_s: float):
        self.input_rate, self.idle_after_s, self.step_s = input_rate, idle_after_s, step_s
        self.started: float | None = None
        self.samples = 0
        self.idle = False

    def heard(self, samples: int, now: float) -> None:
        """`samples` of the client's sound arrived."""
        if self.started is None:
            self.started = now
        self.samples += samples
        self.idle = False

    def wait_s(self) -> float | None:
        """How long to wait for the client's next message before filling in (None: no limit,
        before the sound has started or with filling off)."""
        if self.started is None or self.idle_after_s <= 0:
            return None
        return self.step_s if self.idle else self.idle_after_s

    def fill(self, now: float) -> bytes:
        """The client was quiet: PCM16 silence up to the clock (empty if it is not behind)."""
        self.idle = True
        behind = min(int((now - self.started) * self.input_rate) - self.samples,
                     int((self.idle_after_s + self.step_s) * self.input_rate))
        if behind <= 0:
            return b""
        self.samples += behind
        return b"\x00\x00" * behind


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
