"""Generate a lip-synced MP4 from a portrait and an audio file with a trained checkpoint.

    python jobs/generate.py --checkpoint runs/teacher-tiny --image face.png \\
        --audio speech.wav --steps 20 --out out.mp4

--checkpoint takes a checkpoint folder, or a run folder (its latest checkpoint), local or s3://.
Images: any format PIL reads (centre-cropped, resized). Audio: any format FFmpeg reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from onestep import cli
from onestep.checkpoint import CheckpointError, load_generator, resolve_checkpoint
from onestep.generate import PRECISIONS, AvatarGenerator, Sampling
from onestep.media import MediaError, encode_mp4, load_audio, load_image
from onestep.storage import StorageError


def _check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device on this machine")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--audio", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: from config)")
    p.add_argument("--audio-scale", type=float, default=None)
    p.add_argument("--ref-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rolling-noise", type=float, default=None,
                   help="rolling sampling's noise level (default: from config; 0: off)")
    p.add_argument("--rolling-first-chunk", choices=["gaussian", "reference"], default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: autocast, what a GPU generates fastest with")
    p.add_argument("--s3-endpoint-url", default="")
    args = p.parse_args(argv)
    cli.setup_logging()
    try:
        _check_device(args.device)
        ckpt = resolve_checkpoint(args.checkpoint, args.s3_endpoint_url)
        model, cfg = load_generator(ckpt, args.s3_endpoint_url, args.device)
        image = load_image(args.image, cfg.resolution)
        audio = load_audio(args.audio, cfg.audio.sample_rate)
        sampling = Sampling.from_config(cfg, steps=args.steps, audio_scale=args.audio_scale,
                                        ref_scale=args.ref_scale, seed=args.seed,
                                        rolling_noise=args.rolling_noise,
                                        rolling_first_chunk=args.rolling_first_chunk)
    except (CheckpointError, StorageError, MediaError, ValueError) as e:
        sys.exit(f"error: {e}")
    gen = AvatarGenerator(model, cfg, args.device, args.precision)
    frames, stats = gen.generate(image, audio, sampling)
    data = encode_mp4(frames, cfg.synth.fps, audio, cfg.audio.sample_rate)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    print(f"wrote {out}: {stats.frames} frames ({stats.frames / cfg.synth.fps:.2f} s) in "
          f"{stats.chunks} chunks, {stats.nfe_per_chunk} NFE per chunk, {stats.seconds:.2f} s "
          f"compute (checkpoint {ckpt})")


if __name__ == "__main__":
    main()
