"""Build the networks a config describes."""

from __future__ import annotations

from torch import nn

from onestep.audio_features import feature_dim
from onestep.config import Config
from onestep.model.codec import build_codec as _build_codec
from onestep.model.dit import VideoDiT
from onestep.model.wan import MASK_CHANNELS, WanArch, WanDiT


def build_codec(cfg: Config):
    return _build_codec(cfg.codec.kind, cfg.codec.factor)


def audio_arguments(cfg: Config) -> dict:
    """The audio branch's shape, shared by both kinds of network."""
    m = cfg.model
    return dict(audio_feature_dim=feature_dim(cfg.audio),
                audio_per_frame=cfg.audio.feature_rate // cfg.synth.fps,
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
    m, channels = cfg.model, build_codec(cfg).latent_channels
    if m.kind == "wan":
        return WanDiT(wan_arch(cfg, channels), prompt_tokens=m.prompt_tokens,
                      **audio_arguments(cfg))
    return VideoDiT(latent_channels=channels, dim=m.dim, depth=m.depth, heads=m.heads,
                    mlp_ratio=m.mlp_ratio, patch=tuple(m.patch), **audio_arguments(cfg))


def count_parameters(module: nn.Module) -> int:
    """Parameter count; under ZeRO-3 a parameter's full size is `ds_numel`, not `numel()`."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
