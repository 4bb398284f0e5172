"""SynthTalk clips: speech + face + per-frame ground truth, some degraded on purpose.

A clip is a pure function of (config seed, clip index), so a data set regenerates bit-identically
and a shard can be rewritten after a crash without changing its content.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onestep.config import SynthConfig
from onestep.synth.face import Identity, Motion, render
from onestep.synth.speech import mouth_track, phoneme_timeline, synthesize


@dataclass
class Clip:
    clip_id: str
    identity: int
    split: str  # "train" or "test" (test identities are never seen in training)
    frames: np.ndarray  # (F, H, W, 3) uint8, after degradation
    audio: np.ndarray  # (S,) float32 at the config sample rate, after any A/V offset
    clean_frames: np.ndarray  # the undegraded render: the reference for PSNR/SSIM
    labels: dict[str, np.ndarray]  # per-frame ground truth of the *clean* render
    quality: float  # 1 = clean; lower = degraded (FADA trains on quality tiers)
    degradations: dict[str, float] = field(default_factory=dict)
    crf: int = 18  # H.264 quality used when the clip is encoded


def identity_split(identity: int, cfg: SynthConfig) -> str:
    n_test = max(1, int(round(cfg.num_identities * cfg.test_identity_fraction)))
    return "test" if identity < n_test else "train"


def _identity(cfg: SynthConfig, identity: int) -> Identity:
    return Identity.sample(np.random.default_rng([cfg.seed, 1, identity]))


def _box_blur(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    pad = np.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    out = sum(pad[:, dy:dy + f.shape[1], dx:dx + f.shape[2]] for dy in range(3) for dx in range(3))
    return (out / 9 + 0.5).astype(np.uint8)


def _jitter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shifts = rng.integers(-1, 2, size=(len(frames), 2))
    return np.stack([np.roll(f, tuple(s), axis=(0, 1)) for f, s in zip(frames, shifts)])


def make_clip(index: int, cfg: SynthConfig) -> Clip:
    rng = np.random.default_rng([cfg.seed, 2, index])
    identity = int(rng.integers(cfg.num_identities))
    n_frames = int(round(cfg.clip_seconds * cfg.fps))
    seconds = n_frames / cfg.fps

    segments = phoneme_timeline(rng, seconds, rate=rng.uniform(0.8, 1.25))
    audio = synthesize(segments, seconds, cfg.sample_rate, rng, f0=rng.uniform(95, 230),
                       loudness=rng.uniform(0.5, 1.0),
                       noise=cfg.background_noise * rng.uniform(0, 2))
    mouth_open, mouth_width = mouth_track(segments, n_frames, cfg.fps)
    motion = Motion.sample(rng, n_frames, cfg.fps)
    clean = render(_identity(cfg, identity), motion, mouth_open, mouth_width, cfg.resolution)

    frames, degradations, crf = clean, {}, 18
    if rng.random() < cfg.degraded_fraction:
        kinds = rng.permutation(["blur", "compression", "jitter", "offset"])[:rng.integers(1, 3)]
        for kind in kinds:
            if kind == "blur":
                frames = _box_blur(frames)
                degradations["blur"] = 1.0
            elif kind == "jitter":
                frames = _jitter(frames, rng)
                degradations["jitter"] = 1.0
            elif kind == "compression":
                crf = int(rng.integers(36, 46))
                degradations["compression"] = (crf - 30) / 16
            elif kind == "offset":
                shift = int(rng.choice([-1, 1]) * rng.integers(2, 6))  # frames
                audio = np.roll(audio, shift * cfg.sample_rate // cfg.fps)
                degradations["offset"] = shift / 5.0
    penalty = sum(0.35 * abs(v) if k == "offset" else 0.25 * v for k, v in degradations.items())

    return Clip(
        clip_id=f"synthtalk-{cfg.seed:04d}-{index:06d}",
        identity=identity,
        split=identity_split(identity, cfg),
        frames=frames,
        audio=audio,
        clean_frames=clean,
        labels={"mouth_open": mouth_open, "mouth_width": mouth_width,
                "head_x": motion.head_x, "head_y": motion.head_y, "blink": 1 - motion.eyes_open},
        quality=float(max(0.0, 1.0 - penalty)),
        degradations=degradations,
        crf=crf,
    )
