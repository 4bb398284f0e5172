"""Training's random draws: made by a CPU generator, placed on the device of the data they go with.

Every rank's randomness is a CPU `torch.Generator` (the loop's per-rank `rng`, a stage's
`shared_rng`), whatever the device the networks train on. A config then draws the same noise and
timesteps on a CPU and on a GPU, and `shared_rng`'s draws agree across ranks by construction. A
CUDA generator would tie both to the device. The copy to the device is one small transfer per
draw, beside a training step's work.
"""

from __future__ import annotations

import torch


def normal(like: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like `like`, on its device and in its dtype."""
    return torch.randn(like.shape, generator=rng).to(like.device, like.dtype)


def uniform(n: int, rng: torch.Generator | None, like: torch.Tensor, low: float = 0.0,
            high: float = 1.0) -> torch.Tensor:
    """(n,) draws from U[low, high) on `like`'s device, in fp32 (times, scales, probabilities)."""
    return (low + (high - low) * torch.rand(n, generator=rng)).to(like.device)


def integers(high: int, n: int, rng: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """(n,) integers from [0, high) on `like`'s device."""
    return torch.randint(high, (n,), generator=rng).to(like.device)
