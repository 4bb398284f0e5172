"""Guidance scales as a network input (FADA §3.3): a student that has learnt the teacher's
multi-CFG velocity at any (audio, reference) scale samples guided with one evaluation per step.

Eq. 9 is a linear combination of three velocities, v(∅,∅), v(ref,∅) and v(ref,audio), with
coefficients (1 − s_ref), (s_ref − s_audio) and s_audio. The `tokens` form gives the student
three learnable tokens and combines them with exactly those coefficients, so what the scales do
to its context mirrors what they do to the teacher's outputs. `layer` embeds the two scales with
an MLP instead; `scalar` adds that embedding to the timestep embedding (the ω-conditioning of
guided distillation). The cross-attention reading the context starts at zero output, so a
student initialised from its teacher starts as the teacher's conditional network.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("scalar", "layer", "tokens")
FREQUENCIES = 64  # sinusoidal features per scale


def eq9_coefficients(guidance: torch.Tensor) -> torch.Tensor:
    """(B, 2) [audio_scale, ref_scale] → (B, 3) weights of v(∅,∅), v(ref,∅), v(ref,audio)."""
    audio, ref = guidance.unbind(-1)
    return torch.stack([1 - ref, ref - audio, audio], dim=-1)


def scale_features(guidance: torch.Tensor) -> torch.Tensor:
    """(B, 2) → (B, 4·FREQUENCIES) sinusoids of each scale, periods from ~0.06 to ~60."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(FREQUENCIES, device=guidance.device)
                      / FREQUENCIES) * 100
    args = guidance.float()[..., None] * freqs  # (B, 2, F)
    return torch.cat([args.cos(), args.sin()], dim=-1).flatten(1)


class GuidanceEmbedding(nn.Module):
    """The scales (B, 2) → a timestep-embedding offset (B, D) for `scalar`, or context tokens
    (B, T, D) for the blocks' guidance cross-attention (`layer`: 1 token, `tokens`: 3)."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"model.guidance_input: expected one of {', '.join(KINDS)}, got "
                             f"{kind!r}")
        self.kind = kind
        if kind == "tokens":
            self.tokens = nn.Parameter(torch.empty(3, dim))
        else:
            self.mlp = nn.Sequential(nn.Linear(4 * FREQUENCIES, dim), nn.SiLU(),
                                     nn.Linear(dim, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.kind == "tokens":
            nn.init.normal_(self.tokens, std=0.02)
        elif self.kind == "scalar":  # an offset of zero leaves the timestep embedding as it was
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    @property
    def attends(self) -> bool:
        """Whether the blocks read this embedding through cross-attention."""
        return self.kind != "scalar"

    def forward(self, guidance: torch.Tensor) -> torch.Tensor:
        if self.kind == "tokens":
            return eq9_coefficients(guidance)[..., None] * self.tokens.to(guidance.dtype)
        out = self.mlp(scale_features(guidance).to(self.mlp[0].weight.dtype))
        return out if self.kind == "scalar" else out[:, None]


def guidance_context(embedding: GuidanceEmbedding | None, guidance: torch.Tensor | None,
                     t_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A network's guidance input → (its timestep embedding, offset by `scalar`; the context
    tokens its blocks' guidance cross-attention reads, or None)."""
    if embedding is None:
        return t_emb, None
    if guidance is None:
        raise ValueError(f"this network takes guidance scales as an input "
                         f"(model.guidance_input={embedding.kind}): sample it with audio and "
                         "reference scales")
    out = embedding(guidance.to(t_emb.dtype))
    return (t_emb, out) if embedding.attends else (t_emb + out, None)
