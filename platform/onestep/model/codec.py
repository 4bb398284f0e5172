"""Latent codecs between pixel video and the DiT.

`SpaceToDepth` is lossless and has no weights: it folds f×f pixel blocks into channels, which gives
the DiT the same token geometry a VAE latent would (fewer, fatter positions) at the tiny size.
Wan2.1's causal VAE (`onestep.model.wan_vae`) has the same interface and also compresses time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SpaceToDepth(torch.nn.Module):
    temporal_factor = 1  # one latent frame per video frame

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

    def latent_frames(self, frames: int) -> int:
        return frames

    def video_frames(self, latent_frames: int) -> int:
        return latent_frames

    def stream(self) -> SpaceToDepth:
        """Frames decode independently: pushing pieces is decoding them."""
        return self

    def push(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decode(latent)
