"""TurboTalk's ablations (its Tables 2–4) on SynthTalk: adversarial-stage variants of one student.

    python benchmarks/ablations.py --student runs/dmd-tiny/exports/4step --data data/synthtalk \\
        --clips-per-phase 640 --set run.root=runs --set adversarial.warmup_steps=20 \\
        --out reports/ablations

Every row is one `jobs/distill.py --stage adversarial` run from the same DMD student, differing
from the full recipe only in the switches named in its row, at an equal budget of generator
updates (direct 4→1 trains all the progressive phases' clips in its one phase). The rows build
up the recipe as TurboTalk's ablation does (base → + progressive → + dynamic timesteps →
+ self-compare) and then change one component of the full recipe: the GAN loss, R1/R2, and
the two terms TurboTalk does not have or needs, the regression anchor and the generator's GAN loss.

The command of each run is printed before it starts, so any row can be rerun alone. A row whose
1-step model is already exported is not retrained and an interrupted one is resumed, so the
script can simply be run again after an interruption. Finally all 1-step models are evaluated
together by one `jobs/evaluate.py` call, written to <out>.json/.md with the commands.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from onestep import cli
from onestep.checkpoint import checkpoint_names
from onestep.train.ray_job import export_location, run_location

ROOT = Path(__file__).resolve().parent.parent

DIRECT = "adversarial.phases=[1]"
# name → (run-name suffix, overrides of the full recipe)
VARIANTS = {
    "base: direct 4→1": ("direct-base", [DIRECT,
                                          "adversarial.dynamic_timesteps=false",
                                          "adversarial.self_compare_weight=0"]),
    "+ progressive": ("prog", ["adversarial.dynamic_timesteps=false",
                               "adversarial.self_compare_weight=0"]),
    "+ dynamic timesteps": ("prog-dyn", ["adversarial.self_compare_weight=0"]),
    "+ self-compare (full recipe)": ("full", []),
    "full recipe, direct 4→1": ("full-direct", [DIRECT]),
    "full, non-saturating GAN loss": ("full-gan", ["adversarial.loss=gan"]),
    "full, hinge loss": ("full-hinge", ["adversarial.loss=hinge"]),
    "full, without R1/R2": ("full-noreg", ["adversarial.reg_weight=0"]),
    "full, without the regression (TurboTalk's recipe)": ("full-noregression",
                                                          ["adversarial.regression_weight=0"]),
    "full, regression only (no generator GAN loss)": ("full-nogan", ["adversarial.gan_weight=0"]),
}


def _variant_args(overrides: list[str], phase_clips: list[int]) -> list[str]:
    """Direct variants get every progressive phase's clips, so the budgets are equal."""
    if DIRECT in overrides:
        return [f"adversarial.clips_per_phase={sum(phase_clips)}",
                "adversarial.last_phase_clips=0", *overrides]
    return [f"adversarial.clips_per_phase={phase_clips[0]}",
            f"adversarial.last_phase_clips={phase_clips[-1]}", *overrides]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="DMD student checkpoint or run")
    p.add_argument("--data", required=True, help="SynthTalk shards (training and held-out test)")
    p.add_argument("--clips-per-phase", type=int, required=True,
                   help="clips per progressive phase (the last: adversarial.last_phase_clips, "
                        "if set); a direct run trains all phases' clips in its one phase")
    p.add_argument("--prefix", default="ablation", help="run names: <prefix>-<variant>")
    p.add_argument("--only", action="append", default=[],
                   choices=[suffix for suffix, _ in VARIANTS.values()],
                   help="run only these rows (repeatable; default: all)")
    p.add_argument("--eval-clips", type=int, default=8)
    p.add_argument("--reader", default="runs/mouth_reader.safetensors")
    p.add_argument("--out", default="reports/ablations")
    cli.add_config_args(p)
    args = p.parse_args()
    cfg = cli.config_from_args(args, [f"data.uri={args.data}",
                                      f"adversarial.clips_per_phase={args.clips_per_phase}"])
    endpoint = cfg.run.s3_endpoint_url
    phase_clips = cfg.adversarial.phase_clips()
    python = sys.executable

    report = Path(args.out).with_suffix(".json")
    # Rows trained by an earlier invocation keep the commands that trained them.
    runs = json.loads(report.read_text())["meta"].get("training_commands", {}) \
        if report.exists() else {}
    exports = []
    for name, (suffix, overrides) in VARIANTS.items():
        if args.only and suffix not in args.only:
            continue
        run_name = f"{args.prefix}-{suffix}"
        cfg.run.name = run_name
        exports.append(f"{name}={export_location(cfg, '1step').uri}")
        sets = [f"data.uri={args.data}", *args.overrides, f"run.name={run_name}",
                *_variant_args(overrides, phase_clips)]
        cmd = [python, "jobs/distill.py", "--stage", "adversarial", "--student", args.student,
               "--config", args.config, *[a for s in sets for a in ("--set", s)]]
        if export_location(cfg, "1step").join("config.yaml").exists():
            # Trained earlier, by this script or by hand (e.g. under `ray job submit`) with
            # the command it would have run.
            runs.setdefault(name, shlex.join(["python", *cmd[1:]]))
            print(f"# {name}: {run_name} already has its 1-step model", flush=True)
            continue
        resume = bool(checkpoint_names(run_location(cfg)))
        runs[name] = shlex.join(["python", *cmd[1:]])
        print(f"# {name}{' (resumed)' if resume else ''}\n{runs[name]}", flush=True)
        _run(cmd + (["--resume"] if resume else []), f"the run for {name!r}")

    cmd = [python, "jobs/evaluate.py", "--data", args.data, "--clips", str(args.eval_clips),
           "--reader", args.reader, "--out", args.out, "--s3-endpoint-url", endpoint]
    cmd += [a for e in exports for a in ("--checkpoint", e)]
    print(f"# evaluation\n{shlex.join(['python', *cmd[1:]])}", flush=True)
    _run(cmd, "the evaluation")
    _record(report, runs)


def _run(cmd: list[str], what: str) -> None:
    code = subprocess.run(cmd, check=False, cwd=ROOT).returncode
    if code:
        sys.exit(f"error: {what} exited with {code}; run this script again to continue")


def _record(path: Path, runs: dict[str, str]) -> None:
    """Add this script's command and every row's training command to the evaluation's JSON,
    so the report can say how every row was made."""
    data = json.loads(path.read_text())
    data["meta"]["ablation_command"] = "python benchmarks/ablations.py " + shlex.join(sys.argv[1:])
    data["meta"]["training_commands"] = runs
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


if __name__ == "__main__":
    main()
