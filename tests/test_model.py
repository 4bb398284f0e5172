import torch

from onestep.config import load_config
from onestep.model import Conditions, build_codec, build_model, count_parameters
from onestep.model.audio_adapter import AudioAdapter, audio_context_window
from onestep.model.codec import SpaceToDepth
from onestep.model.rope import apply_rope, rope_angles


def _conditions(b, c, f, h, w, d, r=2):
    g = torch.Generator().manual_seed(0)
    return Conditions(torch.randn(b, c, h, w, generator=g), torch.randn(b, f * r, d, generator=g),
                      torch.zeros(b, c, f, h, w), torch.zeros(b, 1, f, h, w))


def test_codec_round_trip_is_exact():
    codec = SpaceToDepth(2)
    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (2, 12, 4, 8, 8)
    assert torch.equal(codec.decode(z), x)


def test_dit_shapes_and_adaln_zero_start(tiny_config):
    cfg = tiny_config()
    model, codec = build_model(cfg), build_codec(cfg)
    x = torch.randn(2, codec.latent_channels, 8, 16, 16)
    out = model(x, torch.rand(2), _conditions(2, codec.latent_channels, 8, 16, 16, 40))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero final layer: the model starts at 0
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_every_condition_reaches_the_output(tiny_config):
    cfg = tiny_config()
    model, codec = build_model(cfg), build_codec(cfg)
    for p in model.parameters():  # leave the zero-init regime so conditions can matter
        torch.nn.init.normal_(p, std=0.05)
    c = codec.latent_channels
    x, t = torch.randn(1, c, 8, 16, 16), torch.tensor([0.5])
    cond = _conditions(1, c, 8, 16, 16, 40)
    base = model(x, t, cond)
    edits = {
        "audio": Conditions(cond.ref, cond.audio + 1, cond.motion, cond.motion_mask),
        "ref": Conditions(cond.ref + 1, cond.audio, cond.motion, cond.motion_mask),
        "motion": Conditions(cond.ref, cond.audio, cond.motion + 1, cond.motion_mask + 1),
        "drop_audio": Conditions(cond.ref, cond.audio, cond.motion, cond.motion_mask,
                                 drop_audio=torch.tensor([True])),
    }
    for name, edited in edits.items():
        assert not torch.allclose(model(x, t, edited), base), name


def test_audio_context_window_is_eq1():
    feats = torch.arange(6.0).view(1, 6, 1)  # value = position
    win = audio_context_window(feats, 2)
    assert win.shape == (1, 6, 5)
    assert win[0, 3].tolist() == [1, 2, 3, 4, 5]
    assert win[0, 0].tolist() == [0, 0, 0, 1, 2]  # edges replicate


def test_audio_adapter_groups_audio_by_frame():
    """Eq. 2: frame i's tokens depend only on frame i's audio (± the context window)."""
    adapter = AudioAdapter(feature_dim=4, context=0, per_frame=2, hidden=16, dim=8, tokens=3)
    feats = torch.randn(1, 10, 4)
    out = adapter(feats)
    assert out.shape == (1, 5, 3, 8)
    feats2 = feats.clone()
    feats2[0, 4:6] += 1  # frame 2's audio
    changed = (adapter(feats2) - out).abs().sum(dim=(0, 2, 3)) > 0
    assert changed.tolist() == [False, False, True, False, False]


def test_rope_scores_depend_only_on_relative_position():
    angles = rope_angles((4, 4, 4), 24)
    q = torch.randn(1, 1, 1, 24).expand(1, 1, 64, 24)
    k = torch.randn(1, 1, 1, 24).expand(1, 1, 64, 24)
    scores = (apply_rope(q, angles) @ apply_rope(k, angles).transpose(-1, -2))[0, 0]

    def idx(f, y, x):
        return f * 16 + y * 4 + x

    assert torch.allclose(scores[idx(0, 0, 0), idx(1, 2, 1)], scores[idx(2, 1, 2), idx(3, 3, 3)],
                          atol=1e-4)
    assert not torch.allclose(scores[idx(0, 0, 0), idx(1, 2, 1)], scores[idx(0, 0, 0),
                                                                          idx(2, 2, 1)])


def test_presets_build_with_printed_sizes():
    sizes = {}
    for name in ("tiny", "small"):
        sizes[name] = count_parameters(build_model(load_config(name)))
    assert 0.5e6 < sizes["tiny"] < 3e6 and sizes["small"] > 10 * sizes["tiny"]
