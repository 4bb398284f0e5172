"""The adversarial stage's discriminator: a DiT trunk with a new, zero-initialised head (APT).

The trunk starts as a copy of a trained video DiT, so from the first step it reads noisy latents,
the reference and the audio the way the generator does; being conditioned on the audio, it can
tell an out-of-sync mouth from a synced one. The head's last layer starts at zero, so the first
updates see a constant discriminator and adversarial training starts gently (APT, TurboTalk §4.1).
"""

from __future__ import annotations

import torch
from torch import nn

from onestep.model.dit import Conditions, VideoDiT
from onestep.model.wan import WanDiT


class Discriminator(nn.Module):
    def __init__(self, trunk: VideoDiT | WanDiT):
        super().__init__()
        # The velocity head is not part of the discriminator: unused parameters would only sit
        # in ZeRO-3's gradient buckets.
        for name in trunk.head_modules():
            setattr(trunk, name, None)
        self.trunk = trunk
        dim = trunk.dim
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(),
                                  nn.Linear(dim, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """One logit per sample: the mean of per-token logits. x (B, C, F, h, w) noised to t."""
        tokens, _, _ = self.trunk.features(x, t, cond)
        return self.head(tokens).mean(dim=(1, 2))
