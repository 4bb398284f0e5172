"""Checkpoints a distillation stage starts from: pinned on the driver, loaded on the workers."""

from __future__ import annotations

from onestep.checkpoint import (
    CheckpointError,
    check_export,
    inherit_architecture,
    load_export,
    load_weights_into,
    resolve_checkpoint,
)
from onestep.config import Config
from onestep.model import build_model


def pin(cfg: Config, key: str, uri: str) -> tuple[str, Config]:
    """`uri` (a checkpoint, or a run whose latest checkpoint is meant) → (checkpoint, its config).

    Pinning the concrete checkpoint means workers, restarts and resumes all start from the same
    weights even if the source run keeps training. Its files are verified here, on the driver,
    so a damaged source is one line at start rather than a failure on every worker.
    """
    if not uri:
        raise CheckpointError(f"{key}: required by stage {cfg.train.stage!r} (a checkpoint or run "
                              "folder, local or s3://)")
    endpoint = cfg.run.s3_endpoint_url
    try:
        ckpt = resolve_checkpoint(uri, endpoint)
    except CheckpointError as e:
        raise CheckpointError(f"{key}: {e}") from None
    return ckpt, check_export(ckpt, endpoint)


def pin_teacher(cfg: Config, key: str, uri: str) -> tuple[str, Config]:
    """`pin` for the teacher a stage distils: a network that runs CFG, not a student that
    takes the guidance scales as an input (its guided velocity is not what CFG computes)."""
    ckpt, source = pin(cfg, key, uri)
    if source.model.guidance_input:
        raise ValueError(f"{key}: {ckpt} takes guidance scales as an input (a distilled "
                         f"student); stage {cfg.train.stage} distils a teacher that runs CFG")
    return ckpt, source


def inherit(cfg: Config, source: Config, uri: str) -> list[str]:
    changed = inherit_architecture(cfg, source)
    return [f"architecture from {uri}" + (f" (changed: {', '.join(changed)})" if changed else "")]


def load_networks(cfg: Config, uri: str, count: int) -> list:
    """`count` velocity networks of `cfg`'s architecture with a checkpoint's exported weights,
    fetched and read once (a DMD stage starts three networks from the same teacher)."""
    weights, _ = load_export(uri, cfg.run.s3_endpoint_url)
    models = []
    for _ in range(count):
        model = build_model(cfg)
        load_weights_into(model, weights, uri)
        models.append(model)
    return models
