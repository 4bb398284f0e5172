"""OSA-LCM's objectives (§2.2, §4.1): latent consistency distillation from the teacher's ODE,
its Huber distance, the discriminator's progressive forward process and the motion loss.
Pure functions of tensors; a stage wires them.

A velocity network is a consistency function through its x0 prediction, f(x_t, t) = x_t − t·v:
at t = 0 it is x_0 itself, which is the boundary condition Eq. (1)'s c_skip and c_out exist to
enforce, so no reparametrisation is needed on a rectified flow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def discretisation(steps: int) -> torch.Tensor:
    """steps + 1 times from 1 to 0: the grid the teacher's ODE is solved on (t_0 = 0)."""
    return torch.linspace(1.0, 0.0, steps + 1)


def consistency_pair(grid: torch.Tensor, index: torch.Tensor, skip: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_{n+k}, t_n) per sample: the noisier time and the one `skip` grid points closer to the
    data. `index` (B,) counts from the data end: t_n is grid[-1 - index]."""
    n = grid.numel() - 1
    return grid[n - index - skip], grid[n - index]


def x0_prediction(velocity: Velocity, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) = x_t − t·v(x_t, t)."""
    return x - t.view(-1, *([1] * (x.dim() - 1))) * velocity(x, t)


def teacher_step(velocity: Velocity, x: torch.Tensor, t_from: torch.Tensor,
                 t_to: torch.Tensor) -> torch.Tensor:
    """One Euler step of the (guided) teacher's ODE from t_{n+k} to t_n (Eq. 2)."""
    return x + (t_to - t_from).view(-1, *([1] * (x.dim() - 1))) * velocity(x, t_from)


def huber(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """(B,) pseudo-Huber distance per sample, the mean over elements of √((x − y)² + c²) − c
    (LCM's form): quadratic for differences well below c, linear above, so a few far-off values
    do not dominate the gradient."""
    sq = (x.float() - y.float()) ** 2
    err = sq / (torch.sqrt(sq + c * c) + c)  # = √(sq + c²) − c, without the cancellation
    return err.flatten(1).mean(1)


def consistency_loss(student: Velocity, target: Velocity, teacher: Velocity,
                     x_from: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
                     c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent consistency distillation (Eq. 3): the student's x0 prediction at x_from (a clip
    noised to t_{n+k}) against the target network's at the teacher's estimate of t_n. Returns
    (per-sample loss, the student's x0 prediction)."""
    with torch.no_grad():
        x_to = teacher_step(teacher, x_from, t_from, t_to)
        aim = x0_prediction(target, x_to, t_to)
    pred = x0_prediction(student, x_from, t_from)
    return huber(pred, aim, c), pred


def progressive_noise_bound(iteration: int, start: float, end: float, iterations: int) -> float:
    """The upper bound of the discriminator's noise level after `iteration` discriminator
    updates (Eq. 6): from `start` to `end` linearly over `iterations`, then `end`. Early on the
    discriminator sees nearly clean inputs and learns slowly enough for the generator to keep
    up; 0 iterations: always `end` (switched off)."""
    if iterations <= 0:
        return end
    return start + (end - start) * min(1.0, iteration / iterations)


def motion_loss(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Squared error of frame-to-frame differences (Eqs. 7–8) of latents (B, C, F, h, w): the
    direction the head moves, which the adversarial loss leaves free."""
    if x.shape[2] < 2:
        return x.new_zeros(())
    diff = lambda v: v[:, :, 1:] - v[:, :, :-1]  # noqa: E731
    return ((diff(x.float()) - diff(real.float())) ** 2).mean()
