"""Stage `osa_lcm`: OSA-LCM's adversarial latent consistency distillation (§4.1).

The student, initialised from the teacher, learns to map any point of the teacher's (guided)
ODE to the data end in one evaluation: its x0 prediction at t_{n+k} must match the target
network's (an EMA of the student) at the point the teacher's Euler step reaches at t_n (Eq. 3,
pseudo-Huber). An avatar discriminator (the frozen teacher's features, trainable 3D-convolution
heads that see the audio; onestep.model.avatar_discriminator) judges one-step predictions
against real clips, both at a small noise level whose upper bound grows with its updates
(Eq. 4–6), and a motion loss on frame differences keeps the head's trajectory (Eq. 7).
Generator and discriminator update on alternate steps.

Phase `eft` (§4.2), the editing fine-tune of an Adv-LCM export: a training window holds two
consecutive generation chunks (overlapping by the motion frames), and the student learns to
turn the first, noised to an SDEdit level, into the second in one step, conditioned on the
second's audio and motion frames. At inference that is combined rolling sampling
(`sample.rolling_noise`): every chunk after the first starts from the previous one, noised. A
small share of windows (`eft_reference_prob`) play the start of a video, where there is no
past: the first fragment is the reference latent repeated and the second has no motion frames,
as the paper trains for too few past frames (what plain rolling sampling's first chunk,
`sample.rolling_first_chunk=reference`, asks of the model).

Phase `ft`, the paper's plain fine-tune baseline ("Adv-LCM (+FT)"): the same windows, budget and
losses as `eft`, but the next fragment is generated from Gaussian noise, not edited from the
previous one. What EFT adds over further training is then the edit alone. (The main text's
timestep range for it is lost from our copy; its appendix describes it as "adding purely
Gaussian noise inputs to predict videos", which is what this does.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onestep import draws
from onestep.conditioning import make_conditions
from onestep.config import Config
from onestep.distill.consistency import (
    consistency_loss,
    consistency_pair,
    discretisation,
    huber,
    motion_loss,
    progressive_noise_bound,
    x0_prediction,
)
from onestep.distill.losses import discriminator_loss
from onestep.flow import GuidedVelocity, add_noise
from onestep.model import build_model
from onestep.model.avatar_discriminator import AvatarDiscriminator
from onestep.stages.base import Stage, student_config
from onestep.stages.sources import inherit, load_networks, pin, pin_teacher
from onestep.train.engine import no_param_grads, update


class OSALCMStage(Stage):
    name = "osa_lcm"
    trained = ("generator", "discriminator")
    frozen = ("teacher", "target")
    targets = ("target",)
    backward_together = ("generator", "discriminator")  # the adversarial loss goes through D
    headline = ("consistency", "edit", "fine_tune", "g_adv", "d_loss")
    sources = ("osa_lcm.teacher", "osa_lcm.student")
    teacher_source = "osa_lcm.teacher"

    @classmethod
    def frozen_networks(cls, cfg: Config) -> tuple[str, ...]:
        """The fine-tunes learn from the data alone: no teacher step, no target network (the
        discriminator keeps its own frozen copy of the teacher's blocks)."""
        return cls.frozen if cfg.osa_lcm.phase == "adv_lcm" else ()

    @staticmethod
    def resolve_sources(cfg: Config) -> list[str]:
        o = cfg.osa_lcm
        if o.phase != "adv_lcm":
            o.check_eft_window(cfg)
        o.teacher, source = pin_teacher(cfg, "osa_lcm.teacher", o.teacher)
        lines = [f"teacher: {o.teacher}"] + inherit(cfg, source, o.teacher)
        if o.phase != "adv_lcm":
            o.student, student = pin(cfg, "osa_lcm.student", o.student)
            if student.train.stage != "osa_lcm":
                raise ValueError(f"osa_lcm.student: {o.student} is an export of stage "
                                 f"{student.train.stage!r}; phase {o.phase} fine-tunes an "
                                 "Adv-LCM (stage osa_lcm)")
            what = "editing fine-tune" if o.phase == "eft" else "plain fine-tune"
            lines.append(f"{what} of: {o.student}")
        return lines

    @staticmethod
    def plan_network(cfg: Config, name: str) -> torch.nn.Module:
        model = build_model(cfg)
        if name == "discriminator":
            return AvatarDiscriminator(model, tuple(cfg.osa_lcm.disc_layers),
                                       cfg.osa_lcm.disc_width)
        return model

    def build_networks(self) -> dict[str, torch.nn.Module]:
        o = self.cfg.osa_lcm
        if o.phase != "adv_lcm":
            (trunk,), (student,) = (load_networks(self.cfg, uri, 1) for uri in (o.teacher,
                                                                             o.student))
            networks = {"generator": student}
        else:
            teacher, trunk, student, target = load_networks(self.cfg, o.teacher, 4)
            networks = {"generator": student, "target": target, "teacher": teacher}
        networks["discriminator"] = AvatarDiscriminator(trunk, tuple(o.disc_layers), o.disc_width)
        return networks

    def target_of(self, name: str) -> tuple[str, float]:
        return "generator", self.cfg.osa_lcm.target_decay

    def optimizer(self, name: str) -> tuple[float, int]:
        o = self.cfg.osa_lcm  # each updates on every other step
        return (o.lr if name == "generator" else o.disc_lr), 2

    def milestone(self, step: int, total_steps: int) -> str | None:
        return f"{self.cfg.osa_lcm.steps}step" if step == total_steps else None

    def export_config(self, step: int) -> Config:
        """Sampled in `osa_lcm.steps` steps without CFG: the teacher's guidance is in the ODE
        the student learnt; after a fine-tune in chunks of its fragments, rolling after the
        editing fine-tune."""
        o = self.cfg.osa_lcm
        out = student_config(self.cfg, o.steps)
        if o.phase != "adv_lcm":
            out.data.frames = o.fragment_frames
        if o.phase == "eft":
            out.sample.rolling_noise = o.rolling_noise
        return out

    def _fragments(self, batch: dict, rng: torch.Generator):
        """A window → (previous fragment, next fragment, the next one's conditions); without a
        past (`eft_reference_prob`), the previous fragment is the reference, held still."""
        o, codec = self.cfg.osa_lcm, self.codec
        x, cond = self.prepare(batch)
        frames = codec.latent_frames(o.fragment_frames)
        motion = codec.latent_frames(self.cfg.data.motion_frames) if self.cfg.data.motion_frames \
            else 0
        offset, per = frames - motion, cond.audio.shape[1] // x.shape[2]
        x_prev, x_next = x[:, :, :frames], x[:, :, offset:offset + frames]
        no_past = draws.uniform(x.shape[0], rng, x) < o.eft_reference_prob
        x_prev = torch.where(no_past[:, None, None, None, None],
                             cond.ref[:, :, None].expand_as(x_prev), x_prev)
        cond = make_conditions(cond.ref, cond.audio[:, offset * per:(offset + frames) * per],
                               frames, motion, motion_latent=x_next,
                               use_motion=batch["use_motion"].to(x.device).bool() & ~no_past,
                               image=cond.image)
        return x_prev, x_next, cond

    def _consistency_point(self, x0: torch.Tensor, rng: torch.Generator):
        """(noise, t_{n+k}, t_n) per sample on the discretised ODE."""
        o, b = self.cfg.osa_lcm, x0.shape[0]
        index = draws.integers(o.discretisation_steps - o.skip + 1, b, rng, x0)
        grid = discretisation(o.discretisation_steps).to(x0.device)
        t_from, t_to = consistency_pair(grid, index, o.skip)
        return draws.normal(x0, rng), t_from, t_to

    def _disc_noise(self, x0: torch.Tensor, step: int, rng: torch.Generator
                    ) -> tuple[torch.Tensor, float]:
        """The discriminator's noise levels: up to the progressive bound on its own updates
        (Eq. 6), over the whole range when it judges for the generator."""
        o = self.cfg.osa_lcm
        bound = (progressive_noise_bound(step // 2, *o.disc_noise, o.disc_noise_iterations)
                 if step % 2 else o.disc_noise[1])
        return draws.uniform(x0.shape[0], rng, x0, 0.0, bound), bound

    def train_step(self, batch: dict, engines: dict, rng: torch.Generator,
                   step: int) -> dict:
        o = self.cfg.osa_lcm
        student, disc = engines["generator"], engines["discriminator"]
        if o.phase == "eft":
            x_prev, x0, cond = self._fragments(batch, rng)
            lo, hi = o.eft_timestep
            t_from = draws.uniform(x0.shape[0], rng, x0, lo, hi)
            x_from = add_noise(x_prev, draws.normal(x0, rng), t_from)
        elif o.phase == "ft":  # the same fragment, from noise
            _, x0, cond = self._fragments(batch, rng)
            t_from, x_from = x0.new_ones(x0.shape[0]), draws.normal(x0, rng)
        else:
            x0, cond = self.prepare(batch)
            noise, t_from, t_to = self._consistency_point(x0, rng)
            x_from = add_noise(x0, noise, t_from)
        t_d, bound = self._disc_noise(x0, step, rng)
        velocity = lambda x, t: student(x, t, cond)  # noqa: E731

        def judged(x: torch.Tensor) -> torch.Tensor:
            return disc(add_noise(x, draws.normal(x, rng), t_d), t_d, cond)

        if step % 2 == 0:  # the generator's turn
            if o.phase != "adv_lcm":  # one step to the next fragment, edited or from noise
                pred = x0_prediction(velocity, x_from, t_from)
                loss = huber(pred, x0, o.huber_c)
                logs = {"edit" if o.phase == "eft" else "fine_tune": loss.mean().detach()}
            else:
                loss, pred = consistency_loss(
                    velocity, lambda x, t: engines["target"](x, t, cond),
                    GuidedVelocity(engines["teacher"], cond, o.audio_scale, o.ref_scale), x_from,
                    t_from, t_to, o.huber_c)
                logs = {"consistency": loss.mean().detach()}
            loss = loss.mean()
            if o.adv_weight > 0:
                with no_param_grads(disc):  # non-saturating (Eq. 5)
                    g_adv = F.softplus(-judged(pred)).mean()
                loss = loss + o.adv_weight * g_adv
                logs["g_adv"] = g_adv.detach()
            if o.motion_weight > 0:
                motion = motion_loss(pred, x0)
                loss = loss + o.motion_weight * motion
                logs["motion"] = motion.detach()
            logs.update(g_loss=loss.detach(), generator_grad_norm=update(student, loss))
            return logs
        with torch.no_grad():  # the discriminator's turn, on a fresh one-step prediction
            fake = x0_prediction(velocity, x_from, t_from)
        real_logits, fake_logits = judged(x0), judged(fake)
        d_loss = discriminator_loss("gan", real_logits, fake_logits)
        return {"d_loss": d_loss.detach(), "disc_noise_bound": bound,
                "real_minus_fake": (real_logits - fake_logits).mean().detach(),
                "disc_grad_norm": update(disc, d_loss)}
