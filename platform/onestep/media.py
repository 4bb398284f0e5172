"""Media in and out through PyAV (FFmpeg): H.264 + AAC MP4, audio of any format, images.

Everything here works on bytes as well as paths so that shards, HTTP uploads and files share one
code path. Errors say which input failed and why, because users feed this their own media.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Source = str | Path | bytes


class MediaError(ValueError):
    """Input media could not be used; the message names the input and the problem."""


def _describe(src: Source) -> str:
    return f"{len(src)}-byte upload" if isinstance(src, (bytes, bytearray)) else str(src)


def _open(src: Source):
    return av.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src))


def encode_mp4(frames: np.ndarray, fps: int, audio: np.ndarray | None = None,
               sample_rate: int = 16000, crf: int = 18) -> bytes:
    """(F, H, W, 3) uint8 frames (+ mono float audio) → MP4 bytes, H.264 yuv420p + AAC."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    encoder = Mp4Encoder(frames.shape[2], frames.shape[1], fps,
                         sample_rate if audio is not None else 0, crf)
    encoder.write(frames)
    return encoder.close(audio)


class Mp4Encoder:
    """Frames, piece by piece → one MP4 (H.264 yuv420p + AAC): each piece is encoded when it
    arrives, so what a long video holds in memory is its compressed bytes, not its frames.

    The audio goes in at `close` (the MP4 index is written then anyway); `sample_rate=0` makes
    a silent video.
    """

    def __init__(self, width: int, height: int, fps: int, sample_rate: int = 16000,
                 crf: int = 18):
        if height % 2 or width % 2:
            raise MediaError(f"H.264 yuv420p needs even width and height, got {width}x{height}")
        self._buf = io.BytesIO()
        self._box = av.open(self._buf, mode="w", format="mp4")
        self._video = self._box.add_stream("libx264", rate=fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(crf), "preset": "veryfast"}
        self._sound = None
        if sample_rate:
            self._sound = self._box.add_stream("aac", rate=sample_rate)
            self._sound.layout = "mono"
        self.sample_rate, self.frames = sample_rate, 0

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = self.frames
            self._box.mux(self._video.encode(video_frame))
            self.frames += 1

    def close(self, audio: np.ndarray | None = None) -> bytes:
        self._box.mux(self._video.encode())
        if self._sound is not None and audio is not None:
            samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            step = 1024  # AAC frame size
            for start in range(0, samples.shape[1], step):
                chunk = np.ascontiguousarray(samples[:, start:start + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = self.sample_rate, start
                self._box.mux(self._sound.encode(frame))
            self._box.mux(self._sound.encode())
        self._box.close()
        return self._buf.getvalue()


class _Sink:
    """A write-only file for PyAV that hands back what was written since the last `take()`."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class TsStreamEncoder:
    """Frames + audio, piece by piece → MPEG-TS bytes (H.264 + AAC) as soon as they are encoded.

    MPEG-TS has no index to write at the end, so every prefix of the stream plays: a client can
    start playback after the first piece. x264's zero-latency tuning emits each frame at once and
    `flush_packets` hands each muxed packet to the sink, so nothing waits for the next piece
    except what the muxer holds back to interleave audio with video.
    """

    def __init__(self, width: int, height: int, fps: int, sample_rate: int = 16000,
                 crf: int = 18):
        if height % 2 or width % 2:
            raise MediaError(f"H.264 yuv420p needs even width and height, got {width}x{height}")
        self._sink = _Sink()
        self._box = av.open(self._sink, mode="w", format="mpegts",
                            options={"flush_packets": "1"})
        self._video = self._box.add_stream("libx264", rate=fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        self._audio = self._box.add_stream("aac", rate=sample_rate)
        self._audio.layout = "mono"
        self._frames = self._samples = 0
        self.sample_rate = sample_rate

    def write(self, frames: np.ndarray, audio: np.ndarray) -> bytes:
        """Encode (n, H, W, 3) uint8 frames and the mono float audio that goes with them."""
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = self._frames
            self._frames += 1
            self._box.mux(self._video.encode(picture))
        if len(audio):
            samples = np.ascontiguousarray(np.asarray(audio, np.float32).reshape(1, -1))
            sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            sound.sample_rate, sound.pts = self.sample_rate, self._samples
            self._samples += samples.shape[1]
            self._box.mux(self._audio.encode(sound))
        return self._sink.take()

    def close(self) -> bytes:
        """Flush the encoders and the muxer: the last bytes of the stream."""
        self._box.mux(self._video.encode())
        self._box.mux(self._audio.encode())
        self._box.close()
        return self._sink.take()


def decode_video(src: Source) -> tuple[np.ndarray, float]:
    """All video frames as uint8 (F, H, W, 3) and the frame rate."""
    try:
        with _open(src) as box:
            if not box.streams.video:
                raise MediaError(f"{_describe(src)}: no video stream")
            stream = box.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            frames = [f.to_ndarray(format="rgb24") for f in box.decode(stream)]
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise MediaError(f"{_describe(src)}: not a decodable video ({e})") from None
    if not frames:
        raise MediaError(f"{_describe(src)}: video has no frames")
    return np.stack(frames), fps


class AudioTooLong(MediaError):
    """Decoding stopped at the caller's `max_seconds`."""


def load_audio(src: Source, sample_rate: int = 16000,
               max_seconds: float = float("inf")) -> np.ndarray:
    """Decode any audio FFmpeg reads (WAV/FLAC/MP3/OGG/M4A, a video's track) → mono float32.

    Channels are averaged here, before FFmpeg's resampler sees the audio: its own downmix
    attenuates by 3 dB (which would change loudness), and it crashed the process (SIGSEGV in
    PyAV 18) on layouts of 8 channels or more.
    """
    if isinstance(src, (bytes, bytearray)) and not src:
        raise MediaError("audio upload is empty (0 bytes)")
    try:
        with _open(src) as box:
            if not box.streams.audio:
                raise MediaError(f"{_describe(src)}: no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            parts, samples = [], 0
            for frame in box.decode(box.streams.audio[0]):
                for out in resampler.resample(to_mono(frame)):
                    parts.append(out.to_ndarray()[0])
                    samples += len(parts[-1])
                if samples > max_seconds * sample_rate:  # whatever the header said
                    raise AudioTooLong(f"{_describe(src)}: longer than {max_seconds:.1f} s")
            parts.extend(f.to_ndarray()[0] for f in resampler.resample(None))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise MediaError(f"{_describe(src)}: not decodable audio ({e})") from None
    if not parts or sum(len(p) for p in parts) == 0:
        raise MediaError(f"{_describe(src)}: audio is empty")
    audio = np.concatenate(parts).astype(np.float32)
    # Float formats can carry anything: NaN poisons the model's input and the AAC encoder
    # refuses it; a level past full scale is clipped, as any player would.
    if not np.isfinite(audio).all():
        raise MediaError(f"{_describe(src)}: audio has NaN or infinite samples")
    return np.clip(audio, -1.0, 1.0)


def to_mono(frame: av.AudioFrame) -> av.AudioFrame:
    """A decoded frame's channels averaged into one float32 channel at the frame's rate."""
    x = frame.to_ndarray()  # planar: (channels, n); packed: (1, n · channels)
    if not frame.format.is_planar:
        x = x.reshape(-1, len(frame.layout.channels)).T
    if x.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        x = (x.astype(np.float32) - 128) / 128
    elif x.dtype.kind == "i":
        x = x / float(-np.iinfo(x.dtype).min)
    mono = av.AudioFrame.from_ndarray(x.mean(axis=0, dtype=np.float64).astype(np.float32)[None],
                                      format="flt", layout="mono")
    mono.sample_rate = frame.sample_rate
    return mono


def load_image(src: Source, resolution: int) -> np.ndarray:
    """Any PIL-readable image (RGBA, greyscale, palette, CMYK…) → centre-cropped uint8 RGB square."""
    try:
        img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
        img.load()
        # Phones store the sensor's orientation and a rotation tag; show what the user saw.
        img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError) as e:
        raise MediaError(f"{_describe(src)}: not a readable image ({e})") from None
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS))


def pcm16_bytes(audio: np.ndarray) -> bytes:
    """Lossless-enough raw storage of 16-bit little-endian PCM (what shards carry)."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def pcm16_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
