"""A live session's sound where it arrives (the front door), before it goes to the replica that
holds the session: decoded if it is WebM, checked, timed by the idle clock, and gated so that the
replica is called once per chunk."""

from __future__ import annotations

import math

import numpy as np

from onestep.live.session import check_pcm16
from onestep.live.webm import OpusWebM


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


class IncomingSound:
    """`message(data, now)` for each binary message, `quiet(now)` when none came for `wait_s()`;
    each returns the PCM16 to send on (all of the next chunk's sound), or None while it is not
    all in. `sent(n)` after the replica answered with n chunks. A malformed message raises
    AudioMessageError and adds no sound (a WebM stream goes on at its next Cluster)."""

    def __init__(self, audio_format: str, input_rate: int, fps: int, first_chunk_frames: int,
                 chunk_frames: int, idle_video_after_s: float):
        self.webm = OpusWebM() if audio_format == "webm" else None
        self.gate = SoundGate(input_rate, fps, first_chunk_frames, chunk_frames)
        self.clock = IdleClock(input_rate, idle_video_after_s, chunk_frames / fps)

    def wait_s(self) -> float | None:
        return self.clock.wait_s()

    def message(self, data: bytes, now: float) -> bytes | None:
        if self.webm is not None:  # decoded here: PCM16 at 48 kHz from now on
            sound = self.webm.feed(data)
            data = (np.clip(sound, -1, 1) * 32767).astype("<i2").tobytes()
        check_pcm16(data)
        self.clock.heard(len(data) // 2, now)
        return self.gate.add(data)

    def quiet(self, now: float) -> bytes | None:
        """The client sent nothing for `wait_s()`: silence up to the clock, if it is behind."""
        return self.gate.add(self.clock.fill(now))

    def sent(self, chunks: int) -> None:
        self.gate.chunks += chunks
