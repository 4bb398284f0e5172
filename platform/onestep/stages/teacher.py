"""Stage `teacher`: the flow-matching audio-driven video DiT that later stages distill; with
`model.pretrained`, a fine-tune of Wan2.1's weights (diffusers format), and with
`model.text_encoder`, the avatar prompt's umT5 embedding stored in the model (and so in every
stage and export after it)."""

from __future__ import annotations

import torch

from onestep.config import Config
from onestep.encoders import load_prompt, store_prompt
from onestep.flow import flow_matching_loss
from onestep.model import build_model
from onestep.pretrained import adopt_architecture, load_into
from onestep.stages.base import Stage
from onestep.train.engine import update


class TeacherStage(Stage):
    name = "teacher"
    trained = ("generator",)
    sources = ("model.pretrained",)

    @staticmethod
    def resolve_sources(cfg: Config) -> list[str]:
        lines = [adopt_architecture(cfg)] if cfg.model.pretrained else []
        if cfg.model.text_encoder:
            lines.append(store_prompt(cfg))
        return lines

    def build_networks(self) -> dict[str, torch.nn.Module]:
        m, endpoint = self.cfg.model, self.cfg.run.s3_endpoint_url
        model = build_model(self.cfg)
        if m.pretrained:
            load_into(model, m.pretrained, endpoint)
        if m.prompt_embedding:
            with torch.no_grad():
                model.prompt.copy_(load_prompt(m.prompt_embedding, endpoint))
        return {"generator": model}

    def train_step(self, batch: dict, engines: dict, rng: torch.Generator,
                   step: int) -> dict:
        engine = engines["generator"]
        x0, cond = self.prepare(batch)
        loss, logs = flow_matching_loss(engine, x0, cond, self.cfg.flow, rng)
        logs["grad_norm"] = update(engine, loss)
        return logs
