"""Speech-like audio from a phoneme timeline, deterministic from a seed.

No speech corpus can be downloaded here, so SynthTalk synthesises its own: syllables from a small
phoneme inventory (vowels as formant pairs, plosive bursts, fricative noise, bilabial closures),
with a pitch contour, speaking rate, pauses and loudness. What matters for onestep is not realism
but that the *same timeline* drives the mouth in the video, so lip-sync is learnable and measurable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phone:
    name: str
    kind: str  # vowel | plosive | fricative | nasal | pause
    mouth_open: float  # 0 closed … 1 wide open
    mouth_width: float  # 0 rounded … 1 spread
    f1: float = 0.0  # formants (Hz) for voiced sounds
    f2: float = 0.0


VOWELS = [
    Phone("a", "vowel", 1.00, 0.60, 730, 1090),
    Phone("e", "vowel", 0.60, 0.80, 530, 1840),
    Phone("i", "vowel", 0.30, 1.00, 270, 2290),
    Phone("o", "vowel", 0.75, 0.25, 570, 840),
    Phone("u", "vowel", 0.35, 0.10, 300, 870),
]
CONSONANTS = [
    Phone("p", "plosive", 0.00, 0.50),
    Phone("b", "plosive", 0.00, 0.50),
    Phone("t", "plosive", 0.25, 0.60),
    Phone("k", "plosive", 0.30, 0.50),
    Phone("f", "fricative", 0.10, 0.55),
    Phone("s", "fricative", 0.15, 0.75),
    Phone("m", "nasal", 0.00, 0.50, 250, 1000),
]
PAUSE = Phone("_", "pause", 0.05, 0.50)


@dataclass(frozen=True)
class Segment:
    phone: Phone
    start: float  # seconds
    duration: float


def phoneme_timeline(rng: np.random.Generator, seconds: float, rate: float) -> list[Segment]:
    """CV syllables grouped into words, words into phrases separated by pauses.

    `rate` scales durations (1.0 ≈ 5 syllables/s). A pause may open the clip so that silence
    at the start is in the training distribution too.
    """
    segments: list[Segment] = []
    t = 0.0
    if rng.random() < 0.3:
        d = rng.uniform(0.1, 0.3)
        segments.append(Segment(PAUSE, t, d))
        t += d
    while t < seconds:
        for _ in range(rng.integers(1, 4)):  # syllables per word
            if rng.random() < 0.8:
                c = CONSONANTS[rng.integers(len(CONSONANTS))]
                d = rng.uniform(0.05, 0.09) / rate
                segments.append(Segment(c, t, d))
                t += d
            v = VOWELS[rng.integers(len(VOWELS))]
            d = rng.uniform(0.10, 0.20) / rate
            segments.append(Segment(v, t, d))
            t += d
        gap = rng.uniform(0.15, 0.45) if rng.random() < 0.35 else rng.uniform(0.02, 0.06)
        segments.append(Segment(PAUSE, t, gap / rate))
        t += gap / rate
    return segments


def _per_sample(segments: list[Segment], n: int, sr: int, attr) -> np.ndarray:
    """Piecewise-constant curve of `attr(phone)` sampled at `sr` for n samples."""
    starts = np.array([s.start for s in segments])
    values = np.array([attr(s.phone) for s in segments], dtype=np.float64)
    idx = np.searchsorted(starts, np.arange(n) / sr, side="right") - 1
    return values[np.clip(idx, 0, len(segments) - 1)]


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average with edge padding: models articulators that cannot jump."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    pad = width // 2
    return np.convolve(np.pad(x, (pad, width - 1 - pad), mode="edge"), kernel, mode="valid")


def synthesize(segments: list[Segment], seconds: float, sr: int, rng: np.random.Generator,
               f0: float, loudness: float, noise: float) -> np.ndarray:
    """Render the timeline to a float32 waveform in [-1, 1].

    Voiced sounds are additive harmonics of a pitch contour shaped by a two-formant envelope;
    fricatives are high-passed noise; plosives a closure (silence) ending in a short burst.
    """
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    is_voiced = _per_sample(segments, n, sr, lambda p: p.kind in ("vowel", "nasal"))
    nasal = _per_sample(segments, n, sr, lambda p: p.kind == "nasal")
    fric = _per_sample(segments, n, sr, lambda p: p.kind == "fricative")
    bright = _per_sample(segments, n, sr, lambda p: p.name == "s")
    # Formants carry over consonants from the previous vowel, then glide (co-articulation).
    last = {"f1": 500.0, "f2": 1500.0}

    def formant(key):
        def get(p):
            if p.kind in ("vowel", "nasal"):
                last[key] = getattr(p, key)
            return last[key]
        return get

    f1 = _smooth(_per_sample(segments, n, sr, formant("f1")), int(0.03 * sr))
    last.update(f1=500.0, f2=1500.0)
    f2 = _smooth(_per_sample(segments, n, sr, formant("f2")), int(0.03 * sr))
    voiced_env = _smooth(is_voiced * (1 - 0.6 * nasal), int(0.008 * sr))
    fric_env = _smooth(fric, int(0.008 * sr))

    drift = rng.uniform(0.3, 1.2)
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * drift * t + rng.uniform(0, 6.28)) - 0.05 * t / seconds)
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    voice = np.zeros(n)
    for k in range(1, int(3800 // f0) + 1):
        fk = k * pitch
        amp = (np.exp(-(((fk - f1) / 90.0) ** 2)) + 0.6 * np.exp(-(((fk - f2) / 140.0) ** 2))
               + 0.05 / k)
        voice += amp * np.sin(k * phase)
    voice *= voiced_env / 3.0

    white = rng.standard_normal(n)
    hiss = np.diff(white, prepend=0.0)
    hiss = np.where(bright > 0.5, np.diff(hiss, prepend=0.0) * 0.6, hiss)
    out = voice + 0.25 * fric_env * hiss

    for s in segments:  # plosive release bursts
        if s.phone.kind == "plosive":
            a = int((s.start + s.duration) * sr)
            b = min(n, a + int(0.015 * sr))
            if a < n:
                out[a:b] += 0.5 * white[a:b] * np.linspace(1, 0, b - a)

    peak = np.max(np.abs(out)) + 1e-8
    out = out / peak * 0.6 * loudness
    out += noise * loudness * 0.1 * rng.standard_normal(n)
    return np.clip(out, -1, 1).astype(np.float32)


def mouth_track(segments: list[Segment], n_frames: int, fps: int,
                smoothing_s: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mouth opening and width: phone targets with co-articulation smoothing."""
    grid = 1000  # 1 ms resolution, then sampled at frame centres
    n = int(np.ceil(n_frames / fps * grid)) + 1
    open_ = _smooth(_per_sample(segments, n, grid, lambda p: p.mouth_open),
                    int(smoothing_s * grid))
    width = _smooth(_per_sample(segments, n, grid, lambda p: p.mouth_width),
                    int(smoothing_s * grid))
    centres = ((np.arange(n_frames) + 0.5) / fps * grid).astype(int).clip(0, n - 1)
    return open_[centres].astype(np.float32), width[centres].astype(np.float32)
