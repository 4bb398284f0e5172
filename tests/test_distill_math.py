"""The distillation math on hand-made tensors: what each loss's gradient is, and where
gradients reach in a student's trajectory."""

import pytest
import torch
from torch import nn

from onestep.distill.losses import (discriminator_loss, dmd_loss, generator_loss,
                                    perturbation_penalty)
from onestep.distill.trajectory import dynamic_schedule, final_step_sample
from onestep.flow import sampling_timesteps
from onestep.model.dit import Conditions


def test_dmd_gradient_vanishes_when_scores_agree_and_points_from_fake_to_real():
    x0 = torch.randn(2, 3, 4, 5, 5, requires_grad=True)
    real = torch.randn(2, 3, 4, 5, 5)
    dmd_loss(x0, real, real.clone()).backward()
    assert torch.count_nonzero(x0.grad) == 0

    x0.grad = None
    fake = real + 0.3
    dmd_loss(x0, real, fake).backward()
    scale = (x0 - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = (fake - real) / scale / x0.numel()
    torch.testing.assert_close(x0.grad, expected.detach())
    # A gradient step moves the sample towards the real score's prediction.
    stepped = x0.detach() - 0.1 * x0.grad
    assert ((stepped - (real - 0.3)).abs().mean() < (x0.detach() - (real - 0.3)).abs().mean())


def test_relativistic_loss_is_the_discriminator_loss_with_roles_swapped():
    real, fake = torch.randn(8), torch.randn(8)
    assert torch.allclose(generator_loss("r3gan", real, fake),
                          discriminator_loss("r3gan", fake, real))
    # It depends only on the difference: shifting both logits changes nothing.
    assert torch.allclose(discriminator_loss("r3gan", real + 5, fake + 5),
                          discriminator_loss("r3gan", real, fake))
    # Real scored above fake → small loss; below → large.
    assert discriminator_loss("r3gan", real + 10, real) < 1e-3
    assert discriminator_loss("r3gan", real, real + 10) > 9


@pytest.mark.parametrize("kind", ["gan", "hinge"])
def test_other_losses_reward_the_discriminator_for_separating(kind):
    real, fake = torch.full((4,), 3.0), torch.full((4,), -3.0)
    assert discriminator_loss(kind, real, fake) < discriminator_loss(kind, fake, real)
    assert generator_loss(kind, real, fake) > generator_loss(kind, real, real)


def test_unknown_loss_names_the_setting():
    with pytest.raises(ValueError, match="adversarial.loss"):
        discriminator_loss("wgan", torch.zeros(1), torch.zeros(1))


def test_perturbation_penalty_is_zero_for_a_constant_discriminator_and_tracks_slope():
    x = torch.randn(4, 3, 2, 4, 4)
    constant = lambda v: torch.full((v.shape[0],), 0.7)  # noqa: E731
    assert perturbation_penalty(constant, x, constant(x), 0.05) == 0
    # For a linear discriminator D(x) = w·x it estimates ‖w‖² (the R1 gradient penalty).
    w = torch.randn(3 * 2 * 4 * 4) * 0.1
    linear = lambda v: v.flatten(1) @ w  # noqa: E731
    g = torch.Generator().manual_seed(0)
    est = torch.stack([perturbation_penalty(linear, x, linear(x), 0.05, g) for _ in range(400)])
    assert est.mean().item() == pytest.approx(float(w @ w), rel=0.1)


@pytest.mark.parametrize("steps,previous", [(3, 4), (2, 3), (1, 2)])
def test_dynamic_schedule_moves_from_the_previous_to_the_target_final_timestep(steps, previous):
    start = dynamic_schedule(steps, previous, 0.0, u=0.9)
    end = dynamic_schedule(steps, previous, 1.0, u=0.9)
    prev_last = float(sampling_timesteps(previous)[-2])
    assert float(start[-2]) == pytest.approx(prev_last)
    assert torch.equal(end, sampling_timesteps(steps))
    for progress in (0.25, 0.5, 0.75):
        for u in (0.0, 0.5, 0.99):
            s = dynamic_schedule(steps, previous, progress, u)
            lo, hi = sorted([prev_last, float(end[-2])])
            assert lo - 1e-6 <= float(s[-2]) <= hi + 1e-6
            assert float(s[0]) == 1.0 and float(s[-1]) == 0.0
            assert torch.all(s[:-1] >= s[1:])  # still a decreasing schedule
    # With progress the final timestep moves on average towards the target.
    mean = lambda p: sum(float(dynamic_schedule(steps, previous, p, u / 10)[-2])  # noqa
                         for u in range(10)) / 10
    assert abs(mean(0.8) - float(end[-2])) < abs(mean(0.2) - float(end[-2]))


class _Recorder(nn.Module):
    """v(x, t) = w·x, recording for each call whether autograd was on."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.grad_enabled = []

    def forward(self, x, t, cond):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.w * x


def test_gradients_reach_only_the_final_step_of_the_trajectory():
    model = _Recorder()
    noise = torch.randn(2, 3, 4, 2, 2)
    timesteps = sampling_timesteps(4)
    cond = Conditions(ref=None, audio=None, motion=None, motion_mask=None)
    out = final_step_sample(model, noise, timesteps, cond)
    assert model.grad_enabled == [False, False, False, True]
    out.sum().backward()
    # Only the last step depends on w through the graph: x0 = x_last − t_last·w·x_last,
    # so d(sum)/dw = −t_last·sum(x_last) with x_last treated as a constant.
    with torch.no_grad():
        x = noise
        for t_cur, t_next in zip(timesteps[:-2], timesteps[1:-1]):
            x = x + (t_next - t_cur) * 0.5 * x
    torch.testing.assert_close(model.w.grad, -timesteps[-2] * x.sum())


def test_adversarial_phases_milestones_and_schedules():
    from onestep.config import load_config
    from onestep.stages.adversarial import AdversarialStage

    cfg = load_config("tiny", ["train.stage=adversarial", "train.global_batch=4",
                               "adversarial.clips_per_phase=12", "adversarial.warmup_steps=2",
                               "adversarial.disc_warmup_steps=0"])
    stage = AdversarialStage(cfg)
    assert stage.total_clips(cfg) == 36  # 3 phases × 12 clips = 9 steps of 4 clips
    assert [stage.phase(s)[1] for s in range(9)] == [3, 3, 3, 2, 2, 2, 1, 1, 1]
    assert [stage.milestone(s, 9) for s in range(1, 10)] == [
        None, None, "3step", None, None, "2step", None, None, "1step"]
    assert [stage.restarts_ema(s) for s in range(9)] == [
        False, False, False, True, False, False, True, False, False]
    assert stage.export_config(6).sample.steps == 2 and stage.export_config(9).sample.steps == 1
    assert stage.export_config(9).sample.audio_scale == 1.0  # students sample without CFG
    # A phase starts from the previous schedule's final timestep and reaches its own.
    assert float(stage.schedule(3, 0.5)[-2]) == pytest.approx(1 / 3)  # 3-step's last start
    assert torch.equal(stage.schedule(5, 0.5), sampling_timesteps(2))
    # A discriminator-only warm-up step: the dynamic warm-up starts after it.
    cfg.adversarial.disc_warmup_steps = 1
    assert [stage.generator_updates(s) for s in range(3, 6)] == [(0, False), (0, True), (1, True)]
    assert float(stage.schedule(3, 0.5)[-2]) == pytest.approx(1 / 3)
    assert float(stage.schedule(4, 0.5)[-2]) == pytest.approx(1 / 3)
    assert not torch.equal(stage.schedule(5, 0.5), sampling_timesteps(2))
    # TTUR: after the warm-up the generator steps every `disc_steps` steps.
    cfg.adversarial.disc_steps = 2
    assert [stage.generator_updates(s) for s in range(6, 9)] == [(0, False), (0, True), (1, False)]
    cfg.adversarial.disc_warmup_steps, cfg.adversarial.disc_steps = 0, 1
    cfg.adversarial.dynamic_timesteps = False
    assert torch.equal(stage.schedule(3, 0.5), sampling_timesteps(2))
    # A longer last phase: the 1-step phase trains on, the earlier boundaries stay.
    cfg.adversarial.last_phase_clips = 20
    assert stage.total_clips(cfg) == 44
    assert [stage.phase(s)[1] for s in range(11)] == [3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1]
    assert [stage.milestone(s, 11) for s in (3, 6, 9, 11)] == ["3step", "2step", None, "1step"]


@pytest.mark.parametrize("gan_weight", [0.0, 1.0, 2.0])
def test_generator_objective_scales_the_gan_terms_and_adds_the_regression(gan_weight):
    """`adversarial.gan_weight` scales the GAN terms (the real and the self-compare one) and 0
    leaves the regression alone: the discriminator is then not even run on the sample."""
    from onestep.config import load_config
    from onestep.flow import mouth_weights, weighted_mse
    from onestep.stages.adversarial import AdversarialStage

    cfg = load_config("tiny", ["train.stage=adversarial", f"adversarial.gan_weight={gan_weight}",
                               "adversarial.regression_weight=10",
                               "adversarial.self_compare_weight=0.5"])
    stage = AdversarialStage(cfg)
    g = torch.Generator().manual_seed(0)
    x_fake = torch.randn(2, 4, 2, 8, 8, generator=g).requires_grad_()
    x_ref, real, ref = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(2), torch.randn(2)
    calls = []

    def disc(x):
        calls.append(x)
        return x.mean(dim=(1, 2, 3, 4)) * 3

    loss, logs = stage.generator_objective(disc, x_fake, real, x_ref, ref)
    regression = weighted_mse(x_fake, x_ref, mouth_weights(x_fake, cfg.flow)).detach()
    assert float(logs["regression"]) == pytest.approx(float(regression))
    adversarial = (generator_loss("r3gan", real, disc(x_fake))
                   + 0.5 * generator_loss("r3gan", ref, disc(x_fake))).detach()
    assert float(loss.detach()) == pytest.approx(float(gan_weight * adversarial + 10 * regression))
    assert len(calls) == (2 if gan_weight == 0 else 3)  # only the two calls above, with 0
    loss.backward()
    assert x_fake.grad.abs().sum() > 0
