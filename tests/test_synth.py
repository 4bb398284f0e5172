import numpy as np

from onestep.config import SynthConfig
from onestep.synth import make_clip
from onestep.synth.clips import identity_split


def test_clips_are_deterministic_from_seed():
    cfg = SynthConfig(resolution=32, clip_seconds=1.0)
    a, b = make_clip(5, cfg), make_clip(5, cfg)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio, make_clip(6, cfg).audio)
    other_seed = make_clip(5, SynthConfig(resolution=32, clip_seconds=1.0, seed=1))
    assert not np.array_equal(a.frames, other_seed.frames)


def test_clip_shapes_and_labels():
    cfg = SynthConfig(resolution=32, clip_seconds=2.0)
    clip = make_clip(0, cfg)
    assert clip.frames.shape == (50, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (32000,) and np.abs(clip.audio).max() <= 1
    for key in ("mouth_open", "mouth_width", "head_x", "head_y", "blink"):
        assert clip.labels[key].shape == (50,)
    assert 0 <= clip.labels["mouth_open"].min() and clip.labels["mouth_open"].max() <= 1


def test_mouth_opening_is_visible_in_the_pixels():
    """Lip-sync is only learnable if the mouth label changes the rendered mouth region."""
    cfg = SynthConfig(resolution=32, clip_seconds=4.0)
    clip = make_clip(2, cfg)
    mouth_region = clip.clean_frames[:, 18:28, 10:22].astype(float).mean(axis=(1, 2, 3))
    assert abs(np.corrcoef(mouth_region, clip.labels["mouth_open"])[0, 1]) > 0.5


def test_speech_energy_follows_the_mouth():
    """Open vowels are loud, closures are quiet: the audio carries the mouth signal."""
    cfg = SynthConfig(resolution=32, clip_seconds=4.0, background_noise=0.0)
    clip = make_clip(3, cfg)
    energy = np.sqrt((clip.audio.reshape(100, -1) ** 2).mean(axis=1))
    assert np.corrcoef(energy, clip.labels["mouth_open"])[0, 1] > 0.3


def test_held_out_identities_and_degradations():
    cfg = SynthConfig(num_identities=20, test_identity_fraction=0.25, degraded_fraction=0.5,
                      clip_seconds=0.8)
    assert {identity_split(i, cfg) for i in range(5)} == {"test"}
    assert {identity_split(i, cfg) for i in range(5, 20)} == {"train"}
    clips = [make_clip(i, cfg) for i in range(30)]
    degraded = [c for c in clips if c.degradations]
    clean = [c for c in clips if not c.degradations]
    assert degraded and clean
    assert all(c.quality < 1 for c in degraded) and all(c.quality == 1 for c in clean)
