"""Shared CLI plumbing for the job, sweep and benchmark scripts: config loading, logging, local
Ray start-up."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from onestep.config import Config, ConfigError, load_config

DATA_CPUS = 2  # Ray Data's minimum: one read task and one decoding actor


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny",
                        help="preset (tiny, small, base) or a YAML file; default: tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="dotted override, e.g. --set model.depth=4 "
                        "(repeatable)")


def add_stage_args(parser: argparse.ArgumentParser, default_stage: str | None = None) -> None:
    """--stage and the checkpoints stages start from, as jobs/distill.py and tune/sweep.py take
    them."""
    from onestep.stages import STAGES

    parser.add_argument("--stage", default=default_stage, choices=list(STAGES),
                        help="recipe stage (default: " + (default_stage or "the config's "
                        "train.stage") + ")")
    parser.add_argument("--teacher", default=None,
                        help="teacher checkpoint or run (sets " + ", ".join(source_keys("teacher"))
                        + ")")
    parser.add_argument("--student", default=None,
                        help="the student checkpoint or run a stage starts from (sets "
                        + ", ".join(source_keys("student")) + ")")


def source_keys(role: str) -> list[str]:
    """The `<section>.<role>` keys of every registered stage's `sources`: what --teacher or
    --student sets. Read from the registry, so that a new stage taking a teacher is reached
    without an edit here."""
    from onestep.stages import STAGES

    return [key for stage in STAGES.values() for key in stage.sources
            if key.endswith("." + role)]


def stage_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides add_stage_args' arguments stand for."""
    extra = [f"train.stage={args.stage}"] if args.stage else []
    for role in ("teacher", "student"):
        if getattr(args, role):
            extra += [f"{key}={getattr(args, role)}" for key in source_keys(role)]
    return extra


def config_from_args(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    try:
        return load_config(args.config, list(extra) + args.overrides)
    except ConfigError as e:
        sys.exit(f"config error: {e}")


def setup_logging(force: bool = False) -> None:
    """onestep's own progress at INFO, everything else from WARNING up.

    The root logger stays at WARNING because some libraries log through loggers outside their
    package (Ray Train names one after its source file and logs every metrics report at INFO),
    which would bury the progress lines under two repeated dumps per report.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        force=force)
    logging.getLogger("onestep").setLevel(logging.INFO)


def init_ray(cfg: Config | None = None, trial_cpus: int = 0) -> None:
    """Join the cluster given by RAY_ADDRESS (as under `ray job submit`), else start a local one.

    A local Ray gets at least as many logical CPUs as the Train workers plus two for Ray Data
    (a reader and a decoder: fewer deadlocks the pipeline), plus `trial_cpus` for a Tune
    trial's driver, so the data pipeline is never starved by the trainers on a small machine.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    need = DATA_CPUS + trial_cpus + (cfg.train.num_workers * cfg.train.cpus_per_worker
                                     if cfg else 0)
    # "local": an instance of our own even if another Ray runs on this machine (a user's `ray
    # start`, another job). Ray's own actors (Train's controller, Ray Data's hang detector) call
    # the state API without an address; with two instances running they would find both and
    # either log "Found multiple active Ray instances" tracebacks or talk to the other one.
    # The job's environment points them, and this driver, at this instance's dashboard.
    port = _free_port()
    api = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    os.environ.update(api)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=port, runtime_env={"env_vars": api})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
