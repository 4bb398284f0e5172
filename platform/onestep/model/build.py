"""Build the networks a config describes."""

from __future__ import annotations

import functools

import torch
from torch import nn

from onestep.audio_features import feature_dim
from onestep.config import Config
from onestep.model.codec import SpaceToDepth
from onestep.model.dit import VideoDiT
from onestep.model.wan import MASK_CHANNELS, WanArch, WanDiT
from onestep.model.wan_vae import WanVAECodec


def build_codec(cfg: Config) -> SpaceToDepth | WanVAECodec:
    if cfg.codec.kind == "wan_vae":
        return _wan_vae(cfg.codec.pretrained, cfg.run.s3_endpoint_url)
    return SpaceToDepth(cfg.codec.factor)


@functools.lru_cache(maxsize=2)
def _wan_vae(uri: str, endpoint_url: str) -> WanVAECodec:
    """Loaded once per process (stages, the validator and a Serve replica all ask for it), on
    the CPU even inside a meta-device block (a frozen codec holds real weights)."""
    from onestep.pretrained import load_wan_vae

    with torch.device("cpu"):
        return load_wan_vae(uri, endpoint_url)


def codec_fingerprint(cfg: Config) -> str:
    """Identifies what the codec computes: latent shards record it, and training refuses
    latents of another codec."""
    if cfg.codec.kind == "wan_vae":
        from onestep.pretrained import vae_fingerprint

        return f"wan_vae/{vae_fingerprint(cfg.codec.pretrained, cfg.run.s3_endpoint_url)}"
    return f"space_to_depth/factor={cfg.codec.factor}"


def latent_channels(cfg: Config) -> int:
    """The codec's latent channels, without loading its weights."""
    if cfg.codec.kind == "wan_vae":
        from onestep.pretrained import read_vae_config

        return read_vae_config(cfg.codec.pretrained, cfg.run.s3_endpoint_url)["z_dim"]
    return SpaceToDepth(cfg.codec.factor).latent_channels


def audio_arguments(cfg: Config) -> dict:
    """The audio branch's shape, shared by both kinds of network."""
    m = cfg.model
    per_video_frame = cfg.audio.feature_rate // cfg.synth.fps
    return dict(audio_feature_dim=feature_dim(cfg.audio),
                audio_per_frame=per_video_frame * cfg.codec.temporal_factor,
                audio_context=m.audio_context, audio_tokens=m.audio_tokens,
                audio_dim=m.audio_dim)


def wan_arch(cfg: Config, latent_channels: int) -> WanArch:
    """The Wan architecture of `cfg.model`, in image-to-video layout."""
    m = cfg.model
    return WanArch(patch_size=tuple(m.patch), num_attention_heads=m.heads,
                   attention_head_dim=m.dim // m.heads,
                   in_channels=2 * latent_channels + MASK_CHANNELS, out_channels=latent_channels,
                   text_dim=m.text_dim, ffn_dim=m.ffn_dim or int(m.dim * m.mlp_ratio),
                   num_layers=m.depth, image_dim=m.image_dim or None,
                   added_kv_proj_dim=m.dim if m.image_dim else None)


def build_model(cfg: Config) -> VideoDiT | WanDiT:
    m, channels = cfg.model, latent_channels(cfg)
    if m.kind == "wan" and m.image_encoder and not m.image_dim:
        raise ValueError(f"model.image_encoder={m.image_encoder!r} gives CLIP tokens, but this "
                         "Wan network has no image attention (model.image_dim is 0): use an I2V "
                         "checkpoint, or drop model.image_encoder")
    if m.kind == "wan":
        return WanDiT(wan_arch(cfg, channels), prompt_tokens=m.prompt_tokens,
                      guidance_input=m.guidance_input, **audio_arguments(cfg))
    return VideoDiT(latent_channels=channels, dim=m.dim, depth=m.depth, heads=m.heads,
                    mlp_ratio=m.mlp_ratio, patch=tuple(m.patch), guidance_input=m.guidance_input,
                    **audio_arguments(cfg))


def count_parameters(module: nn.Module) -> int:
    """Parameter count; under ZeRO-3 a parameter's full size is `ds_numel`, not `numel()`."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
