"""OSA-LCM's objectives on hand-made tensors (onestep.distill.consistency)."""

import pytest
import torch

from onestep.distill.consistency import (
    consistency_loss,
    consistency_pair,
    discretisation,
    huber,
    motion_loss,
    progressive_noise_bound,
    teacher_step,
    x0_prediction,
)
from onestep.flow import add_noise


def _exact(x0: torch.Tensor, noise: torch.Tensor):
    """The velocity field of the straight flow from x0 to noise: every point's ODE is exact."""
    return lambda x, t: noise - x0


def test_the_consistency_target_is_a_fixed_point_of_an_exact_ode():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 5, 5, generator=g), torch.randn(3, 2, 4, 5, 5, generator=g)
    grid = discretisation(50)
    t_from, t_to = consistency_pair(grid, torch.tensor([0, 10, 30]), skip=5)
    assert torch.allclose(t_from - t_to, torch.full((3,), 0.1), atol=1e-6)
    assert t_to.tolist() == pytest.approx([0.0, 0.2, 0.6])
    exact = _exact(x0, noise)
    x_from = add_noise(x0, noise, t_from)
    loss, pred = consistency_loss(exact, exact, exact, x_from, t_from, t_to, c=0.001)
    assert torch.allclose(pred, x0, atol=1e-5) and float(loss.max()) < 1e-5
    # The teacher's step lands on the same trajectory; f(x, 0) = x (the boundary condition).
    x_from = (1 - 0.7) * x0 + 0.7 * noise
    step = teacher_step(exact, x_from, torch.full((3,), 0.7), torch.full((3,), 0.3))
    assert torch.allclose(step, 0.7 * x0 + 0.3 * noise, atol=1e-5)
    assert torch.equal(x0_prediction(exact, x0, torch.zeros(3)), x0)


def test_huber_is_quadratic_below_its_threshold_and_linear_above():
    zero = torch.zeros(1, 4)
    small, large = torch.full((1, 4), 1e-5), torch.full((1, 4), 10.0)
    assert float(huber(small, zero, c=0.001)) == pytest.approx(0.5 * 1e-10 / 0.001, rel=1e-3)
    assert float(huber(large, zero, c=0.001)) == pytest.approx(10.0 - 0.001, rel=1e-6)
    assert float(huber(zero, zero, c=0.001)) == 0.0


def test_the_progressive_noise_bound_rises_from_start_to_end_and_stays():
    bounds = [progressive_noise_bound(i, 0.1, 1.0, 100) for i in (0, 50, 100, 1000)]
    assert bounds == pytest.approx([0.1, 0.55, 1.0, 1.0])
    assert progressive_noise_bound(0, 0.1, 1.0, 0) == 1.0  # switched off: the full range at once


def test_the_motion_loss_is_zero_for_identical_frame_differences():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2, 3, 5, 4, 4, generator=g)
    assert float(motion_loss(real + 2.5, real)) == pytest.approx(0.0, abs=1e-10)  # same motion
    still = real[:, :, :1].expand_as(real)
    assert float(motion_loss(still, real)) > 0.1  # a frozen video against a moving one
    assert float(motion_loss(real[:, :, :1], real[:, :, :1])) == 0.0  # one frame: no motion
