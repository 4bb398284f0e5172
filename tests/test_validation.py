"""Request validation without a server: the limits that are checked before anything decodes."""

import io

import av
import numpy as np
import pytest

from conftest import png_bytes, wav_bytes
from onestep.media import AudioTooLong, load_audio
from onestep.serving.validation import Limits, RequestError, validate


def _flac_of_silence(minutes: int, rate: int = 8000) -> bytes:
    """An hour of silence compresses to well under a megabyte."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as box:
        stream = box.add_stream("flac", rate=rate, layout="mono")
        for i in range(minutes):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, rate * 60), np.int16), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, i * rate * 60
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return buf.getvalue()


def test_an_hour_of_audio_is_refused_from_its_header():
    flac = _flac_of_silence(60)
    assert len(flac) < 2 ** 20
    with pytest.raises(RequestError, match=r"3600.0 s \(its header says\) is over the 60 s "
                                           "limit") as e:
        validate(png_bytes(), flac, {}, Limits(), 32, 25, 16000)
    assert e.value.status == 422 and e.value.field == "audio"


def test_decoding_stops_at_the_limit_whatever_the_header_says():
    with pytest.raises(AudioTooLong, match="longer than 0.5 s"):
        load_audio(wav_bytes(2.0), 16000, max_seconds=0.5)


def test_the_work_budget_bounds_resolution_fps_and_duration_together():
    limits = Limits(max_megapixel_frames=1.0)  # 1e6 / (256² × 25) = 0.61 s at 256² and 25 fps
    with pytest.raises(RequestError, match=r"work budget at 256² pixels and 25 fps: at most "
                                           r"0.6 s") as e:
        validate(png_bytes(), wav_bytes(1.0), {"resolution": "256", "fps": "25"}, limits,
                 32, 25, 16000)
    assert e.value.status == 422 and e.value.field == "audio"
    ok = validate(png_bytes(), wav_bytes(1.0), {"resolution": "128", "fps": "25"}, limits,
                  32, 25, 16000)
    assert ok.resolution == 128
