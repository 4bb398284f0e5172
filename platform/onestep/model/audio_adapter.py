"""Audio conditioning for the DiT: temporal context window (TurboTalk Eq. 1) and adapter (Eq. 2)."""

from __future__ import annotations

import torch
from torch import nn


def audio_context_window(features: torch.Tensor, k: int) -> torch.Tensor:
    """TurboTalk Eq. 1: each position sees its ±k neighbours (edges replicate).

    (B, T, D) → (B, T, (2k+1)·D). Facial motion depends on past and future speech, so a frame's
    audio token must see a little of both.
    """
    if k == 0:
        return features
    padded = torch.cat([features[:, :1].expand(-1, k, -1), features,
                        features[:, -1:].expand(-1, k, -1)], dim=1)
    windows = padded.unfold(1, 2 * k + 1, 1)  # (B, T, D, 2k+1)
    return windows.transpose(2, 3).flatten(2)


class AudioAdapter(nn.Module):
    """TurboTalk Eq. 2: compress the (longer) audio sequence to one group of tokens per latent frame.

    Audio features arrive at `per_frame` vectors per latent frame; they are concatenated
    (downsampling along time) and encoded by an MLP into `tokens` tokens of width `dim`.
    """

    def __init__(self, feature_dim: int, context: int, per_frame: int, hidden: int, dim: int,
                 tokens: int):
        super().__init__()
        self.context, self.per_frame, self.tokens, self.dim = context, per_frame, tokens, dim
        self.mlp = nn.Sequential(
            nn.Linear(per_frame * (2 * context + 1) * feature_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, tokens * dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F·per_frame, D_a) → (B, F, tokens, dim)."""
        b, t, _ = features.shape
        if t % self.per_frame:
            raise ValueError(f"audio length {t} is not a multiple of {self.per_frame} per frame")
        windows = audio_context_window(features, self.context)
        grouped = windows.reshape(b, t // self.per_frame, -1)
        return self.norm(self.mlp(grouped).reshape(b, -1, self.tokens, self.dim))
