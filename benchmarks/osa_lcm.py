"""OSA-LCM's ablations (its Tables 1 and 3) on SynthTalk, with the seams of 20-second videos.

    python jobs/prepare_data.py --out data/synthtalk --set synth.num_clips=480 \\
        --set synth.clips_per_shard=24
    python benchmarks/osa_lcm.py --teacher reports/pretrained/teacher --data data/synthtalk \\
        --reader reports/pretrained/mouth_reader.safetensors --clips 640 --set run.root=runs \\
        --compare "TurboTalk 1-step=runs/adversarial/exports/1step" --out reports/osa_lcm

Every trained row is one `jobs/distill.py --stage osa_lcm` run from the same teacher at the same
`--clips`, differing only in the switches its row names: first what Adv-LCM is made of (plain
consistency distillation, + the avatar discriminator, + its progressive forward process, + the
motion loss), then the second stage from that Adv-LCM at the same budget (a plain fine-tune
against the editing fine-tune), then how the EFT student is sampled (Gaussian, rolling from the
portrait, combined rolling at three noise levels). Every model, the teacher and any `--compare`
model of another recipe included, is also measured on `--long-seconds` generations: the jump
in appearance and in motion where chunks hand over, over the change inside chunks
(onestep.evaluation.metrics.boundary_jump), the problem EFT exists to solve. Rows are recorded
one by one in <out>.json (benchmarks/_ledger.py), so the report fills up across calls; a call
with another teacher, reader, data or budget is refused rather than mixed in. A reading of the
results, written by a person, goes in <out>-reading.md; the report includes it as it is.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import _ledger
from _report import EVAL_COLUMNS, SEAM_COLUMNS, eval_table, plot_sync_frechet

from onestep import cli
from onestep.checkpoint import resolve_checkpoint
from onestep.evaluation.mouth_reader import load_or_train
from onestep.train.ray_job import export_location, run_location

ADV = "Adv-LCM (OSA-LCM Table 1): what the first stage is made of, 1 step from Gaussian"
STEPS = "Steps (Table 1): the consistency models sampled in 4 and 2 steps"
SECOND = ("Second stage from Adv-LCM, same budget (Table 1, lower; Table 3): fine-tune against "
          "editing fine-tune, and how the EFT student is sampled")
GAUSSIAN = ["--rolling-noise", "0"]
EFT_WINDOW = "data.frames=14"  # two 8-frame fragments overlapping by the 2 motion frames
# key → (section, name, overrides, evaluation arguments, row whose run it evaluates instead of
# training, row whose export it fine-tunes)
ROWS = {
    "lcm": (ADV, "LCM (consistency loss only)",
            ["osa_lcm.adv_weight=0", "osa_lcm.motion_weight=0"], [], None, None),
    "adv": (ADV, "+ avatar discriminator, fixed noise bound",
            ["osa_lcm.motion_weight=0", "osa_lcm.disc_noise_iterations=0"], [], None, None),
    "progressive": (ADV, "+ progressive forward process", ["osa_lcm.motion_weight=0"], [],
                    None, None),
    "adv-lcm": (ADV, "+ motion loss (Adv-LCM)", [], [], None, None),
    "lcm-4": (STEPS, "LCM, 4 steps", [], ["--steps", "4"], "lcm", None),
    "lcm-2": (STEPS, "LCM, 2 steps", [], ["--steps", "2"], "lcm", None),
    "adv-lcm-4": (STEPS, "Adv-LCM, 4 steps", [], ["--steps", "4"], "adv-lcm", None),
    "adv-lcm-2": (STEPS, "Adv-LCM, 2 steps", [], ["--steps", "2"], "adv-lcm", None),
    "ft": (SECOND, "+ plain fine-tune (from Gaussian)", ["osa_lcm.phase=ft", EFT_WINDOW], [],
           None, "adv-lcm"),
    "eft": (SECOND, "+ EFT, sampled from Gaussian (OSA-LCM)", ["osa_lcm.phase=eft", EFT_WINDOW],
            GAUSSIAN, None, "adv-lcm"),
    "eft-rs": (SECOND, "+ EFT, rolling sampling from the portrait (noise 0.7)", [],
               ["--rolling-noise", "0.7", "--rolling-first-chunk", "reference"], "eft", None),
    "eft-crs-0.5": (SECOND, "+ EFT, combined rolling sampling, noise 0.5", [],
                    ["--rolling-noise", "0.5"], "eft", None),
    "eft-crs": (SECOND, "+ EFT, combined rolling sampling, noise 0.7 (its export's)", [],
                ["--rolling-noise", "0.7"], "eft", None),
    "eft-crs-0.9": (SECOND, "+ EFT, combined rolling sampling, noise 0.9", [],
                    ["--rolling-noise", "0.9"], "eft", None),
}
# The rows reports/distill.md shows beside the other recipes' (benchmarks/distill_report.py).
DISTILL_ROWS = {"adv-lcm-4": "Adv-LCM, 4 steps", "adv-lcm-2": "Adv-LCM, 2 steps",
                "adv-lcm": "Adv-LCM, 1 step", "eft": "Adv-LCM + EFT, 1 step (OSA-LCM)",
                "eft-crs": "OSA-LCM, combined rolling sampling"}
COLUMNS = [*EVAL_COLUMNS[:-2], *SEAM_COLUMNS, *EVAL_COLUMNS[-2:]]


class Ledger(_ledger.Ledger):
    def written(self) -> None:
        plot_sync_frechet(_ledger.named_metrics(self.data, ROWS), self.path.with_suffix(".png"))
        _ledger.write_markdown(self.path, markdown(self.data, self.path))


def markdown(data: dict, path: Path) -> list[str]:
    setup, rows, refs = data["setup"], data["rows"], data["references"]
    lines = ["# OSA-LCM on SynthTalk: Tables 1 and 3's ablations, and the seams of long videos",
             "", (f"Students of one teacher, every trained row at {setup['clips']} clips, "
                  f"evaluated on {setup['eval_clips']} held-out clips; seams on "
                  f"{setup['long_clips']} generations of {setup['long_seconds']:g} s (the mean "
                  "change across chunk hand-overs over the mean change inside chunks; 1 is "
                  f"seamless). Made by `{data['command']}`; shared settings: "
                  f"{', '.join(setup['settings']) or 'none'}."), ""]
    if refs:
        lines += ["## References: the teacher, and 1-step students of the other recipes", "",
                  *eval_table({r["name"]: r["metrics"] for r in refs.values()}, COLUMNS), ""]
    lines += _ledger.section_tables(ROWS, rows, COLUMNS)
    lines += [f"![lip-sync and Fréchet distance of every row]({path.with_suffix('.png').name})",
              ""]
    return lines + _ledger.closing_lines(data, path, ("references", "rows"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher checkpoint or run")
    p.add_argument("--data", required=True, help="SynthTalk shards (training and held-out test)")
    p.add_argument("--clips", type=int, required=True, help="training clips of every row")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=URI",
                   help="another recipe's student, evaluated beside the rows (repeatable)")
    p.add_argument("--prefix", default="osa", help="run names: <prefix>-<row key>")
    p.add_argument("--only", action="append", default=[], choices=list(ROWS),
                   help="run only these rows (repeatable; default: every missing row)")
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--long-seconds", type=float, default=20.0)
    p.add_argument("--long-clips", type=int, default=2)
    p.add_argument("--reader", default="runs/mouth_reader.safetensors")
    p.add_argument("--out", default="reports/osa_lcm")
    cli.add_config_args(p)
    args = p.parse_args()
    cli.setup_logging()
    cfg = cli.config_from_args(args, [f"data.uri={args.data}", "train.stage=osa_lcm"])
    endpoint = cfg.run.s3_endpoint_url
    load_or_train(args.reader, cfg.synth, endpoint_url=endpoint)
    teacher = resolve_checkpoint(args.teacher, endpoint)
    setup = {**_ledger.distillation_setup(args, teacher, endpoint),
             "long_seconds": args.long_seconds, "long_clips": args.long_clips}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out.with_suffix(".json"), setup, "python benchmarks/osa_lcm.py " + shlex.join(
        _ledger.without_choices(sys.argv[1:], ("--only", "--compare"))))
    evaluate = _ledger.Evaluator(out, args.data, args.eval_clips, args.reader, endpoint)
    long = ["--long-seconds", str(args.long_seconds), "--long-clips", str(args.long_clips)]
    references = [("teacher", "teacher (multi-CFG)", teacher)] + [
        (f"compare-{name}", name, uri) for name, _, uri in
        (spec.partition("=") for spec in args.compare)]
    for key, name, uri in references:
        if not ledger.has("references", key):
            ledger.record("references", key, {"name": name, **evaluate(key, name, uri,
                                                                       extra=long)})

    exports = {}
    for key, (_, name, overrides, extra, same_as, student_of) in ROWS.items():
        cfg.run.name = f"{args.prefix}-{same_as or key}"
        exports[key] = export_location(cfg, "1step").uri
        if (args.only and key not in args.only) or ledger.has("rows", key):
            continue
        train = None
        if same_as is None:
            if student_of and student_of not in ledger.data["rows"]:
                continue  # trained once the model it fine-tunes is in the table
            student = ["--student", exports[student_of]] if student_of else []
            sets = [f"data.uri={args.data}", *args.overrides, f"run.name={cfg.run.name}",
                    f"train.total_clips={args.clips}", *overrides]
            cmd = ["--stage", "osa_lcm", "--teacher", args.teacher, *student, "--config",
                   args.config, *[a for s in sets for a in ("--set", s)]]
            train = _ledger.train_row(name, cmd, exports[key], run_location(cfg), endpoint)
        elif same_as not in ledger.data["rows"]:
            continue  # evaluated once the row it shares a run with has trained
        ledger.record("rows", key, {"name": name, "train": train,
                                    **evaluate(key, name, exports[key], extra=[*extra, *long])})
        print(f"# recorded {name!r} in {ledger.path}", flush=True)
    print(ledger.path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
