"""Train a stage of the onestep recipe on Ray Train + DeepSpeed.

    python jobs/distill.py --stage teacher --config tiny
    python jobs/distill.py --stage dmd --teacher runs/teacher-tiny
    python jobs/distill.py --stage adversarial --student runs/dmd-tiny/exports/4step
    python jobs/distill.py --stage teacher --config tiny --resume
    python jobs/distill.py --stage teacher --config tiny --resume auto   # resume if it exists
    python jobs/distill.py --stage adversarial --branch-from runs/adversarial-tiny/checkpoint_X \
        --set run.name=probe --set adversarial.reg_weight=3
    ray job submit --working-dir . -- python jobs/distill.py --stage teacher --config small

--teacher / --student take a checkpoint folder or a run folder (its latest checkpoint), local or
s3://. Each stage publishes its finished models under <run>/exports/ (teacher, 4step, then 3step,
2step, 1step); jobs/generate.py, jobs/evaluate.py and Serve load those folders directly.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from onestep import cli
from onestep.checkpoint import (
    CheckpointError,
    checkpoint_names,
    latest_checkpoint,
    read_config,
    training_checkpoint,
)
from onestep.config import Config
from onestep.stages import stage_class
from onestep.storage import StorageError
from onestep.train.memory_plan import format_plan, plan_run
from onestep.train.ray_job import RunExistsError, launch, run_location, stopped_note


def _keep_sources(cfg: Config, keys: tuple[str, ...]) -> None:
    """A resumed (or branched) run restarts its frozen networks from the checkpoints its run
    (or the run it branches from) was pinned to, even if their runs have trained on since."""
    run, endpoint = run_location(cfg), cfg.run.s3_endpoint_url
    saved = None
    for name in reversed(checkpoint_names(run)):  # a folder cut short may lack its config
        with contextlib.suppress(CheckpointError):
            saved = read_config(run.join(name).uri, endpoint)
            break
    if saved is None and cfg.run.branch_from:
        saved = read_config(cfg.run.branch_from, endpoint)
    if saved is None:
        return
    for key in keys:
        setattr(*_field(cfg, key), getattr(*_field(saved, key)))


def _field(cfg: Config, key: str) -> tuple[object, str]:
    """`model.pretrained` → (cfg.model, "pretrained")."""
    section, name = key.split(".")
    return getattr(cfg, section), name


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, Config]:
    """The command line as the job reads it: its arguments and the config they make."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_stage_args(parser)
    parser.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"],
                        help="continue the run (same --config/run.name) from its newest intact "
                        "checkpoint; `--resume auto` starts the run if it has none yet (for a "
                        "job that is retried, e.g. a KubeRay RayJob whose head restarted)")
    parser.add_argument("--branch-from", default=None, metavar="CHECKPOINT",
                        help="start a new run (name it with --set run.name=...) from another "
                        "run's checkpoint of this stage: its step, optimiser and EMA state and "
                        "its pinned sources, under this command's config (sets run.branch_from)")
    parser.add_argument("--plan", action="store_true",
                        help="print the per-rank memory plan of the run and exit (no Ray, no "
                        "weights loaded: the networks are built on the meta device)")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    extra = cli.stage_overrides(args)
    if args.branch_from:
        extra += [f"run.branch_from={args.branch_from}"]
    return args, cli.config_from_args(args, extra)


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse(argv)
    cli.setup_logging()
    stage = stage_class(cfg.train.stage)
    try:
        resume = args.resume == "yes" or (args.resume == "auto"
                                          and bool(checkpoint_names(run_location(cfg))))
        if cfg.run.branch_from:
            cfg.run.branch_from = training_checkpoint(
                cfg.run.branch_from, cfg.train.stage, cfg.run.s3_endpoint_url)
            if cfg.run.branch_from.startswith(run_location(cfg).uri + "/"):
                raise ValueError(f"run.branch_from: {cfg.run.branch_from} is a checkpoint of "
                                 "this run; name the branch with --set run.name=...")
            print(f"# branch from: {cfg.run.branch_from}", flush=True)
        if resume or cfg.run.branch_from:
            _keep_sources(cfg, stage.sources)
        unset = [k for k in stage.sources if not getattr(*_field(cfg, k))]
        if args.plan and unset:
            print(f"# {', '.join(unset)} not given: planning the config's own network", flush=True)
        else:
            for line in stage.resolve_sources(cfg):
                print(f"# {line}", flush=True)
        cfg.validate()
    except (CheckpointError, StorageError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"# onestep config\n{cfg.to_yaml()}", flush=True)
    workers = cfg.train.min_workers or cfg.train.num_workers  # fewest workers: most per rank
    print(format_plan(plan_run(cfg, workers), cfg, workers), flush=True)
    if args.plan:
        return
    cli.init_ray(cfg)
    try:
        result = launch(cfg, resume=resume)
    except (RunExistsError, StorageError) as e:
        sys.exit(f"error: {e}")
    if result.error:
        sys.exit(f"training failed: {result.error}")
    run = run_location(cfg)
    metrics = result.metrics or {}  # empty when a resumed run had already finished
    stopped = stopped_note(cfg)
    if metrics and not stopped:
        losses = ", ".join(f"{k} {metrics[k]:.4f}" for k in stage.headline if k in metrics)
        print(f"done: {metrics['clips_seen']:.0f} clips, final {losses}")
    print(f"latest checkpoint: {latest_checkpoint(run.uri, cfg.run.s3_endpoint_url)}")
    exports = run.join("exports")
    for name in exports.listdir():
        print(f"export: {exports.join(name).uri}")
    if stopped:
        sys.exit(f"stopped at step {stopped['step']}: {stopped['reason']}. The latest checkpoint "
                 "is from before the collapse; the thresholds and validation.on_collapse are "
                 "in the config (README: Collapse guards)")


if __name__ == "__main__":
    main()
