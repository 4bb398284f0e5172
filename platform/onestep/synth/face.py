"""Cartoon talking heads rendered with numpy: identity, head motion, blinks and a driven mouth.

Shapes are soft-edged ellipses drawn at 2× and box-downsampled, so that sub-pixel mouth motion is
still visible at 32×32 — which is what makes lip-sync learnable at the CPU `tiny` size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Identity:
    face_rx: float  # half-axes in image fractions
    face_ry: float
    skin: np.ndarray  # RGB in [0, 1]
    hair: np.ndarray
    hair_height: float
    lips: np.ndarray
    eye_spacing: float
    eye_size: float
    bg_top: np.ndarray
    bg_bottom: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Identity":
        tone = rng.uniform(0.35, 0.95)
        skin = np.array([tone, tone * rng.uniform(0.72, 0.85), tone * rng.uniform(0.55, 0.72)])
        return cls(
            face_rx=rng.uniform(0.26, 0.34), face_ry=rng.uniform(0.33, 0.40), skin=skin,
            hair=rng.uniform(0.0, 0.6, 3) * rng.uniform(0.3, 1.0),
            hair_height=rng.uniform(0.05, 0.16),
            lips=np.array([rng.uniform(0.55, 0.85), rng.uniform(0.15, 0.35), rng.uniform(0.2, 0.4)]),
            eye_spacing=rng.uniform(0.09, 0.13), eye_size=rng.uniform(0.035, 0.05),
            bg_top=rng.uniform(0.1, 0.9, 3), bg_bottom=rng.uniform(0.1, 0.9, 3),
        )


@dataclass(frozen=True)
class Motion:
    """Per-frame ground truth that is not the mouth: head offset (x, y) and eye openness."""

    head_x: np.ndarray
    head_y: np.ndarray
    eyes_open: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator, n_frames: int, fps: int) -> "Motion":
        t = np.arange(n_frames) / fps
        sway = rng.uniform(0.005, 0.03) * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t
                                                  + rng.uniform(0, 6.28))
        nod = rng.uniform(0.003, 0.02) * np.sin(2 * np.pi * rng.uniform(0.2, 0.7) * t
                                                 + rng.uniform(0, 6.28))
        eyes = np.ones(n_frames)
        frame = int(rng.integers(0, max(1, int(2.0 * fps))))
        while frame < n_frames:  # blinks every 2–5 s, ~0.2 s each
            for k, openness in enumerate([0.5, 0.0, 0.0, 0.5]):
                if frame + k < n_frames:
                    eyes[frame + k] = openness
            frame += int(rng.uniform(2.0, 5.0) * fps)
        return cls(sway.astype(np.float32), nod.astype(np.float32), eyes.astype(np.float32))


def _ellipse_alpha(x, y, cx, cy, rx, ry, px):
    """Soft coverage of an ellipse; `px` is one pixel in image units (anti-aliasing width)."""
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    dist = (r - 1.0) * np.minimum(rx, ry)
    return np.clip(0.5 - dist / px, 0.0, 1.0)


def render(identity: Identity, motion: Motion, mouth_open: np.ndarray, mouth_width: np.ndarray,
           resolution: int) -> np.ndarray:
    """Render frames as uint8 (F, H, W, 3)."""
    n = len(mouth_open)
    s = resolution * 2  # supersample
    coords = (np.arange(s) + 0.5) / s
    y, x = np.meshgrid(coords, coords, indexing="ij")
    x, y = x[None], y[None]  # broadcast over frames
    px = 1.0 / s
    col = lambda v: v[None, None, None, :]  # noqa: E731  (RGB → broadcastable)
    a3 = lambda a: a[..., None]  # noqa: E731

    img = col(identity.bg_top) * (1 - a3(y)) + col(identity.bg_bottom) * a3(y)
    img = np.broadcast_to(img, (n, s, s, 3)).copy()
    cx = (0.5 + motion.head_x)[:, None, None]
    cy = (0.52 + motion.head_y)[:, None, None]
    rx, ry = identity.face_rx, identity.face_ry

    hair = _ellipse_alpha(x, y, cx, cy - identity.hair_height, rx * 1.08, ry * 0.9, px)
    img = img * (1 - a3(hair)) + col(identity.hair) * a3(hair)
    face = _ellipse_alpha(x, y, cx, cy, rx, ry, px)
    img = img * (1 - a3(face)) + col(identity.skin) * a3(face)

    eye_h = identity.eye_size * np.maximum(motion.eyes_open, 0.08)[:, None, None]
    for side in (-1, 1):
        ex = cx + side * identity.eye_spacing
        white = _ellipse_alpha(x, y, ex, cy - 0.07, identity.eye_size * 1.3, eye_h, px)
        img = img * (1 - a3(white)) + col(np.array([0.97, 0.97, 0.97])) * a3(white)
        pupil = _ellipse_alpha(x, y, ex, cy - 0.07, identity.eye_size * 0.6, eye_h * 0.8, px)
        img = img * (1 - a3(pupil)) + col(np.array([0.08, 0.06, 0.05])) * a3(pupil)

    mw = (0.06 + 0.07 * mouth_width)[:, None, None]
    mh = (0.012 + 0.09 * mouth_open)[:, None, None]
    my = cy + 0.17
    lips = _ellipse_alpha(x, y, cx, my, mw + 0.015, mh + 0.015, px)
    img = img * (1 - a3(lips)) + col(identity.lips) * a3(lips)
    inner = _ellipse_alpha(x, y, cx, my, mw, mh * np.clip(mouth_open * 1.5, 0, 1)[:, None, None]
                           + 1e-4, px)
    img = img * (1 - a3(inner)) + col(np.array([0.25, 0.03, 0.05])) * a3(inner)

    img = img.reshape(n, resolution, 2, resolution, 2, 3).mean(axis=(2, 4))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
