"""Pixels + audio features → the latent `Conditions` a denoising step sees.

Training batches and generation chunks go through the same function, so the model is fed at
inference exactly as it was trained (motion frames: the first M frames of a chunk are given).
Everything here counts *latent* frames; a causal codec (the Wan VAE) has fewer of them than the
video has frames, and `align_audio` gives each latent frame the audio of the video frames it
encodes.
"""

from __future__ import annotations

import torch

from onestep.model.dit import Conditions


def encode_reference(codec, ref: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels → (B, C, h, w) latent (a causal codec encodes one frame alone)."""
    return codec.encode(ref[:, :, None])[:, :, 0]


def align_audio(features: torch.Tensor, frames: int, temporal_factor: int) -> torch.Tensor:
    """(B, F·r, D) features of F = 1 + tf·k video frames → (B, (1 + k)·tf·r, D): tf·r per
    latent frame. Latent frame j ≥ 1 encodes video frames tf·j − tf + 1 … tf·j, the first one
    frame 0 alone; its audio is frame 0's repeated, so every latent frame hears the same span."""
    if temporal_factor == 1:
        return features
    r = features.shape[1] // frames
    return torch.cat([features[:, :r].repeat(1, temporal_factor - 1, 1), features], dim=1)


def make_conditions(ref_latent: torch.Tensor, audio: torch.Tensor, latent_frames: int,
                    motion_latent_frames: int, motion_latent: torch.Tensor | None = None,
                    use_motion: torch.Tensor | None = None,
                    image: torch.Tensor | None = None) -> Conditions:
    """Conditions for a chunk of `latent_frames` latent frames.

    audio: per latent frame (`align_audio`); motion_latent: (B, C, F', h, w) latents whose first
    `motion_latent_frames` frames are the context (the previous chunk's tail); use_motion: (B,)
    which samples get that context; image: (B, tokens, D) CLIP tokens of the reference (Wan I2V).
    """
    b, c, h, w = ref_latent.shape
    like = dict(dtype=ref_latent.dtype, device=ref_latent.device)
    mask = torch.zeros(b, 1, latent_frames, h, w, **like)
    motion = torch.zeros(b, c, latent_frames, h, w, **like)
    if motion_latent is not None and motion_latent_frames > 0:
        on = (torch.ones(b, dtype=torch.bool, device=ref_latent.device) if use_motion is None
              else use_motion.to(ref_latent.device)).to(ref_latent.dtype)[:, None, None, None, None]
        mask[:, :, :motion_latent_frames] = 1.0
        mask = mask * on
        motion = motion_latent * mask
    return Conditions(ref=ref_latent, audio=audio, motion=motion, motion_mask=mask, image=image)
