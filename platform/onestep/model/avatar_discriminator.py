"""OSA-LCM's avatar discriminator (§4.1, Eq. 4): the frozen teacher's features at several blocks,
each judged by a trainable head of 3D convolutions that also sees the audio, the heads' logits
averaged.

The teacher already tells a synced, sharp video from a blurry one well enough to generate the
former, so its features are the discriminator's eyes; only the heads learn. 3D convolutions over
(frames, height, width) judge how the video moves, not only single frames, and the per-frame
audio they see next to the picture lets them judge whether the mouth follows it. A head's last
layer starts at zero, so adversarial training starts from a constant discriminator.
"""

from __future__ import annotations

import torch
from torch import nn

from onestep.model.dit import Conditions, VideoDiT
from onestep.model.wan import WanDiT


class _Head(nn.Module):
    def __init__(self, dim: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.audio = nn.Linear(dim, width)  # each frame's audio tokens, pooled, as channels
        self.conv = nn.Sequential(
            nn.Conv3d(dim + width, width, 3, padding=1), nn.SiLU(),
            nn.Conv3d(width, width, 3, padding=1), nn.SiLU())
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor, audio: torch.Tensor,
                grid: tuple[int, int, int]) -> torch.Tensor:
        """tokens (B, N, D) on a grid (F', h', w'), audio (B, F', T, D) → (B,) logits."""
        (f, h, w), b = grid, tokens.shape[0]
        picture = self.norm(tokens).transpose(1, 2).reshape(b, -1, f, h, w)
        sound = self.audio(audio.mean(2)).transpose(1, 2)[..., None, None].expand(-1, -1, f, h, w)
        return self.out(self.conv(torch.cat([picture, sound], 1)).mean((2, 3, 4))).squeeze(-1)


class AvatarDiscriminator(nn.Module):
    def __init__(self, trunk: VideoDiT | WanDiT, layers: tuple[int, ...], width: int = 64):
        super().__init__()
        depth = len(trunk.blocks)
        if not layers or not all(0 <= i < depth for i in layers):
            raise ValueError(f"osa_lcm.disc_layers: expected block indices in [0, {depth}), "
                             f"got {list(layers)}")
        for name in trunk.head_modules():  # the velocity head is not part of it
            setattr(trunk, name, None)
        trunk.requires_grad_(False)  # the teacher's features: only the heads learn
        self.trunk, self.layers = trunk, tuple(sorted(layers))
        self.heads = nn.ModuleList(_Head(trunk.dim, width) for _ in self.layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """One logit per sample for x (B, C, F, h, w) noised to t."""
        kept, audio, grid = self.trunk.block_outputs(x, t, cond, self.layers)
        return torch.stack([head(tokens, audio, grid)
                            for head, tokens in zip(self.heads, kept)]).mean(0)
