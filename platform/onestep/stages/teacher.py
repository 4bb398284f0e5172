"""Stage `teacher`: the flow-matching audio-driven video DiT that later stages distill."""

from __future__ import annotations

import torch

from onestep.config import Config
from onestep.flow import flow_matching_loss
from onestep.model import build_codec, build_model
from onestep.stages.batch import prepare_batch


class TeacherStage:
    name = "teacher"
    trained = ("generator",)  # networks with optimisers, in update order
    export = "generator"  # the network whose EMA becomes model.safetensors

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.codec = build_codec(cfg)

    def build_networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": build_model(self.cfg)}

    def train_step(self, batch: dict, engines: dict, generator: torch.Generator) -> dict:
        engine = engines["generator"]
        x0, cond = prepare_batch(batch, self.codec, self.cfg)
        loss, logs = flow_matching_loss(engine, x0, cond, self.cfg.flow, generator)
        engine.backward(loss)
        engine.step()
        logs["grad_norm"] = float(engine.get_global_grad_norm() or 0.0)
        return logs
