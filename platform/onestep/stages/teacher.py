"""Stage `teacher`: the flow-matching audio-driven video DiT that later stages distill."""

from __future__ import annotations

import torch

from onestep.flow import flow_matching_loss
from onestep.model import build_model
from onestep.stages.base import Stage
from onestep.stages.batch import prepare_batch


class TeacherStage(Stage):
    name = "teacher"
    trained = ("generator",)

    def build_networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": build_model(self.cfg)}

    def train_step(self, batch: dict, engines: dict, generator: torch.Generator,
                   step: int) -> dict:
        engine = engines["generator"]
        x0, cond = prepare_batch(batch, self.codec, self.cfg)
        loss, logs = flow_matching_loss(engine, x0, cond, self.cfg.flow, generator)
        engine.backward(loss)
        engine.step()
        logs["grad_norm"] = float(engine.get_global_grad_norm() or 0.0)
        return logs
