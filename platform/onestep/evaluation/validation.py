"""Validation while a stage trains: the exported network scored on held-out clips.

A distillation stage's losses say little about sample quality (an adversarial loss hovers by
design), so the loop asks this for lip-sync and Fréchet distance at a fixed clip interval. Tune's
early stopping ranks trials by the combined `val_score`; TensorBoard shows all of them.

Lip-sync comes from the mouth reader on SynthTalk (labelled) and from the lip-sync expert
(`sync.weights`) on any data, ingested footage included; with both, both are reported. The same
samples feed the collapse guards (onestep.evaluation.collapse), measured against the teacher's
samples of the same clips, made once here, or against the clips where the stage has no teacher.
"""

from __future__ import annotations

import logging

import torch

from onestep.checkpoint import load_generator, load_weights_into
from onestep.config import Config
from onestep.evaluation.collapse import collapse_metrics
from onestep.evaluation.mouth_reader import load_or_train
from onestep.evaluation.run import evaluate, is_labelled, load_eval_clips
from onestep.generate import AvatarGenerator, Sampling
from onestep.model import build_model
from onestep.sync.score import load_scorer

log = logging.getLogger("onestep.train")

REPORTED = ("sync", "lse_c", "lse_d", "frechet", "psnr", "identity", "flicker",
            "abs_offset_frames")


def val_score(frechet: float, sync: float, sync_weight: float) -> float:
    """One number to rank by, lower is better: realism plus the lip-sync still missing."""
    return frechet + sync_weight * (1.0 - sync)


def lip_sync(result: dict) -> tuple[float, float]:
    """(the samples' lip-sync, the ground truth's) from an `evaluate` result: the mouth reader's
    correlation where there are labels, else the expert's LSE-C."""
    if "sync" in result:
        return result["sync"], result["sync_ground_truth"]
    return result["lse_c"], result["lse_c_ground_truth"]


class Validator:
    """Loads the held-out clips, the scorers and the collapse reference once; scores weights on
    demand. `teacher`: the checkpoint whose samples are the collapse reference ("" → the clips);
    `device`: where the samples are generated (the training rank's)."""

    def __init__(self, cfg: Config, teacher: str = "", device: str = "cpu"):
        v, endpoint = cfg.validation, cfg.run.s3_endpoint_url
        self.device = device
        labelled = is_labelled(cfg.data.uri, endpoint)
        if not labelled and not cfg.sync.weights:
            raise ValueError(f"{cfg.data.uri}: footage without mouth labels; validation needs a "
                             "lip-sync expert (sync.weights) or validation.every_clips=0")
        self.clips = load_eval_clips(cfg.data.uri, endpoint, limit=v.clips, labelled=labelled)
        self.reader = (load_or_train(v.reader, cfg.synth, v.reader_clips, endpoint_url=endpoint)[0]
                       if labelled else None)
        self.scorer = load_scorer(cfg.sync, endpoint) if cfg.sync.weights else None
        self.steps, self.sync_weight = v.steps or None, v.sync_weight
        self.reference, self.reference_sync = [c.clean_frames for c in self.clips], None
        self.reference_name = "the held-out clips"
        if teacher:
            log.info("collapse guards: sampling the teacher once on the %d validation clips",
                     len(self.clips))
            model, teacher_cfg = load_generator(teacher, endpoint)
            self.reference = []
            result = evaluate(AvatarGenerator(model, teacher_cfg, device), Sampling.from_config(
                teacher_cfg), self.clips, self.reader, self.reference, self.scorer)
            self.reference_sync = lip_sync(result)[0]
            self.reference_name = f"the teacher's samples ({teacher})"
        log.info("collapse guards measure against %s", self.reference_name)

    def __call__(self, weights: dict[str, torch.Tensor], export_cfg: Config) -> dict[str, float]:
        model = build_model(export_cfg)
        load_weights_into(model, weights, "validation weights")
        sampling = Sampling.from_config(export_cfg, steps=self.steps)
        videos = []
        result = evaluate(AvatarGenerator(model.eval(), export_cfg, self.device), sampling,
                          self.clips, self.reader, videos, self.scorer)
        out = {f"val_{k}": float(result[k]) for k in REPORTED if k in result}
        sync, ground_truth = lip_sync(result)
        if "sync" not in result:  # the expert alone: its LSE-C relative to the ground truth's
            out["val_sync"] = sync / ground_truth if ground_truth > 0 else 0.0
        out["val_score"] = val_score(result["frechet"], out["val_sync"], self.sync_weight)
        out["val_steps"] = float(sampling.steps)
        reference_sync = ground_truth if self.reference_sync is None else self.reference_sync
        out.update({f"val_{k}": v for k, v in collapse_metrics(
            videos, self.reference, sync, reference_sync).items()})
        return out
