"""Stage `teacher`: the flow-matching audio-driven video DiT that later stages distill; with
`model.pretrained`, a fine-tune of Wan2.1's weights (diffusers format)."""

from __future__ import annotations

import torch

from onestep.config import Config
from onestep.flow import flow_matching_loss
from onestep.model import build_model
from onestep.pretrained import adopt_architecture, load_into
from onestep.stages.base import Stage
from onestep.stages.batch import prepare_batch


class TeacherStage(Stage):
    name = "teacher"
    trained = ("generator",)
    sources = ("model.pretrained",)

    @staticmethod
    def resolve_sources(cfg: Config) -> list[str]:
        return [adopt_architecture(cfg)] if cfg.model.pretrained else []

    def build_networks(self) -> dict[str, torch.nn.Module]:
        model = build_model(self.cfg)
        if self.cfg.model.pretrained:
            load_into(model, self.cfg.model.pretrained, self.cfg.run.s3_endpoint_url)
        return {"generator": model}

    def train_step(self, batch: dict, engines: dict, generator: torch.Generator,
                   step: int) -> dict:
        engine = engines["generator"]
        x0, cond = prepare_batch(batch, self.codec, self.cfg)
        loss, logs = flow_matching_loss(engine, x0, cond, self.cfg.flow, generator)
        engine.backward(loss)
        engine.step()
        logs["grad_norm"] = float(engine.get_global_grad_norm() or 0.0)
        return logs
