"""Build the networks a config describes."""

from __future__ import annotations

from torch import nn

from onestep.audio_features import feature_dim
from onestep.config import Config
from onestep.model.codec import build_codec as _build_codec
from onestep.model.dit import VideoDiT


def build_codec(cfg: Config):
    return _build_codec(cfg.codec.kind, cfg.codec.factor)


def build_model(cfg: Config) -> VideoDiT:
    m, codec = cfg.model, build_codec(cfg)
    return VideoDiT(
        latent_channels=codec.latent_channels,
        audio_feature_dim=feature_dim(cfg.audio),
        audio_per_frame=cfg.audio.feature_rate // cfg.synth.fps,
        dim=m.dim, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio, patch=tuple(m.patch),
        audio_context=m.audio_context, audio_tokens=m.audio_tokens, audio_dim=m.audio_dim)


def count_parameters(module: nn.Module) -> int:
    """Parameter count; under ZeRO-3 a parameter's full size is `ds_numel`, not `numel()`."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
