"""What a training stage tells the loop: its networks, their optimisers, one update, its exports.

The loop (onestep.train.loop) owns distribution, checkpoints and metrics; a stage owns the
recipe. Networks in `trained` get an optimiser each; networks in `frozen` are sharded for
inference only. `resolve_sources` runs on the driver before launch, so that every worker (and a
resumed run) starts from the same concrete checkpoints.
"""

from __future__ import annotations

import copy

import torch

from onestep.config import Config
from onestep.encoders import ImageEncoder
from onestep.model import Conditions, Discriminator, build_codec, build_model
from onestep.stages.batch import prepare_batch


class Stage:
    name: str = ""
    trained: tuple[str, ...] = ()  # networks with optimisers, in update order
    frozen: tuple[str, ...] = ()  # networks used for inference only
    export = "generator"  # the network whose EMA becomes model.safetensors
    headline: tuple[str, ...] = ("loss",)  # metrics the progress line shows
    sources: tuple[str, ...] = ()  # config keys naming the checkpoints the stage starts from
    # Config key naming the frozen teacher, whose samples of the validation clips are what the
    # collapse guards compare with; "" compares with the clips themselves.
    teacher_source: str = ""
    # Trained networks whose activations are alive together in one backward pass (the memory
    # plan's peak); by default each trains in a backward pass of its own.
    backward_together: tuple[str, ...] = ()
    # Frozen networks that follow a trained one as its EMA after every step (a consistency
    # model's target network), by `target_of`; checkpointed with the EMAs.
    targets: tuple[str, ...] = ()

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.codec = build_codec(cfg)
        self._image_encoder = None

    def prepare(self, batch: dict) -> tuple[torch.Tensor, Conditions]:
        """A training batch → (clean latent, conditions). A pixel batch of a Wan I2V run gets
        its references' CLIP tokens here (the encoder loads on first use); latent batches
        carry them."""
        m = self.cfg.model
        if m.image_encoder and "latent" not in batch and self._image_encoder is None:
            self._image_encoder = ImageEncoder(m.image_encoder, self.cfg.run.s3_endpoint_url)
        return prepare_batch(batch, self.codec, self.cfg, self._image_encoder)

    @classmethod
    def frozen_networks(cls, cfg: Config) -> tuple[str, ...]:
        """The frozen networks (targets included) a run of `cfg` builds: all of `frozen`, unless
        a stage's mode leaves some unused."""
        return cls.frozen

    @staticmethod
    def plan_network(cfg: Config, name: str) -> torch.nn.Module:
        """Network `name` as the stage builds it, weights aside: the memory plan builds it on
        the meta device."""
        model = build_model(cfg)
        return Discriminator(model) if name == "discriminator" else model

    @staticmethod
    def plan_inputs(cfg: Config, model: torch.nn.Module, batch: int) -> tuple:
        """Arguments of one training forward of `model` for a micro-batch of `batch` windows,
        shapes only (the memory plan traces it on the meta device)."""
        from onestep.audio_features import feature_dim

        from onestep.model.avatar_discriminator import AvatarDiscriminator

        trunk = isinstance(model, (Discriminator, AvatarDiscriminator))
        c = (model.trunk if trunk else model).c  # a discriminator reads its trunk's latents
        frames = 1 + (cfg.data.frames - 1) // cfg.codec.temporal_factor
        side = cfg.resolution // cfg.codec.factor
        audio_rows = frames * cfg.codec.temporal_factor * (cfg.audio.feature_rate // cfg.synth.fps)
        cond = Conditions(ref=torch.empty(batch, c, side, side),
                          audio=torch.empty(batch, audio_rows, feature_dim(cfg.audio)),
                          motion=torch.empty(batch, c, frames, side, side),
                          motion_mask=torch.empty(batch, 1, frames, side, side),
                          guidance=torch.empty(batch, 2) if cfg.model.guidance_input else None)
        return torch.empty(batch, c, frames, side, side), torch.empty(batch), cond

    @staticmethod
    def resolve_sources(cfg: Config) -> list[str]:
        """Pin the checkpoints this stage starts from (in place); return lines for the user."""
        return []

    def teacher_uri(self) -> str:
        """The checkpoint `teacher_source` names, pinned by `resolve_sources` ("" if none)."""
        return teacher_of(self.cfg)

    def build_networks(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    @staticmethod
    def total_clips(cfg: Config) -> int:
        """How many clips (training windows) the stage trains on in all."""
        return cfg.train.total_clips

    def target_of(self, name: str) -> tuple[str, float]:
        """(the trained network target `name` follows, its EMA decay)."""
        raise NotImplementedError

    def optimizer(self, name: str) -> tuple[float, int]:
        """(learning rate, training steps per optimiser step) of a trained network."""
        return self.cfg.train.lr, 1

    def lr_scales(self, name: str) -> dict[str, float]:
        """Parameter-name fragments of a trained network → multipliers of its learning rate:
        for layers the stage adds at zero, which would otherwise move no faster than any
        pretrained weight (Adam moves a weight by about its rate per step)."""
        return {}

    def train_step(self, batch: dict, engines: dict, rng: torch.Generator,
                   step: int) -> dict:
        """One training step: the stage's losses on `batch`, each trained network (`engines`,
        by name) updated with onestep.train.engine.update; `rng` is this rank's randomness
        (noise, timesteps), `shared_rng(step)` what all ranks must draw alike. Returns the
        metrics to log."""
        raise NotImplementedError

    def shared_rng(self, step: int) -> torch.Generator:
        """Randomness every rank draws identically. Any choice that changes which forward
        passes run (how many student steps, which timesteps) must agree across ranks: ZeRO-3
        gathers each parameter with a collective, so diverging ranks would deadlock."""
        return torch.Generator().manual_seed(self.cfg.data.seed * 1_000_003 + step)

    def milestone(self, step: int, total_steps: int) -> str | None:
        """Name of the export to publish after `step` (e.g. "1step"), or None."""
        return self.name if step == total_steps else None

    def restarts_ema(self, step: int) -> bool:
        """Whether the export's EMA starts afresh at `step` (a new phase is a new model)."""
        return False

    def export_config(self, step: int) -> Config:
        """The config saved beside the exported weights: how to sample this model."""
        return self.cfg


def teacher_of(cfg: Config) -> str:
    """The teacher a run of `cfg` (an export's config, say) was distilled from ("" if none):
    the value of its stage's `teacher_source`."""
    from onestep.stages import stage_class

    key = stage_class(cfg.train.stage).teacher_source
    if not key:
        return ""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def without_guidance_input(cfg: Config) -> Config:
    """`cfg`'s network as a teacher has it: without the guidance input its students learn."""
    out = copy.deepcopy(cfg)
    out.model.guidance_input = ""
    return out


def student_config(cfg: Config, steps: int) -> Config:
    """A distilled student samples with `steps` uniform Euler steps and no CFG: DMD baked the
    teacher's guidance in, unless the student takes the scales as an input (a student of a
    FADA student), which then keeps the run's scales as its defaults."""
    out = copy.deepcopy(cfg)
    out.sample.steps, out.sample.window_steps = steps, []
    if not cfg.model.guidance_input:
        out.sample.audio_scale, out.sample.ref_scale = 1.0, 1.0
    return out
