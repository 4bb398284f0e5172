"""A few-step student's sampling trajectory, as training sees it.

The student is an ordinary velocity network sampled with Euler steps (onestep.flow), so a
distilled checkpoint runs through the same generator and Serve code as the teacher, only with
fewer steps and no CFG. An Euler step to t = 0 returns the x0 prediction x − t·v, which is why
the final step's output is the sample.
"""

from __future__ import annotations

import torch

from onestep.flow import sampling_timesteps
from onestep.model.dit import Conditions


def velocity(model, x: torch.Tensor, t: float, cond: Conditions) -> torch.Tensor:
    return model(x, torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype), cond)


def predict_x0(model, x: torch.Tensor, t: float, cond: Conditions) -> torch.Tensor:
    """x0 = x_t − t·v(x_t, t): where an Euler step from t straight to 0 lands."""
    return x - float(t) * velocity(model, x, t, cond)


@torch.no_grad()
def denoise_until(model, noise: torch.Tensor, timesteps: torch.Tensor, cond: Conditions,
                  index: int) -> torch.Tensor:
    """x at timesteps[index], reached by Euler steps from noise at timesteps[0], without grad.

    The steps before the trained one are fixed transformations (TurboTalk Eq. 4–5); keeping them
    out of the graph also keeps their activations out of memory.
    """
    x = noise
    for i in range(index):
        t_cur, t_next = float(timesteps[i]), float(timesteps[i + 1])
        x = x + (t_next - t_cur) * velocity(model, x, t_cur, cond)
    return x


def final_step_sample(model, noise: torch.Tensor, timesteps: torch.Tensor,
                      cond: Conditions) -> torch.Tensor:
    """The whole trajectory from noise to a sample; gradients reach only the final step."""
    last = len(timesteps) - 2
    x = denoise_until(model, noise, timesteps, cond, last)
    return predict_x0(model, x, float(timesteps[last]), cond)


def dynamic_schedule(steps: int, previous_steps: int, progress: float, u: float,
                     shift: float = 1.0) -> torch.Tensor:
    """Timesteps for a phase that goes from `previous_steps` to `steps` (TurboTalk §3.3).

    The trained (final) step starts where the previous phase's final step started and moves to
    the target schedule's over the warm-up (`progress` 0 → 1); in between, its start is drawn
    at random around the linear path (u ~ U[0, 1)), so the student sees a spread of gaps rather
    than one abrupt jump. Every other timestep is the target's. With one target step, the input
    of the final step is first brought from noise to its start by a fixed (no-grad) Euler step.
    """
    target = sampling_timesteps(steps, shift)
    if progress >= 1.0:
        return target
    progress = max(0.0, progress)
    prev_last = float(sampling_timesteps(previous_steps, shift)[-2])
    target_last = float(target[-2])
    spread = min(progress, 1.0 - progress)
    a = min(1.0, max(0.0, progress + spread * (2.0 * u - 1.0)))
    starts = target[:-1].clone()
    starts[-1] = prev_last + a * (target_last - prev_last)
    if float(starts[0]) < 1.0:  # steps == 1: the trajectory still begins at pure noise
        starts = torch.cat([torch.ones(1), starts])
    return torch.cat([starts, torch.zeros(1)])
