"""Stage `dmd`: distribution matching distillation of the teacher into a few-step student
(TurboTalk §3.1; DMD2's two-time-scale updates and backward simulation).

Three networks, all initialised from the teacher: the student generator, the fake-score critic
(flow matching on the student's samples, so it tracks the student's distribution) and the frozen
teacher as the real score. The real score is the teacher *with* multi-condition CFG (FADA Eq. 9),
so the student learns the guided distribution and samples without CFG.
"""

from __future__ import annotations

import torch

from onestep import draws
from onestep.config import Config
from onestep.distill.losses import dmd_loss
from onestep.distill.trajectory import denoise_until, predict_x0
from onestep.flow import GuidedVelocity, add_noise, sampling_timesteps, velocity_loss
from onestep.stages.base import Stage, student_config
from onestep.stages.sources import inherit, load_networks, pin_teacher
from onestep.train.engine import update

T_MIN, T_MAX = 0.02, 0.98  # where the scores are compared (DMD2's range)


class DMDStage(Stage):
    name = "dmd"
    trained = ("generator", "fake_score")
    frozen = ("teacher",)
    headline = ("dmd_loss", "critic_loss")
    sources = ("dmd.teacher",)
    teacher_source = "dmd.teacher"

    @staticmethod
    def resolve_sources(cfg: Config) -> list[str]:
        cfg.dmd.teacher, teacher_cfg = pin_teacher(cfg, "dmd.teacher", cfg.dmd.teacher)
        return [f"teacher: {cfg.dmd.teacher}"] + inherit(cfg, teacher_cfg, cfg.dmd.teacher)

    def build_networks(self) -> dict[str, torch.nn.Module]:
        names = ("generator", "fake_score", "teacher")
        return dict(zip(names, load_networks(self.cfg, self.cfg.dmd.teacher, len(names))))

    def optimizer(self, name: str) -> tuple[float, int]:
        if name == "generator":
            return self.cfg.dmd.lr, self.cfg.dmd.critic_steps
        return self.cfg.dmd.critic_lr, 1

    def milestone(self, step: int, total_steps: int) -> str | None:
        return f"{self.cfg.dmd.student_steps}step" if step == total_steps else None

    def export_config(self, step: int) -> Config:
        return student_config(self.cfg, self.cfg.dmd.student_steps)

    def _student_sample(self, engine, x0_real, cond, rng, k: int) -> torch.Tensor:
        """x0 from the student at one of its timesteps, with grad through that step only.

        Backward simulation (DMD2): the input at the k-th timestep comes from the student's own
        first k steps, as at inference; without it, from noising real data.
        """
        d = self.cfg.dmd
        timesteps = sampling_timesteps(d.student_steps, self.cfg.sample.timestep_shift)
        noise = draws.normal(x0_real, rng)
        if d.backward_simulation:
            x = denoise_until(engine, noise, timesteps, cond, k)
        else:
            x = add_noise(x0_real, noise, torch.full((x0_real.shape[0],), float(timesteps[k]),
                                                     device=x0_real.device))
        return predict_x0(engine, x, float(timesteps[k]), cond)

    def train_step(self, batch: dict, engines: dict, rng: torch.Generator,
                   step: int) -> dict:
        d = self.cfg.dmd
        student, critic, teacher = (engines[n] for n in ("generator", "fake_score", "teacher"))
        x0_real, cond = self.prepare(batch)
        b = x0_real.shape[0]
        logs = {}
        # Which of its timesteps the student is trained at: the same on every rank.
        k = int(torch.randint(d.student_steps, (1,), generator=self.shared_rng(step)))
        if step % d.critic_steps == 0:
            x0 = self._student_sample(student, x0_real, cond, rng, k)
            t = draws.uniform(b, rng, x0, T_MIN, T_MAX)
            x_t = add_noise(x0.detach(), draws.normal(x0, rng), t)
            tt = t.view(-1, 1, 1, 1, 1)
            with torch.no_grad():
                real = GuidedVelocity(teacher, cond, d.audio_scale, d.ref_scale)(x_t, t)
                x0_real_score = x_t - tt * real
                x0_fake_score = x_t - tt * critic(x_t, t, cond)
            loss = dmd_loss(x0, x0_real_score, x0_fake_score)
            logs.update(dmd_loss=loss.detach(), generator_grad_norm=update(student, loss),
                        student_timestep_index=k)
            x0 = x0.detach()
        else:
            with torch.no_grad():
                x0 = self._student_sample(student, x0_real, cond, rng, k)
        # The critic learns the flow of the student's current samples (conditional only: the
        # fake score is never guided).
        t = draws.uniform(b, rng, x0, T_MIN, T_MAX)
        critic_loss = velocity_loss(critic, x0, draws.normal(x0, rng), t, cond)
        logs.update(loss=critic_loss.detach(), critic_loss=critic_loss.detach(),
                    critic_grad_norm=update(critic, critic_loss))
        return logs
