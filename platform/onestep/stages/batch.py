"""A Ray Data training batch → (clean latent x0, conditions)."""

from __future__ import annotations

import torch

from onestep.conditioning import make_conditions
from onestep.config import Config
from onestep.model.dit import Conditions


def prepare_batch(batch: dict, codec, cfg: Config) -> tuple[torch.Tensor, Conditions]:
    """`batch`: video (B,3,F,H,W), ref (B,3,H,W), audio (B,F·r,D), use_motion (B,)."""
    x0 = codec.encode(batch["video"].float())
    cond = make_conditions(codec, batch["ref"].float(), batch["audio"].float(), cfg.data.frames,
                           cfg.data.motion_frames, motion_latent=x0,
                           use_motion=batch["use_motion"])
    return x0, cond
