"""Rendered talking-head footage, for ingest's tests and benchmarks: a real face photograph moved
and scaled across larger frames, scene by scene, with a speech track whose timeline opens its
mouth.

No talking-head footage can be downloaded here, and ingest's face detector must be shown a real
face, not a cartoon: the photograph is scikit-image's `astronaut` (Eileen Collins, NASA, public
domain), which ships inside the package. Each scene has its own background (so cuts are real
cuts) and zero or more faces that glide from a start to an end placement, optionally blurred (a
soft, low-quality face). The audio is SynthTalk's speech; `audio_offset` shifts it against the
mouth (a badly synced source), `vfr` makes frame durations alternate (a variable-rate phone
video). Frames are encoded as they are drawn: a 10-minute 1080p render never exists in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from onestep.synth.speech import mouth_track, phoneme_timeline, synthesize

# The face in astronaut.png: a square patch around it (x0, y0, side), the face's own side in it
# (what a detector's box covers) and the mouth (centre x, y, half-width as fractions of the patch).
PATCH = (151, 45, 136)
FACE_IN_PATCH = 85 / 136
MOUTH = (0.53, 0.72, 0.11)


@dataclass
class Face:
    """Placement at the scene's start and end: centre x, y as fractions of the frame's width and
    height, the face's side as a fraction of its height."""

    start: tuple[float, float, float]
    end: tuple[float, float, float] | None = None  # None: it stays where it starts
    blur: float = 0.0  # Gaussian blur radius, in pixels of a 136-pixel face patch

    def at(self, u: float) -> tuple[float, float, float]:
        end = self.end or self.start
        return tuple(a + (b - a) * u for a, b in zip(self.start, end))


@dataclass
class Scene:
    seconds: float
    faces: list[Face] = field(default_factory=list)


@dataclass
class Footage:
    """What was rendered: where each face was (pixels) at any time, for checking crops."""

    scenes: list[Scene]
    width: int
    height: int

    def faces_at(self, t: float) -> list[tuple[float, float, float]]:
        """(centre x, centre y, face side) in pixels of the faces on screen at `t` seconds."""
        start = 0.0
        for scene in self.scenes:
            if t < start + scene.seconds:
                u = (t - start) / scene.seconds
                return [(x * self.width, y * self.height, s * self.height)
                        for x, y, s in (f.at(u) for f in scene.faces)]
            start += scene.seconds
        return []


def _background(width: int, height: int, seed: int) -> Image.Image:
    """A smooth two-colour gradient: distinct per scene, and nothing a face detector fires on."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    ramp = np.linspace(0, 1, width)[None, :, None] * 0.7 + np.linspace(0, 1, height)[:, None,
                                                                                   None] * 0.3
    return Image.fromarray((a + (b - a) * ramp).astype(np.uint8))


def _patch() -> Image.Image:
    from skimage.data import astronaut

    x0, y0, side = PATCH
    return Image.fromarray(astronaut()[y0:y0 + side, x0:x0 + side])


def _face(patch: Image.Image, opening: float, blur: float) -> Image.Image:
    face = patch.copy()
    mx, my, half = (v * face.width for v in MOUTH)
    height = face.width * (0.008 + 0.05 * opening)
    ImageDraw.Draw(face).ellipse((mx - half, my - height, mx + half, my + height),
                                 fill=(70, 20, 25))
    return face.filter(ImageFilter.GaussianBlur(blur)) if blur else face


def render_footage(path: Path, scenes: list[Scene], width: int = 640, height: int = 360,
                   fps: float = 30.0, sample_rate: int = 16000, audio_offset: float = 0.0,
                   vfr: bool = False, audio: bool = True, seed: int = 0) -> Footage:
    """Write the scenes as one MP4 (H.264, + AAC when `audio`) to `path`."""
    seconds = sum(s.seconds for s in scenes)
    rng = np.random.default_rng(seed)
    timeline = phoneme_timeline(rng, seconds + abs(audio_offset) + 1, 4.5)
    n_frames = int(seconds * fps) + 2
    opening, _ = mouth_track(timeline, n_frames, int(round(fps)))
    patch = _patch()
    with av.open(str(path), "w", format="mp4") as box:
        video = box.add_stream("libx264", rate=int(round(fps)))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 90000)
        video.options = {"crf": "20", "preset": "ultrafast"}
        if audio:  # every stream exists before the first packet is written
            sound = box.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
        t, k, start = 0.0, 0, 0.0
        for index, scene in enumerate(scenes):
            background = _background(width, height, seed * 1000 + index)
            while t < start + scene.seconds - 1e-9:
                frame = background.copy()
                u = (t - start) / scene.seconds
                for face in scene.faces:
                    x, y, side = face.at(u)
                    px = max(2, int(round(side * height / FACE_IN_PATCH)))
                    image = _face(patch, float(opening[min(k, n_frames - 1)]), face.blur)
                    frame.paste(image.resize((px, px), Image.Resampling.BILINEAR),
                                (int(round(x * width - px / 2)), int(round(y * height - px / 2))))
                picture = av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")
                picture.pts = int(round(t * 90000))
                box.mux(video.encode(picture))
                step = (0.5 if k % 2 else 1.5) / fps if vfr else 1 / fps
                t, k = t + step, k + 1
            start += scene.seconds
        box.mux(video.encode())
        if audio:
            speech = synthesize(timeline, seconds + abs(audio_offset) + 1, sample_rate, rng,
                                f0=180.0, loudness=0.8, noise=0.05)
            shift = int(round(audio_offset * sample_rate))  # > 0: the voice comes late
            track = np.roll(speech, shift)[:int(seconds * sample_rate)]
            for a in range(0, len(track), 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(track[None, a:a + 1024]),
                                                   format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = sample_rate, a
                box.mux(sound.encode(chunk))
            box.mux(sound.encode())
    return Footage(scenes, width, height)
