import pytest
import torch

from onestep.config import ConfigError, FlowConfig, load_config
from onestep.flow import (
    GuidedVelocity,
    add_noise,
    euler_sample,
    flow_matching_loss,
    region_weights,
    sampling_timesteps,
    shift_timesteps,
    velocity_loss,
)
from onestep.model import Conditions


def test_euler_on_a_linear_flow_lands_exactly():
    """With the true velocity ε − x0 (constant along the path), any step count is exact."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for steps in (1, 2, 7, 40):
        for shift in (1.0, 3.0):
            out = euler_sample(lambda x, t: noise - x0, noise, sampling_timesteps(steps, shift))
            assert torch.allclose(out, x0, atol=1e-5)


def test_interpolation_endpoints_and_shift():
    x0, noise = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(add_noise(x0, noise, torch.tensor([0.0, 1.0]))[:, 0], torch.tensor([0., 1.]))
    t = torch.linspace(0, 1, 11)
    shifted = shift_timesteps(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted >= t).all()


class _Recorder(torch.nn.Module):
    """A velocity model that returns a distinct constant per condition branch."""

    def forward(self, x, t, cond):
        value = 1.0 + 10.0 * cond.drop_audio.float() + 100.0 * cond.drop_ref.float()
        return value.view(-1, 1, 1, 1, 1).expand_as(x).clone()


def _cond(b=2):
    return Conditions(torch.zeros(b, 3, 2, 2), torch.zeros(b, 4, 5), torch.zeros(b, 3, 2, 2, 2),
                      torch.zeros(b, 1, 2, 2, 2))


def test_multi_cfg_is_fada_eq9_with_exact_nfe():
    x, t = torch.zeros(2, 3, 2, 2, 2), torch.full((2,), 0.5)
    v_full, v_ref, v_none = 1.0, 11.0, 111.0
    for audio_scale, ref_scale, nfe in [(1.0, 1.0, 1), (2.5, 1.0, 2), (2.5, 1.5, 3),
                                        (1.0, 2.0, 3)]:
        guided = GuidedVelocity(_Recorder(), _cond(), audio_scale, ref_scale)
        v = guided(x, t)
        expected = v_none + ref_scale * (v_ref - v_none) + audio_scale * (v_full - v_ref)
        assert torch.allclose(v, torch.full_like(v, expected)), (audio_scale, ref_scale)
        assert guided.nfe == nfe
        euler_sample(guided, x, sampling_timesteps(4))
        assert guided.nfe == nfe + 4 * nfe  # NFE counts per step, per branch


def test_flow_matching_loss_is_zero_for_the_true_velocity():
    x0 = torch.randn(4, 3, 2, 2, 2)

    class Oracle(torch.nn.Module):
        def forward(self, xt, t, cond):  # recovers ε − x0 from x_t = (1−t)x0 + tε
            tt = t.view(-1, 1, 1, 1, 1)
            return (xt - x0) / tt

    loss, logs = flow_matching_loss(Oracle(), x0, _cond(4), FlowConfig(logit_normal=True),
                                    torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8 and "loss" in logs


def test_mouth_weighting_makes_an_error_at_the_mouth_cost_more_than_one_elsewhere():
    """The teacher's loss counts errors inside flow.mouth_region mouth_weight times, so that
    lip-sync is not a rounding error next to the rest of the face."""
    x0 = torch.zeros(2, 3, 2, 8, 8)
    weights = region_weights(8, 8, [0.5, 1.0, 0.0, 0.5], 5.0)
    assert weights.shape == (8, 8) and weights[4:, :4].eq(5).all() and weights.sum() == 5 * 16 + 48

    def off_by_one(rows, cols):
        class Model(torch.nn.Module):
            def forward(self, xt, t, cond):  # the true velocity, plus 1 on the given positions
                tt = t.view(-1, 1, 1, 1, 1)
                v = (xt - x0) / tt
                v[..., rows, cols] += 1.0
                return v
        return Model()

    noise, t = torch.randn(x0.shape), torch.full((2,), 0.5)
    at_mouth = velocity_loss(off_by_one(slice(4, 8), slice(0, 4)), x0, noise, t, _cond(2),
                             weights)
    elsewhere = velocity_loss(off_by_one(slice(0, 4), slice(0, 4)), x0, noise, t, _cond(2),
                              weights)
    assert torch.isclose(at_mouth, 5 * elsewhere, rtol=1e-4)
    unweighted = velocity_loss(off_by_one(slice(4, 8), slice(0, 4)), x0, noise, t, _cond(2))
    assert torch.isclose(unweighted, torch.tensor(16 / 64), rtol=1e-4)
    assert torch.isclose(at_mouth, torch.tensor(5 * 16 / 128), rtol=1e-4)


def test_a_mouth_region_outside_the_frame_is_refused_with_the_field_named():
    with pytest.raises(ConfigError, match=r"flow.mouth_region: expected \[top, bottom"):
        load_config("tiny", ["flow.mouth_region=[0.9, 0.5, 0.3, 0.7]"])
    with pytest.raises(ConfigError, match="flow.mouth_weight"):
        load_config("tiny", ["flow.mouth_weight=0"])


def test_training_draws_come_from_the_cpu_generator_and_land_where_the_data_is():
    """A GPU run draws the same noise and times as a CPU run of its config: the generator stays
    on the CPU and the draws follow the data. The meta device stands in for a GPU here."""
    from onestep import draws

    like = torch.empty(2, 3, device="meta", dtype=torch.bfloat16)
    noise = draws.normal(like, torch.Generator().manual_seed(5))
    times = draws.uniform(2, torch.Generator().manual_seed(5), like, 0.2, 0.6)
    ints = draws.integers(7, 2, torch.Generator().manual_seed(5), like)
    assert noise.device.type == times.device.type == ints.device.type == "meta"
    assert noise.dtype == torch.bfloat16 and times.dtype == torch.float32
    g = torch.Generator().manual_seed(5)
    assert torch.equal(draws.normal(torch.empty(2, 3), g),
                       torch.randn(2, 3, generator=torch.Generator().manual_seed(5)))
    g = torch.Generator().manual_seed(5)
    expected = 0.2 + 0.4 * torch.rand(2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(draws.uniform(2, g, torch.empty(0), 0.2, 0.6), expected)
