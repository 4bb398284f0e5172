"""Validation while a stage trains: the exported network scored on held-out SynthTalk clips.

A distillation stage's losses say little about sample quality (an adversarial loss hovers by
design), so the loop asks this for lip-sync and Fréchet distance at a fixed clip interval. Tune's
early stopping ranks trials by the combined `val_score`; TensorBoard shows all of them.
"""

from __future__ import annotations

import torch

from onestep.checkpoint import load_weights_into
from onestep.config import Config
from onestep.evaluation.mouth_reader import load_or_train
from onestep.evaluation.run import evaluate, load_eval_clips
from onestep.generate import AvatarGenerator, Sampling
from onestep.model import build_model

REPORTED = ("sync", "frechet", "psnr", "identity", "flicker", "abs_offset_frames")


def val_score(frechet: float, sync: float, sync_weight: float) -> float:
    """One number to rank by, lower is better: realism plus the lip-sync still missing."""
    return frechet + sync_weight * (1.0 - sync)


class Validator:
    """Loads the held-out clips and the mouth reader once; scores weights on demand."""

    def __init__(self, cfg: Config):
        v, endpoint = cfg.validation, cfg.run.s3_endpoint_url
        self.clips = load_eval_clips(cfg.data.uri, endpoint, limit=v.clips)
        self.reader, _ = load_or_train(v.reader, cfg.synth, v.reader_clips, endpoint_url=endpoint)
        self.steps, self.sync_weight = v.steps or None, v.sync_weight

    def __call__(self, weights: dict[str, torch.Tensor], export_cfg: Config) -> dict[str, float]:
        model = build_model(export_cfg)
        load_weights_into(model, weights, "validation weights")
        sampling = Sampling.from_config(export_cfg, steps=self.steps)
        result = evaluate(AvatarGenerator(model.eval(), export_cfg), sampling, self.clips,
                          self.reader)
        out = {f"val_{k}": float(result[k]) for k in REPORTED}
        out["val_score"] = val_score(result["frechet"], result["sync"], self.sync_weight)
        out["val_steps"] = float(sampling.steps)
        return out
