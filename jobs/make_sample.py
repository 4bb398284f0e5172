"""Write a held-out SynthTalk portrait (PNG) and speech (WAV) to try generation with.

    python jobs/make_sample.py --out-dir demo --index 0
"""

from __future__ import annotations

import argparse
import io
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from onestep import cli
from onestep.synth import make_clip


def held_out_clip(cfg, start: int = 0):
    """The first test-split (held-out identity) clip at or after `start`, beyond training data."""
    i = cfg.num_clips + start
    while True:
        clip = make_clip(i, cfg)
        if clip.split == "test" and not clip.degradations:
            return clip
        i += 1


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out-dir", default="demo")
    p.add_argument("--index", type=int, default=0)
    cli.add_config_args(p)
    args = p.parse_args(argv)
    cfg = cli.config_from_args(args)
    clip = held_out_clip(cfg.synth, args.index)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(clip.clean_frames[0]).save(out / "face.png")
    (out / "speech.wav").write_bytes(wav_bytes(clip.audio, cfg.synth.sample_rate))
    print(f"wrote {out / 'face.png'} and {out / 'speech.wav'} (clip {clip.clip_id}, "
          f"identity {clip.identity}, held out)")


if __name__ == "__main__":
    main()
