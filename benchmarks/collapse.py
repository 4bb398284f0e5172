"""Where the collapse guards' default thresholds come from: the checks' metrics for healthy and
for collapsed generators on the same held-out clips, each against the teacher's samples.

    python benchmarks/collapse.py --teacher reports/pretrained/teacher \\
        --student reports/pretrained/student --data data/synthtalk --clips 8 --out reports/collapse

Healthy: the DMD student sampled with 4, 2 and 1 steps (students a distillation should keep).
Collapsed: an untrained network, and the student's own samples made static (first frame held),
solid (mid grey) and saturated (thresholded to 0/255). Perturbed: the student with its weights
perturbed by Gaussian noise of --noise × each tensor's own std. The teacher against the ground-truth
clips shows what the teacher stage's guards (which have no teacher) compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _report import header, save

from onestep.checkpoint import load_generator, resolve_checkpoint
from onestep.config import ValidationConfig
from onestep.evaluation import collapse
from onestep.evaluation.mouth_reader import load_or_train
from onestep.evaluation.run import evaluate, load_eval_clips
from onestep.evaluation.validation import lip_sync
from onestep.generate import AvatarGenerator, Sampling
from onestep.model import build_model


def samples(model, cfg, clips, reader, steps=None) -> tuple[list[np.ndarray], float]:
    videos = []
    result = evaluate(AvatarGenerator(model.eval(), cfg), Sampling.from_config(cfg, steps=steps),
                      clips, reader, videos)
    return videos, lip_sync(result)[0]


def perturbed(uri: str, scale: float, seed: int = 1):
    torch.manual_seed(seed)
    model, cfg = load_generator(uri)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale * p.std().clamp_min(1e-3))
    return model, cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="reports/pretrained/teacher")
    p.add_argument("--student", default="reports/pretrained/student")
    p.add_argument("--reader", default="reports/pretrained/mouth_reader.safetensors")
    p.add_argument("--data", default="data/synthtalk", help="SynthTalk shards (test split)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--noise", default="0.3,1,3")
    p.add_argument("--out", default="reports/collapse")
    args = p.parse_args()
    v = ValidationConfig()
    teacher, teacher_cfg = load_generator(resolve_checkpoint(args.teacher))
    student_uri = resolve_checkpoint(args.student)
    student, student_cfg = load_generator(student_uri)
    clips = load_eval_clips(args.data, limit=args.clips)
    reader, _ = load_or_train(args.reader, teacher_cfg.synth)
    ref = []
    ref_sync, gt_sync = lip_sync(evaluate(AvatarGenerator(teacher, teacher_cfg),
                                          Sampling.from_config(teacher_cfg), clips, reader, ref))

    rows = {}

    def row(name: str, kind: str, videos: list[np.ndarray], sync: float, reference=ref,
            reference_sync=ref_sync) -> None:
        m = {f"val_{k}": x for k, x in
             collapse.collapse_metrics(videos, reference, sync, reference_sync).items()}
        failed = collapse.failing(m, v, {c.key for c in collapse.CHECKS})
        rows[name] = {"kind": kind, **m, "fails": [c.failure for c in failed]}
        print(name, rows[name], flush=True)

    row("teacher vs the clips", "reference", ref, ref_sync, [c.clean_frames for c in clips],
        gt_sync)
    student_videos = {}
    for steps in (4, 2, 1):
        videos, sync = samples(student, student_cfg, clips, reader, steps)
        student_videos[steps] = videos
        row(f"DMD student, {steps} step{'s' * (steps > 1)}", "healthy", videos, sync)
    torch.manual_seed(0)
    row("untrained network", "collapsed", *samples(build_model(teacher_cfg), teacher_cfg, clips,
                                                   reader))
    for scale in (float(s) for s in args.noise.split(",")):
        row(f"student + noise × {scale:g} std", "perturbed",
            *samples(*perturbed(student_uri, scale), clips, reader))
    own = student_videos[4]
    row("static (first frame held)", "collapsed",
        [np.repeat(x[:1], len(x), 0) for x in own], 0.0)
    row("solid grey", "collapsed", [np.full_like(x, 128) for x in own], 0.0)
    row("saturated (0/255)", "collapsed", [np.where(x > 127, 255, 0).astype(np.uint8)
                                           for x in own], 0.0)

    meta, lines = header("Collapse guards: the checks on healthy and collapsed generators",
                         "collapse.py", "CPU")
    keys = collapse.CHECKS
    lines += [f"{len(clips)} held-out clips of `{args.data}`; reference: the teacher's samples "
              f"(`{args.teacher}`), except the first row. Bounds: the defaults of "
              "`validation.*` (README: Collapse guards).", "",
              "| generator | kind | " + " | ".join(
                  f"{c.key} ({'≥' if c.minimum else '≤'} {getattr(v, c.threshold):g})"
                  for c in keys) + " | fails |",
              "|---|---|" + "---|" * (len(keys) + 1)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['kind']} | " + " | ".join(
            f"{r[f'val_{c.key}']:.3f}" for c in keys) + f" | {', '.join(r['fails']) or '—'} |")
    def caught(kind: str) -> str:
        of = [r for r in rows.values() if r["kind"] == kind]
        return f"{sum(bool(r['fails']) for r in of)}/{len(of)}"

    lines += ["", f"Failing a check: healthy {caught('healthy')}, collapsed {caught('collapsed')}, "
              f"perturbed {caught('perturbed')} (noise of a tensor's own scale breaks a network; "
              "0.3 of it degrades one, which is not a collapse).", "",
              "The teacher moves more than the clips (motion ratio ≫ 1: SynthTalk's clean "
              "renders hold still but for the mouth, the teacher's samples shimmer), which is "
              "why motion has only a lower bound."]
    save(Path(args.out), meta, rows, lines)


if __name__ == "__main__":
    main()
