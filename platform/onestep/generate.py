"""Portrait + audio of any length → lip-synced video, chunk by chunk. Used by jobs/ and Serve.

Long audio is cut into chunks of F frames that overlap by M motion frames: chunk k's first M
frames are conditioned on the last M generated frames of chunk k−1 (InfiniteTalk-style), and
only its F−M new frames are emitted, so a video of any length stays continuous.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from onestep.audio_features import build_audio_encoder
from onestep.conditioning import make_conditions
from onestep.config import Config
from onestep.data import to_unit
from onestep.flow import GuidedVelocity, euler_sample, sampling_timesteps
from onestep.model import build_codec


@dataclass
class Sampling:
    steps: int
    audio_scale: float
    ref_scale: float
    timestep_shift: float
    seed: int

    @classmethod
    def from_config(cls, cfg: Config, **overrides) -> "Sampling":
        s = cfg.sample
        base = cls(s.steps, s.audio_scale, s.ref_scale, s.timestep_shift, s.seed)
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        if base.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {base.steps}")
        return base


@dataclass
class GenerationStats:
    frames: int = 0
    chunks: int = 0
    nfe_per_chunk: int = 0  # model evaluations per chunk (steps × CFG branches)
    seconds: float = 0.0


def chunk_starts(n_frames: int, frames: int, motion: int) -> list[int]:
    """Start frame of each chunk; consecutive chunks overlap by `motion` frames."""
    starts, s = [0], 0
    while s + frames < n_frames:
        s += frames - motion
        starts.append(s)
    return starts


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] → (F, H, W, 3) uint8."""
    x = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class AvatarGenerator:
    """Holds a generator network, its codec and audio encoder; stateless between requests."""

    def __init__(self, model: torch.nn.Module, cfg: Config, device: str = "cpu"):
        self.model, self.cfg, self.device = model.to(device).eval(), cfg, device
        self.codec = build_codec(cfg)
        self.encoder = build_audio_encoder(cfg.audio)
        self.fps = cfg.synth.fps
        self.per_frame = cfg.audio.feature_rate // cfg.synth.fps

    def num_frames(self, audio: np.ndarray) -> int:
        return max(1, int(np.ceil(len(audio) / self.cfg.audio.sample_rate * self.fps)))

    @torch.no_grad()
    def stream(self, image: np.ndarray, audio: np.ndarray, sampling: Sampling,
               stats: GenerationStats | None = None) -> Iterator[np.ndarray]:
        """Yield uint8 (n, H, W, 3) frames per chunk as soon as each chunk is generated.

        image: (H, W, 3) uint8 at the model resolution; audio: mono float32 at the config rate.
        """
        stats = stats if stats is not None else GenerationStats()
        f_len, motion_frames = self.cfg.data.frames, self.cfg.data.motion_frames
        n_frames = self.num_frames(audio)
        starts = chunk_starts(n_frames, f_len, motion_frames)
        # Features for the whole clip, padded with silence to cover the last chunk.
        span = starts[-1] + f_len
        padded = np.zeros(int(span * self.cfg.audio.sample_rate / self.fps), np.float32)
        padded[:len(audio)] = audio[:len(padded)]
        feats = torch.from_numpy(self.encoder(padded)).to(self.device)
        ref = torch.from_numpy(to_unit(image))[None].to(self.device)
        gen = torch.Generator(device="cpu").manual_seed(sampling.seed)
        timesteps = sampling_timesteps(sampling.steps, sampling.timestep_shift, self.device)
        previous = None  # latent of the previous chunk
        for k, start in enumerate(starts):
            t0 = time.perf_counter()
            audio_chunk = feats[start * self.per_frame:(start + f_len) * self.per_frame][None]
            cond = make_conditions(self.codec, ref, audio_chunk, f_len, motion_frames,
                                   motion_latent=self._motion_latent(previous, start, starts, k))
            velocity = GuidedVelocity(self.model, cond, sampling.audio_scale, sampling.ref_scale)
            latent_shape = (1, self.codec.latent_channels, f_len, *cond.ref.shape[-2:])
            noise = torch.randn(latent_shape, generator=gen).to(self.device)
            latent = euler_sample(velocity, noise, timesteps)
            previous = latent
            frames = to_uint8(self.codec.decode(latent)[0])
            first = 0 if k == 0 else motion_frames
            last = min(f_len, n_frames - start)
            stats.frames += last - first
            stats.chunks += 1
            stats.nfe_per_chunk = velocity.nfe
            stats.seconds += time.perf_counter() - t0
            yield frames[first:last]

    def _motion_latent(self, previous, start, starts, k):
        """The previous chunk's last M latent frames, placed in this chunk's first M frames."""
        if previous is None:
            return None
        m = self.cfg.data.motion_frames
        offset = start - starts[k - 1]  # = F − M
        motion = torch.zeros_like(previous)
        motion[:, :, :m] = previous[:, :, offset:offset + m]
        return motion

    def generate(self, image: np.ndarray, audio: np.ndarray, sampling: Sampling
                 ) -> tuple[np.ndarray, GenerationStats]:
        stats = GenerationStats()
        frames = np.concatenate(list(self.stream(image, audio, sampling, stats)))
        return frames, stats
