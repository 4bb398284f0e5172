"""Evaluate checkpoints on held-out SynthTalk clips; writes <out>.json and <out>.md.

    python jobs/evaluate.py --checkpoint runs/teacher-tiny --data data/synthtalk \\
        --steps 20 --clips 8 --out reports/eval-teacher

Several --checkpoint NAME=URI pairs evaluate side by side in one table; <out>.png shows the first
held-out clip as each of them generated it, under the ground truth. Metrics: lip-sync (mouth
read from the video vs the ground truth implied by the audio) with shuffled-audio and
ground-truth bounds, best A/V offset, PSNR/SSIM, Fréchet distance on mouth-reader features,
identity similarity, flicker, NFE and compute seconds per second of video.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from onestep import cli
from onestep.checkpoint import CheckpointError, load_generator, resolve_checkpoint
from onestep.evaluation.mouth_reader import load_or_train
from onestep.evaluation.run import (
    evaluate,
    load_eval_clips,
    write_contact_sheet,
    write_report,
)
from onestep.generate import AvatarGenerator, Sampling
from onestep.model import build_model
from onestep.storage import StorageError


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]URI")
    p.add_argument("--data", default="data/synthtalk", help="shards with a held-out test split")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--audio-scale", type=float, default=None)
    p.add_argument("--reader", default="runs/mouth_reader.safetensors",
                   help="mouth reader weights (trained and saved here if missing)")
    p.add_argument("--reader-clips", type=int, default=160,
                   help="SynthTalk clips to train a missing mouth reader on")
    p.add_argument("--untrained", action="store_true",
                   help="also evaluate a freshly initialised network of the first checkpoint's "
                        "config (the floor every trained number is read against)")
    p.add_argument("--out", default="reports/eval")
    p.add_argument("--s3-endpoint-url", default="")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    cli.setup_logging()
    results, reader = {}, None
    videos = {}  # the first clip as each model generated it, for the contact sheet
    try:
        clips = load_eval_clips(args.data, args.s3_endpoint_url, limit=args.clips)
        for spec in args.checkpoint:
            name, _, uri = spec.rpartition("=")
            model, cfg = load_generator(resolve_checkpoint(uri, args.s3_endpoint_url),
                                        args.s3_endpoint_url)
            if reader is None:  # one reader (and one feature space) for every checkpoint
                reader, ceiling = load_or_train(args.reader, cfg.synth, args.reader_clips,
                                                endpoint_url=args.s3_endpoint_url)
            sampling = Sampling.from_config(cfg, steps=args.steps, audio_scale=args.audio_scale)
            name = name or Path(uri).name
            first = []
            results[name] = evaluate(AvatarGenerator(model, cfg), sampling, clips, reader, first)
            videos[name] = first[0]
            if args.untrained and "untrained" not in results:
                torch.manual_seed(cfg.data.seed)
                first = []
                results["untrained"] = evaluate(AvatarGenerator(build_model(cfg), cfg), sampling,
                                                clips, reader, first)
                videos["untrained"] = first[0]
    except (CheckpointError, StorageError, ValueError) as e:
        sys.exit(f"error: {e}")
    command = "python jobs/evaluate.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_report(results, Path(args.out), "onestep evaluation (SynthTalk held-out identities)",
                 command, f"Mouth reader held-out correlation with ground truth: {ceiling:.3f}.\n\n"
                 f"![the first held-out clip, as each model generated it]"
                 f"({Path(args.out).name}.png)")
    write_contact_sheet({"ground truth": clips[0].clean_frames, **videos},
                        Path(args.out).with_suffix(".png"))
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
