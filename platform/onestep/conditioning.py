"""Pixels + audio features → the latent `Conditions` a denoising step sees.

Training batches and generation chunks go through the same function, so the model is fed at
inference exactly as it was trained (motion frames: the first M frames of a chunk are given).
"""

from __future__ import annotations

import torch

from onestep.model.dit import Conditions


def encode_reference(codec, ref: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels → (B, C, h, w) latent."""
    return codec.encode(ref[:, :, None])[:, :, 0]


def make_conditions(codec, ref: torch.Tensor, audio: torch.Tensor, frames: int,
                    motion_frames: int, motion_latent: torch.Tensor | None = None,
                    use_motion: torch.Tensor | None = None) -> Conditions:
    """Build conditions for a chunk of `frames` frames.

    motion_latent: (B, C, F, h, w) latents whose first `motion_frames` frames are the context
    (the previous chunk's tail); use_motion: (B,) which samples get that context.
    """
    ref_lat = encode_reference(codec, ref)
    b, c, h, w = ref_lat.shape
    mask = torch.zeros(b, 1, frames, h, w, dtype=ref_lat.dtype, device=ref_lat.device)
    motion = torch.zeros(b, c, frames, h, w, dtype=ref_lat.dtype, device=ref_lat.device)
    if motion_latent is not None and motion_frames > 0:
        on = (torch.ones(b, dtype=torch.bool, device=ref_lat.device) if use_motion is None
              else use_motion.to(ref_lat.device)).to(ref_lat.dtype)[:, None, None, None, None]
        mask[:, :, :motion_frames] = 1.0
        mask = mask * on
        motion = motion_latent * mask
    return Conditions(ref=ref_lat, audio=audio, motion=motion, motion_mask=mask)
