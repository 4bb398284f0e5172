"""Distillation losses: the DMD gradient (TurboTalk Eq. 3, DMD2) and the adversarial objectives
(TurboTalk Eq. 6–8, 10–11), each written so that its gradient is what the papers define."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from onestep import draws


def dmd_loss(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """Reverse-KL distribution matching. Its gradient w.r.t. the student sample x0 is

        (x0_fake − x0_real) / mean|x0 − x0_real|        (per sample, DMD2's normalisation)

    divided by x0.numel(): the difference of the fake and real scores expressed as x0
    predictions. It pushes the sample towards what the teacher denoises it to and away from what
    the critic (which models the student's own distribution) does; it vanishes when the two
    agree. The normaliser makes the step size independent of how far off the student is.
    """
    with torch.no_grad():
        dims = tuple(range(1, x0.dim()))
        scale = (x0 - x0_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
        target = x0 - (x0_fake - x0_real) / scale
    return 0.5 * F.mse_loss(x0.float(), target.float())


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Loss of the discriminator given its logits on paired real and generated samples."""
    if kind == "r3gan":  # relativistic: real should score higher than its paired fake
        return F.softplus(fake - real).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "gan":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    raise ValueError(f"adversarial.loss: unknown loss {kind!r}; expected r3gan, hinge or gan")


def generator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Loss of the generator. For r3gan it is the discriminator's loss with the roles swapped."""
    if kind == "r3gan":
        return F.softplus(real - fake).mean()
    if kind == "hinge":
        return -fake.mean()
    if kind == "gan":  # non-saturating
        return F.softplus(-fake).mean()
    raise ValueError(f"adversarial.loss: unknown loss {kind!r}; expected r3gan, hinge or gan")


def perturbation_penalty(disc: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                         logits: torch.Tensor, sigma: float,
                         rng: torch.Generator | None = None) -> torch.Tensor:
    """R1/R2 without double backprop (TurboTalk Eq. 7): E‖D(x + σε) − D(x)‖² / σ².

    For small σ this is E‖∇D·ε‖² = ‖∇D‖², the gradient penalty R1 (on real x) or R2 (on
    generated x) estimates, at the cost of one forward pass instead of a second-order backward.
    `logits` are D(x), already computed for the adversarial loss.
    """
    return ((disc(x + sigma * draws.normal(x, rng)) - logits) ** 2).mean() / sigma ** 2
