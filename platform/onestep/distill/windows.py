"""FADA's objectives (§3.1–3.2): PeRFlow's piecewise-straight flow and the per-sample weight of
the ground-truth loss. Pure functions of tensors; the stage (onestep.stages.fada) wires them.

Convention as in onestep.flow: x_t = (1 − t)·x_0 + t·ε, t = 1 pure noise, velocity ε − x_0.
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_bounds(index: torch.Tensor, windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_start, t_end) of window `index` (0: the one at pure noise) of `windows` equal ones."""
    index = index.float()
    return 1 - index / windows, 1 - (index + 1) / windows


def solve(velocity: Velocity, x: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor,
          steps: int) -> torch.Tensor:
    """Euler from per-sample times t_start to t_end (B,) in `steps` equal steps: the teacher's
    end point of a window (FADA Eq. 2)."""
    dt = (t_end - t_start) / steps
    shape = (-1, *([1] * (x.dim() - 1)))
    for i in range(steps):
        x = x + dt.view(shape) * velocity(x, t_start + i * dt)
    return x


def straight_flow(z_start: torch.Tensor, z_end: torch.Tensor, t_start: torch.Tensor,
                  t_end: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's input at t on the straight line from z_start (t_start) to z_end (t_end)
    and the line's velocity, its target (FADA Eqs. 3–4 in velocity form). With z_end the
    forward process's point of the same clip and noise, this is exactly x_t and ε − x_0."""
    shape = (-1, *([1] * (z_start.dim() - 1)))
    span = (t_start - t_end).view(shape)
    frac = (t - t_end).view(shape) / span
    return z_end + frac * (z_start - z_end), (z_start - z_end) / span


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean squared error of each sample; with (h, w) `weights`, their weighted mean."""
    err = (pred.float() - target.float()) ** 2
    dims = tuple(range(1, err.dim()))
    if weights is None:
        return err.mean(dim=dims)
    w = weights.expand_as(err)
    return (err * w).sum(dim=dims) / w.sum(dim=dims)


def gt_weight(ratio: torch.Tensor, kind: str, peak: float, rise: float, peak_ratio: float,
              dead_ratio: float) -> torch.Tensor:
    """The weight of each sample's ground-truth loss from r = L_gt / L_teacher (FADA §3.2).

    A larger r means the clip differs more from what the teacher does: up to `peak_ratio` more
    likely a valuable case outside the teacher's data (the weight rises to `peak`), beyond it
    more likely a bad clip (the weight falls linearly, to 0 at `dead_ratio`). The equation
    itself is lost from our copy of the paper; this form has its four hyper-parameters (0.25,
    0.2, 30, 100) and the shape §3.2 describes. `unlimited` keeps rising past the peak; `fixed`
    is `peak` for every sample; `off` is 0.
    """
    if kind == "off":
        return torch.zeros_like(ratio)
    if kind == "fixed":
        return torch.full_like(ratio, peak)
    rising = peak * (ratio.clamp_min(0) / peak_ratio) ** rise
    if kind == "unlimited":
        return rising
    if kind != "adaptive":
        raise ValueError(f"fada.gt_weighting: unknown {kind!r}; expected adaptive, unlimited, "
                         "fixed or off")
    falling = peak * (dead_ratio - ratio) / (dead_ratio - peak_ratio)
    return torch.where(ratio < peak_ratio, rising, falling.clamp_min(0))
