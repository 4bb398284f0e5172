"""Chunked generation as the server runs it: requests batched chunk by chunk give the same video
as each alone, the output is retimed exactly, and the MPEG-TS stream plays from every prefix."""

import numpy as np
import pytest
import torch

from onestep.generate import AvatarGenerator, Sampling
from onestep.media import decode_video, load_audio
from onestep.model import build_model
from onestep.serving.service import FrameRetimer, TsStream
from onestep.serving.validation import GenerationRequest


@pytest.fixture(scope="module")
def generator():
    from onestep.config import load_config

    cfg = load_config("tiny", ["model.dim=48", "model.depth=2", "model.heads=2",
                               "model.audio_dim=32", "sample.audio_scale=2"])
    torch.manual_seed(0)
    return AvatarGenerator(build_model(cfg), cfg)


def _inputs(seconds: float, seed: int, cfg):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (cfg.resolution, cfg.resolution, 3), dtype=np.uint8)
    return image, (0.2 * rng.standard_normal(int(seconds * cfg.audio.sample_rate))
                   ).astype(np.float32)


def test_batched_chunks_of_several_requests_match_each_alone(generator):
    cfg = generator.cfg
    requests = [(*_inputs(1.3, 1, cfg), Sampling.from_config(cfg, steps=2, seed=5)),
                (*_inputs(0.5, 2, cfg), Sampling.from_config(cfg, steps=2, seed=6)),
                (*_inputs(0.9, 3, cfg), Sampling.from_config(cfg, steps=1, seed=7))]
    alone = [generator.generate(*r)[0] for r in requests]

    # Round-robin like the server: each batch holds the next chunk of every unfinished request,
    # at different chunk indices and with two solver settings (two batched solves).
    renders = [generator.start(*r) for r in requests]
    frames = [[] for _ in renders]
    while not all(r.done for r in renders):
        live = [i for i, r in enumerate(renders) if not r.done]
        latents = generator.denoise([renders[i].next_job() for i in live])
        for i, latent in zip(live, latents):
            frames[i].append(renders[i].accept(latent))
    for i, expected in enumerate(alone):
        got = np.concatenate(frames[i])
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # float summation order
    assert [len(f) for f in alone] == [generator.num_frames(r[1]) for r in requests]
    assert renders[0].stats.chunks > 2 and renders[0].stats.nfe_per_chunk == 2 * 2


@pytest.mark.parametrize("src, fps", [(25, 25), (25, 10), (25, 30), (25, 60)])
def test_retiming_chunk_by_chunk_equals_retiming_at_once(src, fps):
    video = np.arange(53, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2
                                                                           ).repeat(3, 3)
    whole = FrameRetimer(src, fps, 4)(video)
    pieces = FrameRetimer(src, fps, 4)
    chunked = np.concatenate([pieces(video[a:a + 9]) for a in range(0, 53, 9)])
    assert np.array_equal(whole, chunked)
    assert len(whole) == -(-53 * fps // src)  # ⌈duration·fps⌉ frames
    assert whole[-1, 0, 0, 0] == 52 or fps < src


def test_ts_stream_plays_from_every_prefix_and_ends_with_all_frames_and_audio(generator):
    cfg = generator.cfg
    image, audio = _inputs(2.0, 4, cfg)
    req = GenerationRequest(image, audio, None, None, None, None, fps=25, resolution=64)
    out = TsStream(req, cfg.synth.fps, cfg.audio.sample_rate)
    pieces = [out.write(f) for f in generator.stream(image, audio, Sampling.from_config(cfg))]
    pieces.append(out.close())
    assert sum(1 for p in pieces if p) >= 3
    decoded = [len(decode_video(b"".join(pieces[:k + 1]))[0])
               for k in range(len(pieces)) if b"".join(pieces[:k + 1])]
    assert decoded == sorted(decoded) and decoded[0] > 0  # playable early, growing in order
    frames, fps = decode_video(b"".join(pieces))
    assert frames.shape == (50, 64, 64, 3) and fps == 25
    # AAC in MPEG-TS keeps the encoder's priming (one 1024-sample frame, offset in the
    # timestamps of both streams alike) and pads the last frame: at most two frames more.
    assert 0 <= len(load_audio(b"".join(pieces))) - len(audio) <= 2 * 1024


def test_bf16_generation_is_the_fp32_video_within_bf16_rounding():
    """`precision: bf16` (Serve, jobs/generate.py) runs the network and the codec under bf16
    autocast; the trained student's video is the same up to bf16's rounding. An unknown
    precision is named."""
    from conftest import ROOT
    from onestep.checkpoint import load_generator

    model, cfg = load_generator(str(ROOT / "reports/pretrained/student"))
    image, audio = _inputs(0.6, 4, cfg)
    sampling = Sampling.from_config(cfg, seed=3)
    expected, _ = AvatarGenerator(model, cfg).generate(image, audio, sampling)
    got, _ = AvatarGenerator(model, cfg, precision="bf16").generate(image, audio, sampling)
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert 0 < diff.mean() < 2 and diff.max() <= 8
    with pytest.raises(ValueError, match="precision: 'fp16'; expected one of fp32, bf16"):
        AvatarGenerator(model, cfg, precision="fp16")


@pytest.mark.parametrize("device, message", [
    ("gpu", "--device gpu: not a device"),
    ("cuda", "--device cuda: no CUDA device on this machine"),
])
def test_generate_names_a_device_it_cannot_use(device, message, monkeypatch):
    import generate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI, also on a GPU
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        generate.main(["--checkpoint", "reports/pretrained/student", "--image", "x.png",
                       "--audio", "x.wav", "--out", "x.mp4", "--device", device])
