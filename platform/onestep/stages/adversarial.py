"""Stage `adversarial`: progressive adversarial distillation, K → K−1 → … → 1 steps
(TurboTalk §3.2–3.4).

Networks: the generator (initialised from the DMD student, then from each previous phase: it
simply keeps training), the discriminator (the teacher's trunk with a new zero-initialised head)
and the frozen DMD student as the self-compare reference. In each iteration the generator runs
its whole trajectory from noise with gradients through the final step only; the discriminator
compares real clips, the generator's samples and, with weight λ, the reference's samples of the
same noise; R1/R2 (and the reference's term) are approximated by noise perturbation.
Optionally (`regression_weight`, not part of TurboTalk) the generator's sample is also pulled
towards the reference's sample of the same noise by an MSE, mouth-weighted as the teacher's loss;
`gan_weight` scales the generator's adversarial terms (0: the regression alone trains it).

Two knobs keep the discriminator ahead of the generator: a discriminator-only warm-up at the
start of each phase (its new head starts at zero, so until it has learned something its input
gradients are noise, which Adam turns into full-size generator steps) and TTUR (`disc_steps`
discriminator updates per generator update).

Each phase trains on `adversarial.clips_per_phase` clips (the last on `last_phase_clips`, if
set) and ends with an export (`3step`, `2step`, `1step`) that generate.py and Serve load like
any checkpoint. A finished run can be extended with --resume: by more phases (phases [3] first,
then [3, 2, 1]) or by a longer last phase.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from onestep import draws
from onestep.config import Config
from onestep.distill.losses import discriminator_loss, generator_loss, perturbation_penalty
from onestep.distill.trajectory import dynamic_schedule, final_step_sample
from onestep.flow import (
    add_noise,
    euler_sample,
    mouth_weights,
    sampling_timesteps,
    weighted_mse,
    window_timesteps,
)
from onestep.model import Conditions, Discriminator, build_model
from onestep.stages.base import Stage, student_config, teacher_of, without_guidance_input
from onestep.stages.sources import inherit, load_networks, pin
from onestep.train.engine import no_param_grads, update


class AdversarialStage(Stage):
    name = "adversarial"
    trained = ("generator", "discriminator")
    frozen = ("reference",)
    backward_together = ("generator", "discriminator")  # the generator's loss goes through D
    headline = ("g_loss", "d_loss", "real_minus_fake")
    sources = ("adversarial.student", "adversarial.teacher")
    teacher_source = "adversarial.teacher"

    @staticmethod
    def resolve_sources(cfg: Config) -> list[str]:
        a = cfg.adversarial
        a.student, student_cfg = pin(cfg, "adversarial.student", a.student)
        # By default the discriminator's trunk is the teacher the student was distilled from.
        a.teacher, _ = pin(cfg, "adversarial.teacher", a.teacher or teacher_of(student_cfg))
        a.student_steps = student_cfg.sample.steps
        a.student_windows = list(student_cfg.sample.window_steps)
        a.check(cfg)  # its phases must start below the student's steps
        lines = [f"student ({a.student_steps} steps): {a.student}",
                 f"discriminator trunk (teacher): {a.teacher}"]
        lines += inherit(cfg, student_cfg, a.student)
        if cfg.model.guidance_input:
            lines.append(f"the student takes guidance scales ({cfg.model.guidance_input}): "
                         f"trained at audio {a.audio_scale_range}, reference "
                         f"{a.ref_scale_range}")
        return lines

    @staticmethod
    def plan_network(cfg: Config, name: str) -> torch.nn.Module:
        if name == "discriminator":
            return Discriminator(build_model(without_guidance_input(cfg)))
        return build_model(cfg)

    def build_networks(self) -> dict[str, torch.nn.Module]:
        a = self.cfg.adversarial
        student, reference = load_networks(self.cfg, a.student, 2)
        (trunk,) = load_networks(without_guidance_input(self.cfg), a.teacher, 1)
        return {"generator": student, "discriminator": Discriminator(trunk),
                "reference": reference}

    def _guided(self, cond: Conditions, rng: torch.Generator) -> Conditions:
        """`cond` with guidance scales drawn per sample, for a student that takes them."""
        if not self.cfg.model.guidance_input:
            return cond
        a, b = self.cfg.adversarial, cond.ref.shape[0]
        scales = [draws.uniform(b, rng, cond.ref, lo, hi)
                  for lo, hi in (a.audio_scale_range, a.ref_scale_range)]
        return dataclasses.replace(cond, guidance=torch.stack(scales, -1))

    def reference_timesteps(self) -> torch.Tensor:
        """The reference samples as the student did: in its windows, if it had them."""
        a = self.cfg.adversarial
        if a.student_windows:
            return window_timesteps(a.student_windows)
        return sampling_timesteps(a.student_steps, self.cfg.sample.timestep_shift)

    def optimizer(self, name: str) -> tuple[float, int]:
        a = self.cfg.adversarial
        return (a.lr, a.disc_steps) if name == "generator" else (a.disc_lr, 1)

    @staticmethod
    def total_clips(cfg: Config) -> int:
        return sum(cfg.adversarial.phase_clips())

    def _steps_per_phase(self) -> int:
        return max(1, math.ceil(self.cfg.adversarial.clips_per_phase / self.cfg.train.global_batch))

    def phase(self, step: int) -> tuple[int, int, int]:
        """(phase index, its step count, steps done within it) for training step `step`."""
        per = self._steps_per_phase()
        i = min(step // per, len(self.cfg.adversarial.phases) - 1)
        return i, self.cfg.adversarial.phases[i], step - i * per

    def milestone(self, step: int, total_steps: int) -> str | None:
        i, steps, _ = self.phase(step - 1)
        last_of_phase = step == total_steps or (step % self._steps_per_phase() == 0
                                                and i < len(self.cfg.adversarial.phases) - 1)
        return f"{steps}step" if last_of_phase else None

    def restarts_ema(self, step: int) -> bool:
        return step > 0 and self.phase(step)[2] == 0

    def export_config(self, step: int) -> Config:
        return student_config(self.cfg, self.phase(step - 1)[1])

    def generator_updates(self, step: int) -> tuple[int, bool]:
        """(generator updates done in the current phase before step `step`, whether step `step`
        updates the generator too). A phase opens with `disc_warmup_steps` discriminator-only
        steps; after them the generator steps once every `disc_steps` steps."""
        a = self.cfg.adversarial
        since = self.phase(step)[2] - a.disc_warmup_steps
        if since < 0:
            return 0, False
        return -(-since // a.disc_steps), since % a.disc_steps == 0

    def schedule(self, step: int, u: float) -> torch.Tensor:
        """The phase's timesteps. The dynamic warm-up counts generator updates, so during the
        discriminator-only warm-up the student keeps the previous phase's final timestep."""
        a, shift = self.cfg.adversarial, self.cfg.sample.timestep_shift
        i, steps, _ = self.phase(step)
        previous = a.student_steps if i == 0 else a.phases[i - 1]
        done = self.generator_updates(step)[0]
        progress = done / a.warmup_steps if a.dynamic_timesteps and a.warmup_steps > 0 else 1.0
        return dynamic_schedule(steps, previous, progress, u, shift)

    def generator_objective(self, logits, x_fake: torch.Tensor, real: torch.Tensor,
                            x_ref: torch.Tensor | None, ref: torch.Tensor | None
                            ) -> tuple[torch.Tensor, dict]:
        """The generator's loss and its logged parts: its GAN loss against the real clips' logits
        `real` (and with λ against the reference's, `ref`) times `gan_weight`, plus the
        regression to the reference's sample `x_ref`. `logits` is the discriminator; with
        `gan_weight` 0 it is not run on the sample, so no adversarial gradient can leak in."""
        a = self.cfg.adversarial
        loss, logs = x_fake.new_zeros(()), {}
        if a.gan_weight > 0:
            fake = logits(x_fake)
            adversarial = generator_loss(a.loss, real.detach(), fake)
            if ref is not None:
                adversarial = adversarial + a.self_compare_weight * generator_loss(
                    a.loss, ref.detach(), fake)
            loss = a.gan_weight * adversarial
        if a.regression_weight > 0:
            regression = weighted_mse(x_fake, x_ref, mouth_weights(x_fake, self.cfg.flow))
            loss = loss + a.regression_weight * regression
            logs["regression"] = regression.detach()
        return loss, logs

    def train_step(self, batch: dict, engines: dict, rng: torch.Generator,
                   step: int) -> dict:
        a = self.cfg.adversarial
        gen, disc, reference = (engines[n] for n in ("generator", "discriminator", "reference"))
        x_real, cond = self.prepare(batch)
        cond = self._guided(cond, rng)
        b = x_real.shape[0]
        timesteps = self.schedule(step, float(torch.rand(1, generator=self.shared_rng(step))))
        noise = draws.normal(x_real, rng)
        train_generator = self.generator_updates(step)[1]  # the same on every rank
        with torch.set_grad_enabled(train_generator):
            x_fake = final_step_sample(gen, noise, timesteps, cond)
        use_ref, x_ref = a.self_compare_weight > 0, None
        if use_ref or a.regression_weight > 0:  # the reference's sample of the same noise
            with torch.no_grad():
                x_ref = euler_sample(lambda x, t: reference(x, t, cond), noise,
                                     self.reference_timesteps())

        # The discriminator sees every input noised to one shared random timestep.
        lo, hi = a.disc_timestep
        t_d = draws.uniform(b, rng, x_real, lo, hi)
        eps_d = draws.normal(x_real, rng)

        def logits(x: torch.Tensor) -> torch.Tensor:
            return disc(add_noise(x, eps_d, t_d), t_d, cond)

        real = logits(x_real)
        ref = logits(x_ref) if use_ref else None
        # Generator update first, against the current discriminator (frozen meanwhile).
        with no_param_grads(disc), torch.set_grad_enabled(train_generator):
            g_loss, logs = self.generator_objective(logits, x_fake, real, x_ref, ref)
        generator_grad_norm = update(gen, g_loss) if train_generator else 0.0

        x_fake = x_fake.detach()
        fake = logits(x_fake)
        d_loss = discriminator_loss(a.loss, real, fake)
        if use_ref:
            d_loss = d_loss + a.self_compare_weight * discriminator_loss(a.loss, ref, fake)
        if a.reg_weight > 0:
            reg = (perturbation_penalty(logits, x_real, real, a.reg_sigma, rng)
                   + perturbation_penalty(logits, x_fake, fake, a.reg_sigma, rng))
            if use_ref:
                reg = reg + perturbation_penalty(logits, x_ref, ref, a.reg_sigma, rng)
            d_loss = d_loss + a.reg_weight * reg
            logs["r1_r2"] = reg.detach()
        disc_grad_norm = update(disc, d_loss)
        logs.update(loss=g_loss.detach(), g_loss=g_loss.detach(), d_loss=d_loss.detach(),
                    real_minus_fake=(real - fake).mean().detach(),
                    final_timestep=float(timesteps[-2]), steps=len(timesteps) - 1,
                    generator_grad_norm=generator_grad_norm, disc_grad_norm=disc_grad_norm)
        return logs
