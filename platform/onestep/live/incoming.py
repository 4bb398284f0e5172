"""A live session's sound where it arrives (the front door), before it goes to the replica that
holds the session: decoded if it is WebM, checked, timed by the idle clock, and gated so that the
replica is called once per chunk."""

from __future__ import annotations

import numpy as np

from onestep.live.session import IdleClock, SoundGate, check_pcm16
from onestep.live.webm import OpusWebM


class IncomingSound:
    """`message(data, now)` for each binary message, `quiet(now)` when none came for `wait_s()`;
    each returns the PCM16 to send on (all of the next chunk's sound), or None while it is not
    all in. `sent(n)` after the replica answered with n chunks. A malformed message raises
    AudioMessageError and changes nothing."""

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
