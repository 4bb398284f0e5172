"""Live sessions without a server: sound arriving in 40 ms pieces becomes fragmented MP4, chunk by
chunk, as a browser's Media Source Extensions play it (decoded here with PyAV)."""

import io

import av
import numpy as np
import pytest

from conftest import ROOT
from onestep.live.fmp4 import FragmentedMP4, boxes

STUDENT = ROOT / "reports" / "pretrained" / "student"
RATE = 16000


def _speech_like(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(
        np.float32)


def _decode(data: bytes) -> tuple[list, np.ndarray]:
    with av.open(io.BytesIO(data)) as box:
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in box.decode(video=0)]
    with av.open(io.BytesIO(data)) as box:
        sound = np.concatenate([f.to_ndarray()[0] for f in box.decode(audio=0)])
    return frames, sound


def _aligned(decoded: np.ndarray, sent: np.ndarray) -> bool:
    """Same sound at lag 0, up to the codec: one AAC frame (1024 samples) off is far worse."""
    n = min(len(decoded), len(sent)) - 1024
    off = {lag: np.abs(decoded[lag:lag + n] - sent[:n]).mean() for lag in (0, 1024)}
    return off[0] < 0.2 * off[1024]


def test_each_chunk_is_a_media_segment_that_plays_on_from_the_last():
    mp4 = FragmentedMP4(64, 48, 25, RATE)
    assert [kind for kind, _ in boxes(mp4.init)] == ["ftyp", "moov"]
    stream, sent, segments = [mp4.init], [], []
    for k in range(4):
        frames = np.zeros((6, 48, 64, 3), np.uint8)
        frames[:] = (np.arange(6) * 40 + 5 * k)[:, None, None, None]
        sound = _speech_like(0.24)
        sent.append(sound)
        segments.append(mp4.segment(frames, sound))
        assert [kind for kind, _ in boxes(segments[-1])] == ["moof", "mdat"]
    mp4.close()
    frames, sound = _decode(b"".join(stream + segments))
    assert len(frames) == 24
    ticks = [pts for pts, _ in frames]
    assert ticks == sorted(ticks) and len(set(np.diff(ticks))) == 1  # evenly, in order
    brightness = [float(f.mean()) for _, f in frames]
    assert all(abs(b - (40 * (i % 6) + 5 * (i // 6))) < 4 for i, b in enumerate(brightness))
    assert _aligned(sound, np.concatenate(sent))
    # Each segment starts with a key frame: the init segment and any one segment play.
    alone, _ = _decode(mp4.init + segments[2])
    assert len(alone) == 6 and abs(float(alone[0][1].mean()) - 10) < 4


@pytest.fixture(scope="module")
def generator():
    from onestep.checkpoint import load_generator
    from onestep.generate import AvatarGenerator, Sampling

    model, cfg = load_generator(str(STUDENT))
    portrait = np.full((cfg.resolution, cfg.resolution, 3), 128, np.uint8)
    portrait[8:24, 8:24] = 200
    return AvatarGenerator(model, cfg), portrait, Sampling.from_config(
        cfg, steps=1, audio_scale=1.0, ref_scale=1.0)


def test_sound_arriving_in_pieces_renders_what_the_whole_file_renders(generator):
    """A chunk starts once its sound is in, and is the chunk the whole file gives: the same
    noise, motion frames and audio features (the features' window reaches far enough back)."""
    from onestep.live.render import LiveRender

    gen, portrait, sampling = generator
    sound = _speech_like(3.0)
    whole, _ = gen.generate(portrait, sound, sampling)
    live, frames, held = LiveRender(gen, portrait, sampling), [], []
    for i in range(0, len(sound), 640):  # 40 ms
        live.push(sound[i:i + 640])
        while live.ready:
            frames.append(live.accept(gen.denoise([live.next_job()])[0]))
            live.take_sound()
        held.append(len(live.sound))
    frames = np.concatenate(frames)
    # Every chunk whose sound had all come: all but the last, which the file pads with silence.
    assert len(whole) - len(frames) < gen.cfg.data.frames
    assert np.array_equal(frames, whole[:len(frames)])
    assert max(held) < 1.0 * RATE  # what is held does not grow with the session


def test_a_session_streams_fmp4_with_the_sound_it_was_sent(generator):
    from onestep.live.session import AudioMessageError, LiveSession

    gen, portrait, sampling = generator
    sound = _speech_like(2.0, 48000)  # a browser's rate: resampled to the model's 16 kHz
    pcm = (sound * 32767).astype("<i2").tobytes()
    session = LiveSession(gen, portrait, sampling, input_rate=48000)
    stream, chunks = [session.init], []
    for i in range(0, len(pcm), 2 * 1920):  # 40 ms at 48 kHz
        session.feed(pcm[i:i + 2 * 1920])
        while session.ready:
            chunks.append(session.next_chunk())
            stream.append(chunks[-1].segment)
    with pytest.raises(AudioMessageError, match="audio message of 3 bytes: PCM16 mono comes in "
                                                "whole 2-byte samples"):
        session.feed(b"\x00\x01\x02")
    session.close()
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].frames == gen.cfg.data.frames
    assert all(c.frames == session.chunk_frames for c in chunks[1:])
    assert all(c.latency_s >= 0 for c in chunks)
    frames, decoded = _decode(b"".join(stream))
    sent_frames = sum(c.frames for c in chunks)
    assert len(frames) == sent_frames and 2.0 * 25 - sent_frames < gen.cfg.data.frames
    model_rate = _speech_like(2.0)
    assert _aligned(decoded, model_rate[:len(decoded)])


def test_the_gate_lets_sound_through_once_per_chunk():
    from onestep.live.incoming import SoundGate

    gate = SoundGate(input_rate=16000, fps=25, first_chunk_frames=8, chunk_frames=6)
    piece = b"\x00\x00" * 640  # 40 ms
    passed = [gate.add(piece) for _ in range(8)]  # 320 ms: the first chunk's 8 frames
    assert passed[:7] == [None] * 7 and len(passed[7]) == 8 * len(piece)
    gate.chunks += 1
    passed = [gate.add(piece) for _ in range(6)]  # the next chunk's 6 frames
    assert passed[:5] == [None] * 5 and len(passed[5]) == 6 * len(piece)


def test_the_idle_clock_fills_in_silence_only_for_a_quiet_client_behind_the_clock():
    from onestep.live.incoming import IdleClock

    clock = IdleClock(input_rate=16000, idle_after_s=1.0, step_s=0.24)
    assert clock.wait_s() is None  # nothing heard yet: no filling in
    clock.heard(16000 * 3, now=10.0)  # 3 s sent at once (a file): ahead of the clock
    assert clock.wait_s() == 1.0 and clock.fill(now=11.0) == b""  # quiet, but not behind
    assert clock.wait_s() == 0.24
    # Behind from 13 s on: filled in up to the clock, at most idle_after_s + step_s at a time.
    assert len(clock.fill(now=14.0)) == 2 * 16000
    assert len(clock.fill(now=14.24)) == 2 * int(0.24 * 16000)
    assert len(clock.fill(now=20.0)) == 2 * int(1.24 * 16000)
    clock.heard(640, now=20.1)  # the client speaks again: back to waiting idle_after_s
    assert clock.wait_s() == 1.0


def _webm_opus(sound: np.ndarray, rate: int = 48000, cluster_ms: int = 5000) -> bytes:
    """A MediaRecorder-like recording: Opus in WebM, 20 ms packets, a Cluster per `cluster_ms`."""
    out = io.BytesIO()
    with av.open(out, "w", format="webm",
                 options={"cluster_time_limit": str(cluster_ms)}) as box:
        stream = box.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        for i in range(0, len(sound), 960):
            frame = av.AudioFrame.from_ndarray(sound[None, i:i + 960], format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, i
            box.mux(stream.encode(frame))
        box.mux(stream.encode(None))
    return out.getvalue()


def test_webm_opus_pieces_cut_anywhere_decode_to_the_sound_recorded():
    from onestep.live.webm import OpusWebM, WebMError

    sound = _speech_like(2.0, 48000)
    data = _webm_opus(sound)
    webm = OpusWebM()
    pieces = [webm.feed(data[i:i + 333]) for i in range(0, len(data), 333)]
    assert sum(len(p) == 0 for p in pieces) > 0  # pieces ending inside a block wait
    got = np.concatenate(pieces)[:len(sound)]
    assert len(got) == len(sound) and np.corrcoef(got, sound)[0, 1] > 0.99  # lossy, aligned
    with pytest.raises(WebMError, match="does not start with an EBML header"):
        OpusWebM().feed(b"RIFF\x00\x00\x00\x00WAVE")
    vorbis = data.replace(b"A_OPUS", b"A_VORB")
    with pytest.raises(WebMError, match="codec 'A_VORB': expected A_OPUS"):
        OpusWebM().feed(vorbis)


def test_a_mangled_webm_piece_costs_its_sound_and_reading_goes_on_at_the_next_cluster():
    from onestep.live.webm import CLUSTER, OpusWebM, WebMError

    sound = _speech_like(3.0, 48000)
    data = _webm_opus(sound, cluster_ms=500)
    third = [i for i in range(len(data)) if data.startswith(CLUSTER.to_bytes(4, "big"), i)][2]
    mangled = data[:third] + b"\x00\x00" + data[third:]  # no EBML element starts with 0
    webm, got, errors = OpusWebM(), [], []
    for i in range(0, len(mangled), 333):
        try:
            got.append(webm.feed(mangled[i:i + 333]))
        except WebMError as e:
            errors.append(str(e))
    assert errors == [f"malformed WebM: no EBML length marker at byte {third} of the stream"]
    whole, got = OpusWebM().feed(data), np.concatenate(got)
    lost = len(whole) - len(got)
    assert 0 < lost < 0.25 * 48000  # what the failing piece completed, no more
    tail = 48000  # from the third cluster on, the sound comes out as it went in
    assert np.corrcoef(got[-tail:], whole[-tail:])[0, 1] > 0.99
    refused = OpusWebM()  # not WebM at all: refused for good, nothing kept
    for piece in (b"RIFF\x00\x00\x00\x00WAVE", data):
        with pytest.raises(WebMError, match="does not start with an EBML header"):
            refused.feed(piece)
