"""Rectified flow: the one noise process and sampler shared by training, evaluation and serving.

Convention: x_t = (1 − t)·x_0 + t·ε with t = 1 pure noise; the network predicts the velocity
v = ε − x_0, and sampling integrates dx/dt = v from t = 1 down to t = 0 with Euler steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from onestep import draws
from onestep.config import FlowConfig
from onestep.model.dit import Conditions

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t (B,)) → v


def cfg_branches(audio_scale: float, ref_scale: float) -> list[tuple[bool, bool]]:
    """(drop_audio, drop_ref) of each model evaluation a guided step needs (FADA Eq. 9).

    Terms whose scale is 1 cancel, so a step costs 1, 2 or 3 evaluations.
    """
    out = [(False, False)]
    if audio_scale != 1.0 or ref_scale != 1.0:
        out.append((True, False))
    if ref_scale != 1.0:
        out.append((True, True))
    return out


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3/Wan timestep shift: shift > 1 spends more of the schedule at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def sample_training_timesteps(batch: int, cfg: FlowConfig, rng: torch.Generator | None,
                              like: torch.Tensor) -> torch.Tensor:
    """(batch,) training times on `like`'s device (drawn as onestep.draws says)."""
    u = torch.randn(batch, generator=rng)
    t = torch.sigmoid(u) if cfg.logit_normal else torch.rand(batch, generator=rng)
    return shift_timesteps(t, cfg.timestep_shift).to(like.device)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise


def condition_dropout(batch: int, cfg: FlowConfig, rng: torch.Generator | None,
                      like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (drop_audio, drop_ref) on `like`'s device: teaches v(ref, ∅) and v(∅, ∅)
    for multi-CFG."""
    u = draws.uniform(batch, rng, like)
    drop_all = u < cfg.all_drop
    drop_audio = u < cfg.all_drop + cfg.audio_drop
    return drop_audio, drop_all


def region_weights(height: int, width: int, region: list[float], weight: float,
                   device=None) -> torch.Tensor:
    """(height, width) loss weights: `weight` where a position's centre lies inside `region`
    (top, bottom, left, right as fractions of the frame), 1 elsewhere. Latent grids map linearly
    onto the frame, so the same fractions hold at every resolution and codec."""
    top, bottom, left, right = region
    ys = (torch.arange(height, device=device) + 0.5) / height
    xs = (torch.arange(width, device=device) + 0.5) / width
    inside = ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None]
    return 1 + (weight - 1) * inside.float()


def weighted_mse(pred: torch.Tensor, target: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE; with (h, w) `weights`, the weighted mean (same units as the MSE)."""
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    err = (pred.float() - target.float()) ** 2
    w = weights.expand_as(err)
    return (err * w).sum() / w.sum()


def mouth_weights(x: torch.Tensor, cfg: FlowConfig) -> torch.Tensor | None:
    """The (h, w) weights of `cfg`'s mouth region for latents shaped like `x`; None when
    unweighted."""
    if cfg.mouth_weight == 1.0:
        return None
    return region_weights(*x.shape[-2:], cfg.mouth_region, cfg.mouth_weight, x.device)


def velocity_loss(model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  cond: Conditions, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) MSE between the predicted and the true velocity ε − x0 at x_t."""
    return weighted_mse(model(add_noise(x0, noise, t), t, cond), noise - x0, weights)


def flow_matching_loss(model, x0: torch.Tensor, cond: Conditions, cfg: FlowConfig,
                       rng: torch.Generator | None = None):
    """Teacher objective: (mouth-weighted) MSE between predicted and true velocity. Returns
    (loss, logs)."""
    b = x0.shape[0]
    noise = draws.normal(x0, rng)
    t = sample_training_timesteps(b, cfg, rng, x0).to(x0.dtype)
    drop_audio, drop_ref = condition_dropout(b, cfg, rng, x0)
    cond = dataclasses.replace(cond, drop_audio=drop_audio, drop_ref=drop_ref)
    loss = velocity_loss(model, x0, noise, t, cond, mouth_weights(x0, cfg))
    return loss, {"loss": loss.detach(), "t_mean": t.mean().detach()}


def sampling_timesteps(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """steps+1 times from 1 to 0, shifted."""
    return shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def window_timesteps(window_steps: list[int], device=None) -> torch.Tensor:
    """Times from 1 to 0 through len(window_steps) equal windows, `window_steps[k]` uniform
    steps inside window k. A PeRFlow student's flow is straight within each window, so a
    window's steps can be few, and where they go can differ (FADA-Fast: [2, 1, 1, 2])."""
    k = len(window_steps)
    parts = [torch.linspace(1 - i / k, 1 - (i + 1) / k, n + 1)
             for i, n in enumerate(window_steps)]
    return torch.cat([parts[0]] + [part[1:] for part in parts[1:]]).to(device)


def euler_sample(velocity: Velocity, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Integrate from timesteps[0] to timesteps[-1]. Exact when the velocity field is constant."""
    x = noise
    for t_cur, t_next in zip(timesteps[:-1], timesteps[1:]):
        t = torch.full((x.shape[0],), float(t_cur), device=x.device, dtype=x.dtype)
        x = x + (t_next - t_cur) * velocity(x, t)
    return x


@dataclass
class GuidedVelocity:
    """Multi-condition CFG, FADA Eq. 9:

        v = v(∅,∅) + s_ref·(v(ref,∅) − v(∅,∅)) + s_audio·(v(ref,audio) − v(ref,∅))

    Terms whose scale is 1 cancel and are not evaluated, so NFE per step is 1, 2 or 3; `nfe`
    counts evaluations per sample (a batched CFG forward still counts each condition). Scales
    may be (B,) tensors, one per sample (then all three terms run). A model that `takes
    guidance` (FADA §3.3) has learnt the guided velocity: it gets the scales as an input and
    runs once.
    """

    model: torch.nn.Module
    cond: Conditions
    audio_scale: float | torch.Tensor = 1.0
    ref_scale: float | torch.Tensor = 1.0
    takes_guidance: bool = False
    nfe: int = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.takes_guidance:
            scales = [torch.as_tensor(s, dtype=x.dtype, device=x.device).expand(x.shape[0])
                      for s in (self.audio_scale, self.ref_scale)]
            self.nfe += 1
            return self.model(x, t, dataclasses.replace(self.cond,
                                                        guidance=torch.stack(scales, -1)))
        per_sample = torch.is_tensor(self.audio_scale) or torch.is_tensor(self.ref_scale)
        branches = (cfg_branches(2.0, 2.0) if per_sample
                    else cfg_branches(self.audio_scale, self.ref_scale))
        n = len(branches)
        cond = Conditions.cat([self.cond.repeat(1, a, r) for a, r in branches])
        v = self.model(x.repeat(n, *([1] * (x.dim() - 1))), t.repeat(n), cond).chunk(n)
        self.nfe += n
        if n == 1:
            return v[0]
        v_full, v_ref = v[0], v[1]
        v_none = v[2] if n == 3 else v_ref
        audio, ref = (torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(
            -1, *([1] * (x.dim() - 1))) for s in (self.audio_scale, self.ref_scale))
        return v_none + ref * (v_ref - v_none) + audio * (v_full - v_ref)
