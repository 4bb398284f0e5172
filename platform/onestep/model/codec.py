"""Latent codecs between pixel video and the DiT.

`SpaceToDepth` is lossless and has no weights: it folds f×f pixel blocks into channels, which gives
the DiT the same token geometry a VAE latent would (fewer, fatter positions) at the tiny size. A
learned video VAE can be added later behind the same two methods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SpaceToDepth(torch.nn.Module):
    def __init__(self, factor: int, image_channels: int = 3):
        super().__init__()
        self.factor = factor
        self.latent_channels = image_channels * factor * factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] → (B, 3f², F, H/f, W/f)."""
        b, c, n, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * n, c, h, w)
        z = F.pixel_unshuffle(frames, self.factor)
        return z.reshape(b, n, *z.shape[1:]).transpose(1, 2)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        b, c, n, h, w = latent.shape
        frames = latent.transpose(1, 2).reshape(b * n, c, h, w)
        x = F.pixel_shuffle(frames, self.factor)
        return x.reshape(b, n, *x.shape[1:]).transpose(1, 2)


def build_codec(kind: str, factor: int) -> SpaceToDepth:
    if kind != "space_to_depth":
        raise ValueError(f"codec.kind: unknown codec {kind!r}; available: space_to_depth")
    return SpaceToDepth(factor)
