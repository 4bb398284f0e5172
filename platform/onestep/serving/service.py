"""The generator behind the HTTP endpoint: checkpoint → warmed-up model → MP4 bytes."""

from __future__ import annotations

import logging
import time

import numpy as np
from PIL import Image

from onestep.checkpoint import load_generator, resolve_checkpoint
from onestep.flow import cfg_branches
from onestep.generate import AvatarGenerator, GenerationStats, Sampling
from onestep.media import encode_mp4
from onestep.serving.validation import GenerationRequest

log = logging.getLogger("onestep.serve")


def retime_and_resize(frames: np.ndarray, src_fps: int, fps: int, resolution: int) -> np.ndarray:
    """Nearest-frame resampling to `fps` and Lanczos resizing to `resolution`²."""
    if fps != src_fps:
        n = int(np.ceil(len(frames) * fps / src_fps))
        frames = frames[np.minimum((np.arange(n) * src_fps / fps).astype(int), len(frames) - 1)]
    if frames.shape[1] != resolution:
        frames = np.stack([np.asarray(Image.fromarray(f).resize((resolution, resolution),
                                                                Image.Resampling.LANCZOS))
                           for f in frames])
    return frames


class AvatarService:
    def __init__(self, checkpoint: str, endpoint_url: str = "", device: str = "cpu"):
        checkpoint = resolve_checkpoint(checkpoint, endpoint_url)
        model, self.cfg = load_generator(checkpoint, endpoint_url, device)
        self.checkpoint = checkpoint
        self.generator = AvatarGenerator(model, self.cfg, device)
        self._warm_up()

    def _warm_up(self) -> None:
        """One short generation so the first request does not pay for lazy initialisation."""
        t0 = time.perf_counter()
        image = np.full((self.cfg.resolution, self.cfg.resolution, 3), 128, np.uint8)
        self.generator.generate(image, np.zeros(self.cfg.audio.sample_rate // 5, np.float32),
                                Sampling.from_config(self.cfg, steps=1))
        log.info("warmed up %s in %.2f s", self.checkpoint, time.perf_counter() - t0)

    def describe(self) -> dict:
        s = self.cfg.sample
        branches = len(cfg_branches(s.audio_scale, s.ref_scale))
        return {"checkpoint": self.checkpoint, "stage": self.cfg.train.stage,
                "steps": s.steps, "resolution": self.cfg.resolution, "fps": self.cfg.synth.fps,
                "nfe_per_chunk": s.steps * branches, "chunk_frames": self.cfg.data.frames,
                "audio_scale": s.audio_scale, "ref_scale": s.ref_scale}

    def sampling(self, req: GenerationRequest) -> Sampling:
        return Sampling.from_config(self.cfg, steps=req.steps, seed=req.seed,
                                    audio_scale=req.audio_scale, ref_scale=req.ref_scale)

    def render(self, req: GenerationRequest) -> tuple[bytes, GenerationStats]:
        frames, stats = self.generator.generate(req.image, req.audio, self.sampling(req))
        frames = retime_and_resize(frames, self.cfg.synth.fps, req.fps, req.resolution)
        return encode_mp4(frames, req.fps, req.audio, self.cfg.audio.sample_rate), stats
