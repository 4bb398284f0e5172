"""Video and sound as fragmented MP4 for a browser's Media Source Extensions: an init segment,
then one media segment per generated chunk, each sent the moment its chunk is ready.

FFmpeg's MP4 muxer writes a fragment only when the next one begins (or at the end), which would
hold every chunk back until the next was generated. So FFmpeg writes the init segment (its
`empty_moov` header: codec parameters, no samples) and encodes (H.264 with `zerolatency`: one
packet per frame, no reordering; AAC), and this module packs each chunk's packets into a
`moof` + `mdat` pair itself (ISO/IEC 14496-12 §8.8: `mfhd`, and per track `tfhd` with
default-base-is-moof, `tfdt`, `trun`). Every segment starts with a key frame, so a player that
joins late needs only the init segment and any one segment.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np

AAC_FRAME = 1024  # samples per AAC packet
VIDEO_TRACK, AUDIO_TRACK = 1, 2  # track IDs in the order the streams are added
SYNC, NON_SYNC = 0x02000000, 0x01010000  # sample flags: depends on no other / is not a sync sample


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def boxes(data: bytes) -> list[tuple[str, bytes]]:
    """The top-level boxes of MP4 bytes: (type, the whole box)."""
    out, i = [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        if size < 8:
            raise ValueError(f"malformed MP4 box at byte {i}")
        out.append((data[i + 4:i + 8].decode("latin-1"), data[i:i + size]))
        i += size
    return out


def length_prefixed(annexb: bytes) -> bytes:
    """H.264 Annex B (start codes) → the length-prefixed NAL units MP4 stores; parameter sets
    and access unit delimiters are left out (they live in the init segment)."""
    units, i, n = [], 0, len(annexb)
    starts = []
    while i < n - 2:
        if annexb[i] == 0 and annexb[i + 1] == 0 and annexb[i + 2] == 1:
            starts.append(i + 3)
            i += 3
        else:
            i += 1
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        while end > s and annexb[end - 1] == 0:  # the zero of a 4-byte start code
            end -= 1
        unit = annexb[s:end]
        if unit and unit[0] & 0x1F not in (7, 8, 9):  # SPS, PPS, AUD
            units.append(struct.pack(">I", len(unit)) + unit)
    return b"".join(units)


class FragmentedMP4:
    """Frames and sound, a chunk at a time → `init` once, then `segment(frames, audio)` bytes.

    frames: uint8 (F, H, W, 3); audio: mono float32 at `sample_rate`, any length per chunk (AAC
    packs it in 1024-sample packets; what is left over goes out with the next segment).
    """

    def __init__(self, width: int, height: int, fps: int, sample_rate: int, crf: int = 18):
        if height % 2 or width % 2:
            raise ValueError(f"H.264 yuv420p needs even width and height, got {width}x{height}")
        self.fps, self.sample_rate = fps, sample_rate
        self._header = io.BytesIO()
        self._box = av.open(self._header, mode="w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof"})
        self._video = self._box.add_stream("libx264", rate=fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.codec_context.options = {"crf": str(crf), "preset": "veryfast",
                                             "tune": "zerolatency"}
        self._sound = self._box.add_stream("aac", rate=sample_rate)
        self._sound.layout = "mono"
        self._box.start_encoding()  # writes ftyp + moov; the streams' encoders are open
        self.init = b"".join(b for kind, b in boxes(self._header.getvalue())
                             if kind in ("ftyp", "moov"))
        self._frame_ticks = int(Fraction(1, fps) / self._video.time_base)
        self._frames = self._samples = self._sequence = 0

    @property
    def mime_type(self) -> str:
        """What a browser's MediaSource needs to know: H.264 of the init segment's profile and
        level (RFC 6381: the avcC record's profile, compatibility and level bytes), AAC-LC."""
        at = self.init.index(b"avcC") + 5  # past the box type and configurationVersion
        return f'video/mp4; codecs="avc1.{self.init[at:at + 3].hex()}, mp4a.40.2"'

    def _encode_video(self, frames: np.ndarray) -> list[tuple[bytes, bool]]:
        out = []
        for j, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = self._frames
            picture.pict_type = av.video.frame.PictureType.I if j == 0 else \
                av.video.frame.PictureType.NONE
            self._frames += 1
            out += [(length_prefixed(bytes(p)), p.is_keyframe)
                    for p in self._video.encode(picture)]
        return out

    def _encode_audio(self, audio: np.ndarray) -> list[tuple[int, bytes]]:
        """(pts in samples, packet) of what the encoder gives out. Its first packet is the
        encoder's priming (pts −1024), left out so that sound and picture share time zero (the
        first 64 ms at 16 kHz decode without their overlap: inaudible)."""
        samples = np.ascontiguousarray(np.asarray(audio, np.float32).reshape(1, -1))
        out = []
        for s in range(0, samples.shape[1], AAC_FRAME):
            piece = av.AudioFrame.from_ndarray(samples[:, s:s + AAC_FRAME], format="fltp",
                                               layout="mono")
            piece.sample_rate, piece.pts = self.sample_rate, self._samples
            self._samples += piece.samples
            out += [(p.pts, bytes(p)) for p in self._sound.encode(piece) if p.pts >= 0]
        return out

    def _traf(self, track: int, decode_time: int, sizes: list[int], duration: int,
              flags: list[int] | None, data_offset: int) -> bytes:
        """One track's fragment header; `data_offset`: its first sample's byte from the moof."""
        tfhd = _full_box(b"tfhd", 0, 0x020008,  # default-base-is-moof, default duration
                         struct.pack(">II", track, duration))
        tfdt = _full_box(b"tfdt", 1, 0, struct.pack(">Q", decode_time))
        per_sample = 0x200 | (0x400 if flags else 0)  # sizes, and flags when given
        rows = b"".join(struct.pack(">I", size) + (struct.pack(">I", flags[i]) if flags else b"")
                        for i, size in enumerate(sizes))
        trun = _full_box(b"trun", 0, 0x001 | per_sample,
                         struct.pack(">Ii", len(sizes), data_offset), rows)
        return _box(b"traf", tfhd, tfdt, trun)

    def segment(self, frames: np.ndarray, audio: np.ndarray) -> bytes:
        """One media segment (moof + mdat) of these frames and this stretch of sound."""
        video_start = self._frames * self._frame_ticks
        video = self._encode_video(frames)
        timed = self._encode_audio(audio)
        audio_start = timed[0][0] if timed else 0
        sound = [p for _, p in timed]
        self._sequence += 1
        v_sizes, a_sizes = [len(p) for p, _ in video], [len(p) for p in sound]
        flags = [SYNC if key else NON_SYNC for _, key in video]

        def moof(v_offset: int, a_offset: int) -> bytes:
            trafs = [self._traf(VIDEO_TRACK, video_start, v_sizes, self._frame_ticks, flags,
                                v_offset)] if video else []
            if sound:
                trafs.append(self._traf(AUDIO_TRACK, audio_start, a_sizes,
                                        AAC_FRAME, None, a_offset))
            return _box(b"moof", _full_box(b"mfhd", 0, 0, struct.pack(">I", self._sequence)),
                        *trafs)

        head = len(moof(0, 0)) + 8  # the offsets' values do not change the moof's length
        header = moof(head, head + sum(v_sizes))
        return header + _box(b"mdat", *(p for p, _ in video), *sound)

    def close(self) -> None:
        """Free the encoders (what they still hold is dropped: a live stream has no end)."""
        self._box.close()
