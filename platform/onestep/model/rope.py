"""3D rotary position embedding over (frame, row, column), split across the head dimension as Wan."""

from __future__ import annotations

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles (N, head_dim/2) for the N = f·h·w tokens of a grid, frame-major order."""
    parts = []
    for size, dim, axis in zip(grid, axis_dims(head_dim), range(3)):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        pos = torch.arange(size, dtype=torch.float64)
        ang = torch.outer(pos, freqs)  # (size, dim/2)
        shape = [1, 1, 1, dim // 2]
        shape[axis] = size
        parts.append(ang.reshape(shape).expand(*grid, dim // 2))
    return torch.cat(parts, dim=-1).reshape(-1, head_dim // 2).float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, d) by angles (N, d/2): pairs (i, i + d/2) rotate together."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def apply_rope_interleaved(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """As `apply_rope`, with Wan's pairing: channels (2i, 2i + 1) rotate together."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)
