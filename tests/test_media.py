import io
import wave

import av
import numpy as np
import pytest
from PIL import Image

from onestep.media import MediaError, decode_video, encode_mp4, load_audio, load_image


def _tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    return np.stack([x] * channels) if channels > 1 else x


def _encode_audio(samples: np.ndarray, sr: int, fmt: str, codec: str) -> bytes:
    """Encode (channels, S) or (S,) float samples the way a user's file would be."""
    samples = np.atleast_2d(samples).astype(np.float32)
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as box:
        stream = box.add_stream(codec, rate=sr)
        stream.layout = layout
        step = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], step):
            part = np.ascontiguousarray(samples[:, start:start + step])
            if stream.codec_context.format.name == "s16":
                frame = av.AudioFrame.from_ndarray(
                    (part.T.reshape(1, -1) * 32767).astype(np.int16), format="s16", layout=layout)
            else:
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = sr, start
            box.mux(stream.encode(frame))
        box.mux(stream.encode())
    return buf.getvalue()


def test_mp4_round_trip_has_h264_and_aac():
    frames = (np.random.default_rng(0).random((10, 32, 32, 3)) * 255).astype(np.uint8)
    data = encode_mp4(frames, 25, _tone(0.4, 16000), 16000)
    with av.open(io.BytesIO(data)) as box:
        assert box.streams.video[0].codec_context.name == "h264"
        assert box.streams.audio[0].codec_context.name == "aac"
    decoded, fps = decode_video(data)
    assert decoded.shape == frames.shape and fps == 25
    assert abs(len(load_audio(data)) / 16000 - 0.4) < 0.05


@pytest.mark.parametrize("sr,channels,fmt,codec", [
    (8000, 1, "wav", "pcm_s16le"),
    (44100, 2, "wav", "pcm_s16le"),
    (22050, 1, "flac", "flac"),
    (44100, 2, "mp3", "libmp3lame"),
    (48000, 2, "ogg", "libopus"),
    (32000, 1, "ipod", "aac"),  # .m4a
])
def test_audio_of_any_rate_and_layout_becomes_16k_mono(sr, channels, fmt, codec):
    data = _encode_audio(_tone(1.0, sr, channels), sr, fmt, codec)
    out = load_audio(data, 16000)
    assert out.ndim == 1 and out.dtype == np.float32
    assert abs(len(out) - 16000) < 1600  # codec padding, not resampling error
    level = np.sqrt(np.mean(out[1600:-3200] ** 2))  # RMS away from codec edges
    assert abs(level - 0.5 / np.sqrt(2)) < 0.05  # loudness kept through resampling and downmix


def test_silent_audio_is_valid_but_empty_audio_is_not():
    silent = _encode_audio(np.zeros(16000, np.float32), 16000, "wav", "pcm_s16le")
    assert np.abs(load_audio(silent)).max() == 0
    header_only = io.BytesIO()
    with wave.open(header_only, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    for empty in (header_only.getvalue(), b""):
        with pytest.raises(MediaError, match="empty"):
            load_audio(empty)


def test_undecodable_media_names_the_input(tmp_path):
    bad = tmp_path / "speech.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(MediaError, match="speech.wav"):
        load_audio(bad)
    with pytest.raises(MediaError, match="not a decodable video"):
        decode_video(b"\x00" * 100)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16"])
def test_non_rgb_images_become_rgb_squares(mode):
    img = Image.new("RGB", (80, 50), (200, 100, 50)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
    out = load_image(buf.getvalue(), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_unreadable_image_is_a_clear_error():
    with pytest.raises(MediaError, match="not a readable image"):
        load_image(b"GIF89a broken", 32)


def test_exif_orientation_is_honoured():
    """A phone stores a portrait shot sideways plus a tag saying "rotate 90°": the model must
    see the upright face, as every viewer shows it."""
    stored = np.zeros((40, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored; upright (rotated 90° clockwise) it is on top
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", exif=exif, quality=95)
    out = load_image(buf.getvalue(), 40).astype(int)
    assert out[:20].mean() > 200 and out[20:].mean() < 50


@pytest.mark.parametrize("channels", [2, 6, 8, 16])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_any_channel_count_and_sample_width_becomes_mono(channels, width):
    """8+ channels once segfaulted inside FFmpeg's resampler (and took a Serve replica down);
    channels are now averaged before it, at the level they had."""
    import wave

    t = np.arange(11025) / 22050
    x = np.repeat((0.5 * np.sin(2 * np.pi * 220 * t))[:, None], channels, axis=1)
    data = {1: (x * 127 + 128).astype("u1"), 2: (x * 32767).astype("<i2"),
            4: (x * 2 ** 31 * 0.999).astype("<i4")}[width]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(22050)
        w.writeframes(data.tobytes())
    mono = load_audio(buf.getvalue(), 16000)
    assert mono.ndim == 1 and len(mono) == 8000
    assert abs(np.abs(mono).max() - 0.5) < 0.01


def _float_wav(samples: np.ndarray, sr: int = 16000) -> bytes:
    """IEEE-float WAV (format 3): float samples can hold any value, NaN included."""
    import struct

    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16)
            + fmt + b"data" + struct.pack("<I", len(data)) + data)


def test_float_audio_past_full_scale_is_clipped_and_nan_refused():
    loud = load_audio(_float_wav(np.full(8000, 1e30, np.float32)))
    assert loud.max() == 1.0 and np.isfinite(loud).all()
    with pytest.raises(MediaError, match="NaN or infinite samples"):
        load_audio(_float_wav(np.where(np.arange(8000) % 7, 0.1, np.nan).astype(np.float32)))
