"""Opus in WebM as a browser's MediaRecorder streams it, decoded as the pieces arrive.

MediaRecorder (`audio/webm;codecs=opus`, with a timeslice) hands out a WebM file in pieces: the
header and track description first, then clusters of SimpleBlocks of Opus packets, each piece
cut anywhere. A demuxer over a file wants the whole file, or blocks a thread per session waiting
for bytes; this reads the EBML elements (Matroska's encoding) incrementally instead: a piece is
parsed as far as it goes, the rest waits for the next one, and each complete block's Opus packet
goes to FFmpeg's decoder (PyAV). Only what a recorder writes is read: one Opus track, blocks
without lacing; anything else is refused by name.

A stream that is not Opus in WebM is refused for good. A malformed element inside a good one (a
piece lost or mangled on its way) is refused once, then reading goes on from the next Cluster,
Matroska's point to resynchronise at: the sound up to there is lost, the session is not.
"""

from __future__ import annotations

import av
import numpy as np

from onestep.live.session import AudioMessageError

RATE = 48000  # Opus always decodes at 48 kHz

EBML, SEGMENT, CLUSTER, TRACKS, TRACK_ENTRY = 0x1A45DFA3, 0x18538067, 0x1F43B675, 0x1654AE6B, 0xAE
CODEC_ID, CODEC_PRIVATE, SIMPLE_BLOCK, BLOCK_GROUP, BLOCK = 0x86, 0x63A2, 0xA3, 0xA0, 0xA1
# Elements whose children are read in place: their size may be unknown (a live recording's
# Segment and Clusters are), and their blocks must come out as they arrive.
CONTAINERS = {SEGMENT, CLUSTER, TRACKS, TRACK_ENTRY, BLOCK_GROUP}
MAX_ELEMENT = 1 << 20  # bytes: a recorder's elements are small; a larger one is not audio


class WebMError(AudioMessageError):
    """A WebM stream that is not a recorder's Opus audio."""


def _vint(buf: bytes | bytearray, i: int, marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `i`: (value, its length in bytes), None if the buffer
    ends inside it. `marker`: keep the length marker (element IDs) or drop it (sizes). An
    unknown size (all value bits set) is returned as -1."""
    if i >= len(buf):
        return None
    first = buf[i]
    if first == 0:
        raise WebMError("malformed WebM: no EBML length marker")
    length = 9 - first.bit_length()
    if i + length > len(buf):
        return None
    value = int.from_bytes(buf[i:i + length], "big")
    if marker:
        return value, length
    value &= (1 << (7 * length)) - 1
    return (-1 if value == (1 << (7 * length)) - 1 else value), length


class OpusWebM:
    """`feed(piece)` → the mono float32 sound (48 kHz) of every Opus packet the piece completes."""

    def __init__(self):
        self._buf = bytearray()
        self._started = False
        self._codec_id: str | None = None
        self._decoder: av.CodecContext | None = None
        self._private = b""
        self._mono = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        self._lost = False  # after a malformed element: skipping to the next Cluster
        self._refused: WebMError | None = None  # not Opus in WebM: every piece is refused
        self._dropped = 0  # bytes of the stream before the buffer

    def feed(self, piece: bytes) -> np.ndarray:
        if self._refused is not None:
            raise WebMError(str(self._refused))
        self._buf += piece
        if self._lost and not self._next_cluster():
            return np.zeros(0, np.float32)
        out: list[np.ndarray] = []
        try:
            self._drop(self._read(out))
        except WebMError as e:
            if self._codec_id != "A_OPUS":  # not a recorder's Opus: nothing to go on with
                self._refused, self._buf = e, bytearray()
                raise
            at, self._lost = self._dropped + e.at, True
            self._drop(e.at + 1)
            raise WebMError(f"{e} at byte {at} of the stream") from None
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._dropped += n

    def _next_cluster(self) -> bool:
        """Drop bytes up to the next Cluster's ID; False while none has come (its first bytes
        may end the buffer, so those are kept)."""
        at = self._buf.find(CLUSTER.to_bytes(4, "big"))
        if at < 0:
            self._drop(max(0, len(self._buf) - 3))
            return False
        self._drop(at)
        self._lost = False
        return True

    def _read(self, out: list[np.ndarray]) -> int:
        """Decode every complete block in the buffer into `out`; → the bytes consumed. A
        WebMError's `at` is where the element it refuses starts."""
        i = 0
        while True:
            try:
                step = self._element(i, out)
            except WebMError as e:
                e.at = i
                raise
            if step is None:
                return i
            i = step

    def _element(self, i: int, out: list[np.ndarray]) -> int | None:
        """Read the element at `i` (a container's header, or a whole element) → where the next
        one starts; None if the buffer ends inside it."""
        head = _vint(self._buf, i, marker=True)
        size = head and _vint(self._buf, i + head[1], marker=False)
        if not size:
            return None
        element, start = head[0], i + head[1] + size[1]
        if not self._started:
            if element != EBML:
                raise WebMError("not WebM: the stream does not start with an EBML header")
            self._started = True
        if element in CONTAINERS:
            return start  # its children are read in place
        if size[0] < 0 or size[0] > MAX_ELEMENT:
            raise WebMError(f"WebM element 0x{element:X} of {'unknown' if size[0] < 0 else size[0]}"
                            f" size: a recorder's audio elements are under {MAX_ELEMENT} bytes")
        if start + size[0] > len(self._buf):
            return None  # the rest of it comes with a later piece
        payload = bytes(self._buf[start:start + size[0]])
        if element == CODEC_ID:
            self._codec_id = payload.rstrip(b"\0").decode("ascii", "replace")
            if self._codec_id != "A_OPUS":
                raise WebMError(f"WebM track codec {self._codec_id!r}: expected A_OPUS "
                                "(MediaRecorder's audio/webm;codecs=opus)")
        elif element == CODEC_PRIVATE:
            self._private = payload
        elif element in (SIMPLE_BLOCK, BLOCK):
            out += self._decode(payload)
        return start + size[0]

    def _decode(self, block: bytes) -> list[np.ndarray]:
        track = _vint(block, 0, marker=False)
        if track is None or len(block) < track[1] + 3:
            raise WebMError("malformed WebM block: shorter than its header")
        flags = block[track[1] + 2]
        if flags & 0x06:
            raise WebMError("laced WebM blocks are not supported (MediaRecorder writes none)")
        if self._decoder is None:
            if self._codec_id != "A_OPUS":
                raise WebMError("a WebM block came before its track said it is Opus")
            self._decoder = av.CodecContext.create("opus", "r")
            self._decoder.extradata = self._private or None
        packet = av.Packet(block[track[1] + 3:])
        try:
            frames = self._decoder.decode(packet)
        except av.FFmpegError as e:
            raise WebMError(f"an Opus packet did not decode: {e}") from None
        return [m.to_ndarray()[0] for f in frames for m in self._mono.resample(f)]
