"""The generator behind the HTTP endpoint: checkpoint → warmed-up model → MP4 or MPEG-TS bytes,
or live sessions (fragmented MP4).

Pure PyTorch + PyAV; the Serve deployment only adds batching and the event loop on top.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from PIL import Image

from onestep.checkpoint import load_generator, resolve_checkpoint
from onestep.generate import AvatarGenerator, Render, Sampling
from onestep.live.session import LiveSession
from onestep.media import Mp4Encoder, TsStreamEncoder
from onestep.serving.validation import GenerationRequest, SessionRequest

log = logging.getLogger("onestep.serve")


class FrameRetimer:
    """Nearest-frame resampling from the model's fps to the requested one, and Lanczos resizing.

    Fed chunk by chunk it yields exactly the frames that resampling the whole video at once would:
    output frame j shows source frame ⌊j·src/fps⌋ and leaves as soon as that frame has arrived.
    """

    def __init__(self, src_fps: int, fps: int, resolution: int):
        self.src_fps, self.fps, self.resolution = src_fps, fps, resolution
        self.seen = self.emitted = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        end = self.seen + len(frames)
        n_out = -(-end * self.fps // self.src_fps)  # ⌈end·fps/src⌉
        index = np.arange(self.emitted, n_out) * self.src_fps // self.fps - self.seen
        self.seen, self.emitted = end, n_out
        out = frames[index]
        if out.shape[1] != self.resolution:
            size = (self.resolution, self.resolution)
            out = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.LANCZOS))
                            for f in out]) if len(out) else np.zeros((0, *size, 3), np.uint8)
        return out


class TsStream:
    """One request's MPEG-TS response: each chunk's frames with the audio under them."""

    def __init__(self, req: GenerationRequest, src_fps: int, sample_rate: int):
        self.retime = FrameRetimer(src_fps, req.fps, req.resolution)
        self.encoder = TsStreamEncoder(req.resolution, req.resolution, req.fps, sample_rate)
        self.audio, self.fps, self.rate = req.audio, req.fps, sample_rate
        self.samples = 0

    def write(self, frames: np.ndarray) -> bytes:
        frames = self.retime(frames)
        end = min(len(self.audio), self.retime.emitted * self.rate // self.fps)
        piece = self.encoder.write(frames, self.audio[self.samples:end])
        self.samples = end
        return piece

    def close(self) -> bytes:
        """The audio after the last frame boundary, then the encoders' and muxer's tail."""
        tail = self.encoder.write(np.zeros((0, 1, 1, 3), np.uint8), self.audio[self.samples:])
        return tail + self.encoder.close()


class Mp4Stream:
    """One request's MP4, encoded chunk by chunk as the frames arrive (retimed and resized on
    the way), so that a replica's memory does not grow with the length of a video."""

    def __init__(self, req: GenerationRequest, src_fps: int, sample_rate: int):
        self.retime = FrameRetimer(src_fps, req.fps, req.resolution)
        self.encoder = Mp4Encoder(req.resolution, req.resolution, req.fps, sample_rate)
        self.audio = req.audio

    def write(self, frames: np.ndarray) -> None:
        self.encoder.write(self.retime(frames))

    def close(self) -> bytes:
        return self.encoder.close(self.audio)


class AvatarService:
    def __init__(self, checkpoint: str, endpoint_url: str = "", device: str = "cpu",
                 precision: str = "fp32"):
        checkpoint = resolve_checkpoint(checkpoint, endpoint_url)
        model, self.cfg = load_generator(checkpoint, endpoint_url, device)
        self.checkpoint = checkpoint
        self.generator = AvatarGenerator(model, self.cfg, device, precision)
        self._warm_up()

    def _warm_up(self) -> None:
        """One short generation so the first request does not pay for lazy initialisation."""
        t0 = time.perf_counter()
        image = np.full((self.cfg.resolution, self.cfg.resolution, 3), 128, np.uint8)
        self.generator.generate(image, np.zeros(self.cfg.audio.sample_rate // 5, np.float32),
                                Sampling.from_config(self.cfg, steps=1))
        log.info("warmed up %s in %.2f s", self.checkpoint, time.perf_counter() - t0)

    def describe(self) -> dict:
        s = Sampling.from_config(self.cfg)
        return {"checkpoint": self.checkpoint, "stage": self.cfg.train.stage,
                "steps": s.steps, "resolution": self.cfg.resolution, "fps": self.cfg.synth.fps,
                "nfe_per_chunk": s.nfe, "chunk_frames": self.cfg.data.frames,
                "motion_frames": self.cfg.data.motion_frames,
                "audio_scale": s.audio_scale, "ref_scale": s.ref_scale,
                "guidance_input": s.takes_guidance, "seed": s.seed,
                "sample_rate": self.cfg.audio.sample_rate}

    def start(self, req: GenerationRequest) -> Render:
        sampling = Sampling.from_config(self.cfg, steps=req.steps, seed=req.seed,
                                        audio_scale=req.audio_scale, ref_scale=req.ref_scale)
        return self.generator.start(req.image, req.audio, sampling)

    def open_session(self, req: SessionRequest) -> LiveSession:
        sampling = Sampling.from_config(self.cfg, steps=req.steps, seed=req.seed,
                                        audio_scale=req.audio_scale, ref_scale=req.ref_scale)
        return LiveSession(self.generator, req.image, sampling, req.sample_rate,
                           req.audio_format)

    def mp4_stream(self, req: GenerationRequest) -> Mp4Stream:
        return Mp4Stream(req, self.cfg.synth.fps, self.cfg.audio.sample_rate)

    def ts_stream(self, req: GenerationRequest) -> TsStream:
        return TsStream(req, self.cfg.synth.fps, self.cfg.audio.sample_rate)
