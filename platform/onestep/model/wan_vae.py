"""Wan2.1's causal video VAE as a onestep codec (`codec.kind: wan_vae`).

The VAE compresses space 8× and time 4×, causally: a video of 1 + 4k frames becomes 1 + k latent
frames, the first encoding the first frame alone and each later one 4 frames given all earlier
ones. Latents are normalised per channel with the VAE's own statistics (`latents_mean`,
`latents_std` of its config), as Wan's pipelines do, so the DiT sees unit-scale inputs.

Decoding is the floor of one-step latency, and a long video is generated chunk by chunk:
`StreamDecoder` decodes latent frames as they arrive, carrying the decoder's causal cache from one
chunk to the next, so each chunk costs only its new frames and the video is exactly what decoding
the whole latent sequence at once gives (tested). It drives diffusers' decoder one latent frame at
a time, as `AutoencoderKLWan._decode` does internally.
"""

from __future__ import annotations

import torch
from torch import nn

from onestep.config import WAN_VAE_TEMPORAL


class WanVAECodec(nn.Module):
    temporal_factor = WAN_VAE_TEMPORAL

    def __init__(self, vae: nn.Module):
        """`vae`: a diffusers `AutoencoderKLWan` (onestep.pretrained loads one)."""
        super().__init__()
        config = vae.config
        if config.scale_factor_temporal != self.temporal_factor:
            raise ValueError(f"a Wan VAE of temporal factor {config.scale_factor_temporal}: "
                             f"onestep expects Wan2.1's {self.temporal_factor}")
        if config.patch_size is not None:
            raise ValueError("a patchified Wan VAE (Wan2.2) is not supported: onestep uses "
                             "Wan2.1's")
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = config.z_dim
        self.factor = config.scale_factor_spatial
        shape = (1, -1, 1, 1, 1)
        self.register_buffer("mean", torch.tensor(config.latents_mean).view(shape), False)
        self.register_buffer("std", torch.tensor(config.latents_std).view(shape), False)

    def latent_frames(self, frames: int) -> int:
        if (frames - 1) % self.temporal_factor:
            raise ValueError(f"{frames} frames: the Wan VAE encodes 1 + 4k frames")
        return 1 + (frames - 1) // self.temporal_factor

    def video_frames(self, latent_frames: int) -> int:
        return 1 + self.temporal_factor * (latent_frames - 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1 + 4k, H, W) in [-1, 1] → (B, C, 1 + k, H/8, W/8), normalised. The
        posterior's mode: training data and conditions are deterministic. Computed where the
        VAE's weights are (a process loads it once, for all its users), returned where `video`
        is."""
        self.latent_frames(video.shape[2])
        moments = self.vae.encode(video.to(self.mean.device, self.mean.dtype)).latent_dist.mode()
        return ((moments - self.mean) / self.std).to(video.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, n, h, w) normalised → (B, 3, 1 + 4(n − 1), 8h, 8w) in [-1, 1]."""
        return self.vae.decode(latent * self.std + self.mean).sample

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Decodes one video's latent frames in order, in as many pieces as they come."""

    def __init__(self, codec: WanVAECodec):
        vae = codec.vae
        self.codec, self.vae = codec, vae
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        # One slot per causal convolution: the frames it needs from the previous piece.
        self.cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.decoded = 0  # latent frames so far

    @torch.no_grad()
    def push(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, n, h, w) the next n latent frames → their video frames (1 + 4(n − 1) for the
        first piece, 4n after)."""
        x = self.vae.post_quant_conv(latent * self.codec.std + self.codec.mean)
        out = []
        for i in range(x.shape[2]):
            out.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=self.cache, feat_idx=[0],
                                        first_chunk=self.decoded == 0))
            self.decoded += 1
        return torch.cat(out, dim=2).clamp(-1, 1)
