"""A Ray Data training batch → (clean latent x0, conditions)."""

from __future__ import annotations

import torch

from onestep.conditioning import align_audio, encode_reference, make_conditions
from onestep.config import Config
from onestep.encoders import to_uint8
from onestep.model.dit import Conditions


def prepare_batch(batch: dict, codec, cfg: Config,
                  image_encoder=None) -> tuple[torch.Tensor, Conditions]:
    """A pixel batch — video (B,3,F,H,W), ref (B,3,H,W), audio (B,F·r,D), use_motion (B,) — is
    encoded here (with `image_encoder`, the reference's CLIP tokens too); a latent batch (latent
    shards) already holds latent (B,C,F',h,w), ref_latent (B,C,h,w), audio aligned per latent
    frame and, for Wan I2V, image (B,tokens,D)."""
    image = batch["image"].float() if "image" in batch else None
    if "latent" in batch:
        x0, ref = batch["latent"].float(), batch["ref_latent"].float()
        audio = batch["audio"].float()
    else:
        x0 = codec.encode(batch["video"].float())
        ref = encode_reference(codec, batch["ref"].float())
        audio = align_audio(batch["audio"].float(), cfg.data.frames, codec.temporal_factor)
        if image_encoder is not None:
            image = image_encoder(to_uint8(batch["ref"])).to(x0.device)
    motion = cfg.data.motion_frames
    cond = make_conditions(ref, audio, x0.shape[2], codec.latent_frames(motion) if motion else 0,
                           motion_latent=x0, use_motion=batch["use_motion"], image=image)
    return x0, cond
