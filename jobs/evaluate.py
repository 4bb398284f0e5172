"""Evaluate checkpoints on held-out clips; writes <out>.json and <out>.md.

    python jobs/evaluate.py --checkpoint runs/teacher-tiny --data data/synthtalk \\
        --steps 20 --clips 8 --out reports/eval-teacher
    python jobs/evaluate.py --checkpoint runs/teacher-mine --data s3://bucket/clips \\
        --sync runs/sync-mine/exports/sync --out reports/eval-mine    # ingested footage

Several --checkpoint NAME=URI pairs evaluate side by side in one table; <out>.png shows the first
held-out clip as each of them generated it, under the ground truth. On SynthTalk: lip-sync (the
mouth read from the video vs the ground truth implied by the audio) with shuffled-audio and
ground-truth bounds, best A/V offset, Fréchet distance on mouth-reader features. With --sync
(required for ingested footage, which has no labels): the lip-sync expert's LSE-C / LSE-D /
offset with the same bounds (without labels, the Fréchet distance is on its video embeddings).
Always: PSNR, SSIM (Gaussian, as published), identity similarity, flicker, NFE and compute
seconds per second of video. With --long-seconds: how much the video jumps where chunks hand
over in generations that long (OSA-LCM's chunk-boundary problem), in appearance and in motion.
With --arcface: identity similarity by ArcFace (an ONNX file); without it only a thumbnail
proxy, named as such. With --fid: FID on the Inception papers use
(weights converted once by jobs/convert_weights.py inception); with --fvd: FVD on Kinetics-400
I3D (jobs/convert_weights.py i3d); without them neither is reported, and the report names the
network its Fréchet distance used.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from onestep import cli
from onestep.checkpoint import CheckpointError, load_generator, resolve_checkpoint
from onestep.config import SyncConfig
from onestep.evaluation.fid import FidWeightsError, InceptionFeatures
from onestep.evaluation.fvd import FvdWeightsError, I3DFeatures
from onestep.evaluation.identity import ArcFace, ArcFaceError
from onestep.evaluation.mouth_reader import load_or_train
from onestep.evaluation.run import (
    evaluate,
    is_labelled,
    load_eval_clips,
    long_video_metrics,
    report_path,
    write_contact_sheet,
    write_report,
)
from onestep.generate import AvatarGenerator, Sampling
from onestep.model import build_model
from onestep.storage import StorageError
from onestep.sync.score import SyncExpertError, load_scorer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]URI")
    p.add_argument("--data", default="data/synthtalk", help="shards with a held-out test split")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--audio-scale", type=float, default=None)
    p.add_argument("--ref-scale", type=float, default=None)
    p.add_argument("--rolling-noise", type=float, default=None,
                   help="rolling sampling: later chunks start from the previous one noised to "
                        "this level (default: the export's sample.rolling_noise; 0: off)")
    p.add_argument("--rolling-first-chunk", choices=["gaussian", "reference"], default=None,
                   help="when rolling, the first chunk from Gaussian noise (combined rolling "
                        "sampling) or from the noised portrait (default: the export's)")
    p.add_argument("--long-seconds", type=float, default=0.0,
                   help="also generate this long from --long-clips portraits and measure the "
                        "jumps where chunks hand over (OSA-LCM's long videos; 0: not)")
    p.add_argument("--long-clips", type=int, default=2)
    p.add_argument("--reader", default="runs/mouth_reader.safetensors",
                   help="mouth reader weights (trained and saved here if missing)")
    p.add_argument("--reader-clips", type=int, default=160,
                   help="SynthTalk clips to train a missing mouth reader on")
    p.add_argument("--sync", default=None, metavar="EXPERT",
                   help="score lip-sync with this expert too: an export of jobs/train_sync.py, "
                        "or syncnet_v2 weights converted by jobs/convert_weights.py syncnet")
    p.add_argument("--sync-kind", default="onestep", choices=["onestep", "syncnet_v2"])
    p.add_argument("--fid", default=None, metavar="WEIGHTS",
                   help="FID's Inception as safetensors (jobs/convert_weights.py inception)")
    p.add_argument("--fid-stride", type=int, default=1,
                   help="FID on every N-th frame (1: all)")
    p.add_argument("--fvd", default=None, metavar="WEIGHTS",
                   help="FVD's I3D as safetensors (jobs/convert_weights.py i3d)")
    p.add_argument("--arcface", default=None, metavar="ONNX",
                   help="identity similarity by ArcFace (insightface's ONNX export, e.g. "
                        "w600k_r50.onnx); without it only the thumbnail proxy")
    p.add_argument("--untrained", action="store_true",
                   help="also evaluate a freshly initialised network of the first checkpoint's "
                        "config (the floor every trained number is read against)")
    p.add_argument("--out", default="reports/eval")
    p.add_argument("--s3-endpoint-url", default="")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    if args.long_seconds < 0 or args.long_clips < 1:
        p.error(f"--long-seconds must be ≥ 0 (0: no long videos) and --long-clips ≥ 1, got "
                f"{args.long_seconds:g} and {args.long_clips}")
    cli.setup_logging()
    results, reader, notes = {}, None, []
    videos = {}  # the first clip as each model generated it, for the contact sheet
    try:
        labelled = is_labelled(args.data, args.s3_endpoint_url)
        if not labelled and not args.sync:
            raise ValueError(f"{args.data}: ingested footage has no mouth labels; give a "
                             "lip-sync expert with --sync (see README, Lip-sync expert)")
        scorer = (load_scorer(SyncConfig(kind=args.sync_kind, weights=args.sync),
                              args.s3_endpoint_url) if args.sync else None)
        clips = load_eval_clips(args.data, args.s3_endpoint_url, limit=args.clips,
                                labelled=labelled)
        fid = (InceptionFeatures.load(args.fid, args.s3_endpoint_url, args.fid_stride)
               if args.fid else None)
        arcface = ArcFace.load(args.arcface, args.s3_endpoint_url) if args.arcface else None
        fvd = I3DFeatures.load(args.fvd, args.s3_endpoint_url) if args.fvd else None
        scorers = {"scorer": scorer, "fid": fid, "arcface": arcface, "fvd": fvd}  # every model's
        for spec in args.checkpoint:
            name, _, uri = spec.rpartition("=")
            model, cfg = load_generator(resolve_checkpoint(uri, args.s3_endpoint_url),
                                        args.s3_endpoint_url)
            if labelled and reader is None:  # one reader (one feature space) for every model
                reader, ceiling = load_or_train(args.reader, cfg.synth, args.reader_clips,
                                                endpoint_url=args.s3_endpoint_url)
                notes.append(f"Mouth reader held-out correlation with ground truth: "
                             f"{ceiling:.3f}.")
            sampling = Sampling.from_config(cfg, steps=args.steps, audio_scale=args.audio_scale,
                                            ref_scale=args.ref_scale,
                                            rolling_noise=args.rolling_noise,
                                            rolling_first_chunk=args.rolling_first_chunk)
            name = name or Path(uri).name
            generated, generator = [], AvatarGenerator(model, cfg)
            results[name] = evaluate(generator, sampling, clips, reader, generated, **scorers)
            if args.long_seconds:
                results[name].update(long_video_metrics(generator, sampling, clips,
                                                        args.long_seconds, args.long_clips))
            videos[name] = generated[0]
            if args.untrained and "untrained" not in results:
                torch.manual_seed(cfg.data.seed)
                generated = []
                results["untrained"] = evaluate(AvatarGenerator(build_model(cfg), cfg), sampling,
                                                clips, reader, generated, **scorers)
                videos["untrained"] = generated[0]
    except (CheckpointError, StorageError, SyncExpertError, FidWeightsError, FvdWeightsError,
            ArcFaceError, ValueError) as e:
        sys.exit(f"error: {e}")
    features = next(iter(results.values()))["frechet_features"]
    notes.append(f"Fréchet: the Fréchet distance on {features} features; it ranks models on "
                 "this data and is not FID." + (
                     f" FID: FID's Inception (pt_inception-2015-12-05) from {args.fid} on every "
                     f"frame {args.fid_stride} apart of {len(clips)} clips; papers use thousands "
                     "of frames, so compare FIDs within one table." if fid else "") + (
                     f" FVD: Kinetics-400 I3D (pytorch-i3d's port) from {args.fvd} on the "
                     f"16-frame windows of {len(clips)} clips; compare FVDs within one table."
                     if fvd else ""))
    notes.append(("ArcFace identity: cosine similarity to the reference of ArcFace embeddings "
                  f"({args.arcface}; whole face crops, not landmark-aligned). " if arcface else "")
                 + "Identity proxy: cosine similarity of 8×8 colour thumbnails to the reference, "
                 "not a face-recognition score.")
    if args.long_seconds:
        notes.append(f"Seams: on {min(args.long_clips, len(clips))} generations of "
                     f"{args.long_seconds:g} s (held-out portraits, their audio then the next "
                     "clips'), the mean change across chunk hand-overs over the mean change "
                     "inside chunks, of frames (appearance) and of frame differences (motion); "
                     "1 is seamless.")
    if scorer is not None:
        notes.append(f"Lip-sync expert: {args.sync} ({args.sync_kind}), scored as SyncNet is "
                     f"(offset search ±{scorer.cfg.max_offset} frames).")
    command = "python jobs/evaluate.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    what = "SynthTalk held-out identities" if labelled else "held-out footage"
    notes.append(f"![the first held-out clip, as each model generated it]"
                 f"({Path(args.out).name}.png)")
    write_report(results, Path(args.out), f"onestep evaluation ({what})", command,
                 "\n\n".join(notes))
    write_contact_sheet({"ground truth": clips[0].clean_frames, **videos},
                        report_path(Path(args.out), ".png"))
    print(report_path(Path(args.out), ".md").read_text())


if __name__ == "__main__":
    main()
