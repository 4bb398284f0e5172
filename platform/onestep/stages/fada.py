"""Stage `fada`: FADA's distillation of the teacher into a few-step student (FADA §3).

PeRFlow windows (§3.1): the time axis is cut into `fada.windows` equal windows. Per sample a
window is drawn, its start point is a real clip noised to the window's start, its end point is
where the frozen teacher's ODE takes it (`solver_steps` Euler steps), and the student learns the
straight line between them: its input is a point of the line, its target the line's velocity.
A straight flow needs few steps per window; the export samples `steps_per_window` of them.

Multi-CFG distilled (§3.3): the teacher solves under full multi-CFG (Eq. 9) at audio and
reference scales drawn per sample, which the student gets as an input (`model.guidance_input`):
one evaluation per step at any scales. With `cfg_mode: none` the student learns the unguided
flow under condition dropout instead and samples with multi-CFG (FADA-Balanced, 3 per step).

Mixed supervision (§3.2): on clips of `gt_tiers` the student also learns the ground-truth flow
of the same window (the forward process's straight line), weighted per sample by the ratio of
that loss to the teacher-supervised one (onestep.distill.windows.gt_weight).
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from onestep import draws
from onestep.config import TIERS, Config
from onestep.distill.windows import gt_weight, per_sample_mse, solve, straight_flow, window_bounds
from onestep.flow import GuidedVelocity, add_noise, condition_dropout, mouth_weights
from onestep.model import build_model
from onestep.stages.base import Stage, without_guidance_input
from onestep.stages.sources import inherit, load_networks, pin_teacher
from onestep.train.engine import update


class FADAStage(Stage):
    name = "fada"
    trained = ("generator",)
    frozen = ("teacher",)
    headline = ("loss", "teacher_loss", "gt_loss")
    sources = ("fada.teacher",)
    teacher_source = "fada.teacher"

    @staticmethod
    def resolve_sources(cfg: Config) -> list[str]:
        f = cfg.fada
        f.teacher, source = pin_teacher(cfg, "fada.teacher", f.teacher)
        lines = [f"teacher: {f.teacher}"] + inherit(cfg, source, f.teacher)
        cfg.model.guidance_input = "" if f.cfg_mode == "none" else f.cfg_mode
        return lines + [f"student: {sum(f.steps_per_window)} steps in {f.windows} windows "
                        f"{f.steps_per_window}, guidance "
                        + ("as multi-CFG (3 evaluations per step)" if f.cfg_mode == "none"
                           else f"as an input ({f.cfg_mode}, 1 evaluation per step)")]

    @staticmethod
    def plan_network(cfg: Config, name: str) -> torch.nn.Module:
        return build_model(without_guidance_input(cfg) if name == "teacher" else cfg)

    def build_networks(self) -> dict[str, torch.nn.Module]:
        f = self.cfg.fada
        (teacher,) = load_networks(without_guidance_input(self.cfg), f.teacher, 1)
        student = build_model(self.cfg)
        # The student is the teacher plus its guidance input, which starts adding nothing.
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any("guidance" not in k for k in missing):
            raise ValueError(f"fada.teacher: {f.teacher} does not fit the student "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return {"generator": student, "teacher": teacher}

    def optimizer(self, name: str) -> tuple[float, int]:
        return self.cfg.fada.lr, 1

    def lr_scales(self, name: str) -> dict[str, float]:
        """The guidance input (embedding, and each block's guidance layer and its norm) is
        new and starts at zero."""
        return {"guidance": self.cfg.fada.guidance_lr_scale}

    def milestone(self, step: int, total_steps: int) -> str | None:
        return f"{sum(self.cfg.fada.steps_per_window)}step" if step == total_steps else None

    def export_config(self, step: int) -> Config:
        """Sampled in its windows; a guidance-input student at the run's sample scales by
        default (a request may set others), an unguided one with multi-CFG at them."""
        out = copy.deepcopy(self.cfg)
        f = self.cfg.fada
        out.sample.steps, out.sample.window_steps = sum(f.steps_per_window), list(
            f.steps_per_window)
        out.sample.timestep_shift = 1.0
        return out

    def _scales(self, rng: torch.Generator, x0: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        f, b = self.cfg.fada, x0.shape[0]
        return (draws.uniform(b, rng, x0, *f.audio_scale_range),
                draws.uniform(b, rng, x0, *f.ref_scale_range))

    def train_step(self, batch: dict, engines: dict, rng: torch.Generator,
                   step: int) -> dict:
        f = self.cfg.fada
        student, teacher = engines["generator"], engines["teacher"]
        x0, cond = self.prepare(batch)
        b = x0.shape[0]
        t_start, t_end = window_bounds(draws.integers(f.windows, b, rng, x0), f.windows)
        noise = draws.normal(x0, rng)
        z_start = add_noise(x0, noise, t_start)
        t = t_end + (t_start - t_end) * draws.uniform(b, rng, x0)
        if f.cfg_mode == "none":  # the student learns each branch CFG will ask of it
            drop_audio, drop_ref = condition_dropout(b, self.cfg.flow, rng, x0)
            cond = dataclasses.replace(cond, drop_audio=drop_audio, drop_ref=drop_ref)
            target_velocity = lambda x, s: teacher(x, s, cond)  # noqa: E731
            student_cond = cond
        else:
            audio_scale, ref_scale = self._scales(rng, x0)
            target_velocity = GuidedVelocity(teacher, cond, audio_scale, ref_scale)
            student_cond = dataclasses.replace(
                cond, guidance=torch.stack([audio_scale, ref_scale], -1))
        with torch.no_grad():
            z_end = solve(target_velocity, z_start, t_start, t_end, f.solver_steps)
        weights = mouth_weights(x0, self.cfg.flow)
        z_t, v_target = straight_flow(z_start, z_end, t_start, t_end, t)
        teacher_loss = per_sample_mse(student(z_t, t, student_cond), v_target, weights)
        logs = {"teacher_loss": teacher_loss.mean().detach()}
        loss = teacher_loss.mean()
        if f.gt_weighting != "off":
            # Every rank runs this forward (ZeRO-3 gathers parameters collectively); samples
            # outside gt_tiers weigh 0.
            eligible = torch.isin(batch["tier"].long(),
                                  torch.tensor([TIERS.index(x) for x in f.gt_tiers],
                                               device=x0.device))
            gt_loss = per_sample_mse(student(add_noise(x0, noise, t), t, student_cond),
                                     noise - x0, weights)
            ratio = gt_loss.detach() / teacher_loss.detach().clamp_min(1e-8)
            w = gt_weight(ratio, f.gt_weighting, f.gt_weight_peak, f.gt_rise, f.gt_peak_ratio,
                          f.gt_dead_ratio) * eligible.float()
            loss = loss + (w * gt_loss).mean()
            logs.update(gt_loss=gt_loss.mean().detach(), gt_weight=w.sum() / eligible.sum()
                        .clamp_min(1), gt_share=eligible.float().mean(),
                        gt_ratio=ratio[eligible].mean() if eligible.any() else 0.0)
        logs.update(loss=loss.detach(), grad_norm=update(student, loss))
        return logs
