"""Sweep any config keys of a stage on Ray Tune; by default TurboTalk's Table 4 on the
adversarial stage (self-compare weight λ × dynamic-timestep warm-up).

    python tune/sweep.py --student runs/dmd-demo/exports/4step
    python tune/sweep.py --student ... --set "sweep.space={adversarial.self_compare_weight: \\
        [0, 1], adversarial.disc_lr: [1e-4, 1e-3]}" --set sweep.search=random \\
        --set sweep.num_samples=12
    python tune/sweep.py --stage dmd --teacher runs/teacher-tiny \\
        --set "sweep.space={dmd.lr: [1e-5, 1e-4], dmd.critic_steps: [2, 5]}"
    python tune/sweep.py --resume            # continue an interrupted sweep (same run.root/name)
    ray job submit --working-dir . -- python tune/sweep.py --student s3://bucket/runs/dmd/...

Each trial is a Ray Train run (DeepSpeed ZeRO-3) of `jobs/distill.py --stage <stage>` with the
trial's values; ASHA stops trials whose validation score (Fréchet + 1 − lip-sync on held-out
clips) falls behind. Writes <out>.md/.json/.png and <out>-best.yaml, which
`python jobs/distill.py --config <out>-best.yaml` trains as it is.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import ray

from onestep import cli
from onestep.checkpoint import CheckpointError
from onestep.config import ConfigError
from onestep.stages import stage_class
from onestep.storage import StorageError
from onestep.sweep import report
from onestep.sweep.job import SweepStateError, experiment, load_base, run_sweep
from onestep.sweep.space import sweep_ready
from onestep.train.ray_job import prepare_validation, worker_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_stage_args(parser, default_stage="adversarial")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep <run.root>/<sweep.name> with its saved config")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report of an existing sweep without running trials")
    parser.add_argument("--out", default="reports/sweep", help="report path (no suffix)")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()
    cfg = cli.config_from_args(args, cli.stage_overrides(args))
    command = "python tune/sweep.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started_ray = False
    try:
        if args.resume or args.report_only:
            cfg = load_base(cfg)  # exactly what the sweep started with
        else:
            cfg = sweep_ready(cfg)  # the space is checked before any checkpoint is read
            for line in stage_class(cfg.train.stage).resolve_sources(cfg):
                print(f"# {line}", flush=True)
            cfg = worker_config(cfg.validate())  # trials run elsewhere: absolute paths
        if not args.report_only:
            started_ray = not ray.is_initialized()
            cli.init_ray(cfg, trial_cpus=1)
            prepare_validation(cfg)
            results = run_sweep(cfg, resume=args.resume)
        rows, best = report.write(experiment(cfg), cfg, Path(args.out), command)
    except (CheckpointError, ConfigError, StorageError, SweepStateError, ValueError) as e:
        sys.exit(f"error: {e}")
    finally:
        if started_ray:  # a local Ray this call started must not outlive it (Ctrl-C too)
            ray.shutdown()
    print(Path(args.out).with_suffix(".md").read_text())
    left = report.pending(rows, cfg)
    if left:
        print(f"sweep interrupted with {left} trial(s) still to run; continue with the same "
              f"command and --resume (state: {experiment(cfg).uri})")
        sys.exit(130)
    if not args.report_only and results.num_errors:
        sys.exit(f"{results.num_errors} trial(s) failed; see the table above")
    if best is not None:
        print(f"best configuration: {best}")


if __name__ == "__main__":
    main()
