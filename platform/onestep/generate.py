"""Portrait + audio of any length → lip-synced video, chunk by chunk. Used by jobs/ and Serve.

Long audio is cut into chunks of F frames that overlap by M motion frames: chunk k's first M
frames are conditioned on the last M generated frames of chunk k−1 (InfiniteTalk-style), and
only its F−M new frames are emitted, so a video of any length stays continuous. Chunks are cut in
latent frames and the motion frames are carried as latents (never decoded and re-encoded); with
a causal codec (the Wan VAE: 4 video frames per latent frame) the whole video is one latent
sequence, decoded piece by piece as chunks arrive, and cut to exactly the audio's length.

That dependency allows one chunk per request in flight, but nothing ties the chunks of different
requests together: a `Render` holds one request's state between chunks, and `denoise` runs the
next chunks of many requests as one batch (what the server's request batching does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from onestep.audio_features import build_audio_encoder
from onestep.conditioning import align_audio, encode_reference, make_conditions
from onestep.config import Config
from onestep.data import to_unit
from onestep.encoders import ImageEncoder
from onestep.flow import (
    GuidedVelocity,
    add_noise,
    cfg_branches,
    euler_sample,
    sampling_timesteps,
    window_timesteps,
)
from onestep.model import build_codec
from onestep.model.dit import Conditions


@dataclass
class Sampling:
    steps: int
    audio_scale: float
    ref_scale: float
    timestep_shift: float
    seed: int
    window_steps: tuple[int, ...] = ()  # the model's steps per time window (sample.window_steps)
    takes_guidance: bool = False  # the model takes the scales as an input (FADA §3.3)
    rolling_noise: float = 0.0  # later chunks start from the previous one noised to this level
    rolling_first_chunk: str = "gaussian"  # or from the reference latent, noised (sample.*)

    @classmethod
    def from_config(cls, cfg: Config, **overrides) -> Sampling:
        """The model's own sampling (its export's `sample` section), with what a request or a
        command line overrides. Other step counts than the model's windows sum to are uniform."""
        s = cfg.sample
        base = cls(s.steps, s.audio_scale, s.ref_scale, s.timestep_shift, s.seed,
                   tuple(s.window_steps), bool(cfg.model.guidance_input), s.rolling_noise,
                   s.rolling_first_chunk)
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        if base.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {base.steps}")
        if not 0 <= base.rolling_noise <= 1:
            raise ValueError(f"rolling noise must be in [0, 1] (0: off), got {base.rolling_noise}")
        if sum(base.window_steps) != base.steps:
            base.window_steps = ()
        return base

    def solver(self) -> tuple:
        """What must match for chunks to share a batch (the seed need not: noise is per chunk)."""
        return (self.steps, self.audio_scale, self.ref_scale, self.timestep_shift,
                self.window_steps, self.takes_guidance)

    def timesteps(self, device=None, start: float = 1.0) -> torch.Tensor:
        """From `start` (1: noise; a rolling chunk's noise level) to 0."""
        if start < 1.0:  # an edit of the noised previous chunk: uniform steps from there
            return torch.linspace(start, 0.0, self.steps + 1, device=device)
        if self.window_steps:
            return window_timesteps(list(self.window_steps), device)
        return sampling_timesteps(self.steps, self.timestep_shift, device)

    @property
    def nfe(self) -> int:
        """Model evaluations per chunk: steps × CFG branches (× 1 for a model that takes the
        scales as an input)."""
        if self.takes_guidance:
            return self.steps
        return self.steps * len(cfg_branches(self.audio_scale, self.ref_scale))


@dataclass
class GenerationStats:
    frames: int = 0
    chunks: int = 0
    nfe_per_chunk: int = 0  # model evaluations per chunk (steps × CFG branches)
    seconds: float = 0.0
    decode_seconds: float = 0.0  # of which latents → pixels (the floor of one-step latency)


def chunk_starts(n_frames: int, frames: int, motion: int) -> list[int]:
    """Start (latent) frame of each chunk; consecutive chunks overlap by `motion` frames."""
    starts, s = [0], 0
    while s + frames < n_frames:
        s += frames - motion
        starts.append(s)
    return starts


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] → (F, H, W, 3) uint8."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


@dataclass
class ChunkJob:
    """One request's next chunk, ready to denoise together with other requests' chunks."""

    cond: Conditions
    noise: torch.Tensor  # (1, C, F, h, w): x at `start`, from the request's own seeded generator
    sampling: Sampling
    start: float = 1.0  # the noise level it starts from (below 1: rolling sampling)


class Render:
    """One request on its way through its chunks: `next_job()`, denoise it, `accept()` the latent.

    image: (H, W, 3) uint8 at the model resolution; audio: mono float32 at the config rate.
    """

    def __init__(self, gen: AvatarGenerator, image: np.ndarray, audio: np.ndarray,
                 sampling: Sampling):
        self._begin(gen, image, sampling)
        cfg, codec = gen.cfg, gen.codec
        self.n_frames = gen.num_frames(audio)
        latents = 1 + -(-(self.n_frames - 1) // codec.temporal_factor)  # covers every frame
        self.starts = chunk_starts(latents, self.chunk, self.motion)
        # Features for the whole clip, padded with silence to cover the last chunk, then per
        # latent frame of the one latent sequence the chunks cut.
        span = codec.video_frames(self.starts[-1] + self.chunk)
        padded = np.zeros(int(span * cfg.audio.sample_rate / gen.fps), np.float32)
        padded[:len(audio)] = audio[:len(padded)]
        with torch.no_grad():
            feats = torch.from_numpy(gen.encoder(padded))[None].to(gen.device)
            self.feats = align_audio(feats, span, codec.temporal_factor)

    def _begin(self, gen: AvatarGenerator, image: np.ndarray, sampling: Sampling) -> None:
        """What every render holds whatever its audio: the portrait encoded once, the chunk
        geometry, the seeded noise, the streaming decoder."""
        cfg, codec = gen.cfg, gen.codec
        self.gen, self.sampling = gen, sampling
        self.chunk = codec.latent_frames(cfg.data.frames)
        m = cfg.data.motion_frames
        self.motion = codec.latent_frames(m) if m else 0
        with torch.no_grad(), gen.compute():
            self.ref = encode_reference(codec, torch.from_numpy(to_unit(image))[None]
                                        .to(gen.device))
            self.image = (gen.image_encoder(image[None]).to(gen.device)
                          if gen.image_encoder is not None else None)
        self.per_latent = codec.temporal_factor * gen.per_frame
        self.rng = torch.Generator(device="cpu").manual_seed(sampling.seed)
        self.previous: torch.Tensor | None = None  # latent of the previous chunk
        self.decoder = codec.stream()
        self.k, self.emitted = 0, 0  # chunks done, frames handed out
        self.stats = GenerationStats(nfe_per_chunk=sampling.nfe)

    @property
    def done(self) -> bool:
        return self.k >= len(self.starts)

    def _chunk_audio(self, start: int) -> torch.Tensor:
        """Audio features of the chunk starting at latent frame `start`, per latent frame."""
        return self.feats[:, start * self.per_latent:(start + self.chunk) * self.per_latent]

    @torch.no_grad()
    def next_job(self) -> ChunkJob:
        n = self.chunk
        cond = make_conditions(self.ref, self._chunk_audio(self.k * (n - self.motion)), n,
                               self.motion, motion_latent=self._motion_latent(), image=self.image)
        shape = (1, self.gen.codec.latent_channels, n, *cond.ref.shape[-2:])
        noise = torch.randn(shape, generator=self.rng).to(self.gen.device)
        level = self.sampling.rolling_noise
        if level > 0 and self.previous is not None:  # rolling sampling (OSA-LCM)
            past = self.previous
        elif level > 0 and self.sampling.rolling_first_chunk == "reference":
            past = self.ref[:, :, None].expand(shape)  # no past yet: the portrait, still
        else:
            return ChunkJob(cond, noise, self.sampling)
        start = add_noise(past, noise, torch.tensor([level], device=noise.device))
        return ChunkJob(cond, start, self.sampling, level)

    def _motion_latent(self) -> torch.Tensor | None:
        """The previous chunk's last M latent frames, placed in this chunk's first M frames."""
        if self.previous is None:
            return None
        offset = self.chunk - self.motion  # where this chunk starts in the previous one
        motion = torch.zeros_like(self.previous)
        motion[:, :, :self.motion] = self.previous[:, :, offset:offset + self.motion]
        return motion

    @torch.no_grad()
    def accept(self, latent: torch.Tensor) -> np.ndarray:
        """The denoised latent of the current chunk → its new uint8 (n, H, W, 3) frames: the
        latent frames after the motion frames, decoded after the previous chunk's, up to the
        audio's last frame."""
        new = latent if self.k == 0 else latent[:, :, self.motion:]
        t0 = time.perf_counter()  # to uint8 on the host included: on a GPU that waits for it
        with self.gen.compute():
            decoded = self.decoder.push(new)
        frames = to_uint8(decoded[0])[:self.n_frames - self.emitted]
        self.stats.decode_seconds += time.perf_counter() - t0
        self.previous = latent
        self.k += 1
        self.emitted += len(frames)
        self.stats.frames += len(frames)
        self.stats.chunks += 1
        return frames


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return precision


class AvatarGenerator:
    """Holds a generator network, its codec and audio encoder; stateless between requests.

    `precision`: bf16 runs the network and the codec under bf16 autocast (weights stay as
    loaded), what a GPU serves fastest with (reports/gpu.md: a one-step student 2.5× faster than
    in fp32 on an H200)."""

    def __init__(self, model: torch.nn.Module, cfg: Config, device: str = "cpu",
                 precision: str = "fp32"):
        self.precision = check_precision(precision)
        self.model, self.cfg, self.device = model.to(device).eval(), cfg, device
        self.codec = build_codec(cfg).to(device)
        self.encoder = build_audio_encoder(cfg.audio)
        self.image_encoder = (ImageEncoder(cfg.model.image_encoder, cfg.run.s3_endpoint_url)
                              if cfg.model.image_encoder else None)  # Wan I2V's CLIP tokens
        self.fps = cfg.synth.fps
        self.per_frame = cfg.audio.feature_rate // cfg.synth.fps

    def num_frames(self, audio: np.ndarray) -> int:
        return max(1, int(np.ceil(len(audio) / self.cfg.audio.sample_rate * self.fps)))

    def start(self, image: np.ndarray, audio: np.ndarray, sampling: Sampling) -> Render:
        return Render(self, image, audio, sampling)

    def compute(self) -> torch.autocast:
        """The context the network and the codec run in: bf16 autocast, or plain fp32."""
        return torch.autocast(torch.device(self.device).type, torch.bfloat16,
                              enabled=self.precision == "bf16")

    @torch.no_grad()
    def denoise(self, jobs: list[ChunkJob]) -> list[torch.Tensor]:
        """Sample every job's latent, one batched solve per distinct solver setting."""
        out: list[torch.Tensor | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((*job.sampling.solver(), job.start), []).append(i)
        for idx in groups.values():
            sampling = jobs[idx[0]].sampling
            velocity = GuidedVelocity(self.model, Conditions.cat([jobs[i].cond for i in idx]),
                                      sampling.audio_scale, sampling.ref_scale,
                                      sampling.takes_guidance)
            noise = torch.cat([jobs[i].noise for i in idx])
            with self.compute():
                latents = euler_sample(velocity, noise,
                                       sampling.timesteps(self.device, jobs[idx[0]].start))
            for i, latent in zip(idx, latents.split(1)):
                out[i] = latent
        return out

    def stream(self, image: np.ndarray, audio: np.ndarray, sampling: Sampling,
               stats: GenerationStats | None = None) -> Iterator[np.ndarray]:
        """Yield uint8 (n, H, W, 3) frames per chunk as soon as each chunk is generated."""
        render = self.start(image, audio, sampling)
        if stats is not None:  # the caller's record fills as the chunks come
            stats.nfe_per_chunk = render.stats.nfe_per_chunk
            render.stats = stats
        while not render.done:
            t0 = time.perf_counter()
            frames = render.accept(self.denoise([render.next_job()])[0])
            render.stats.seconds += time.perf_counter() - t0
            yield frames

    def generate(self, image: np.ndarray, audio: np.ndarray, sampling: Sampling
                 ) -> tuple[np.ndarray, GenerationStats]:
        stats = GenerationStats()
        frames = np.concatenate(list(self.stream(image, audio, sampling, stats)))
        return frames, stats
