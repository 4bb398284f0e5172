"""A Ray Data training batch → (clean latent x0, conditions)."""

from __future__ import annotations

import torch

from onestep.conditioning import align_audio, encode_reference, make_conditions
from onestep.config import Config
from onestep.model.dit import Conditions


def prepare_batch(batch: dict, codec, cfg: Config) -> tuple[torch.Tensor, Conditions]:
    """`batch`: video (B,3,F,H,W), ref (B,3,H,W), audio (B,F·r,D), use_motion (B,)."""
    x0 = codec.encode(batch["video"].float())
    motion = cfg.data.motion_frames
    cond = make_conditions(
        encode_reference(codec, batch["ref"].float()),
        align_audio(batch["audio"].float(), cfg.data.frames, codec.temporal_factor),
        x0.shape[2], codec.latent_frames(motion) if motion else 0, motion_latent=x0,
        use_motion=batch["use_motion"])
    return x0, cond
