"""Train a stage of the onestep recipe on Ray Train + DeepSpeed.

    python jobs/distill.py --stage teacher --config tiny
    python jobs/distill.py --stage teacher --config tiny --resume
    ray job submit --working-dir . -- python jobs/distill.py --stage teacher --config small
"""

from __future__ import annotations

import argparse
import sys

import _cli

from onestep.checkpoint import latest_checkpoint
from onestep.storage import StorageError
from onestep.train.ray_job import RunExistsError, launch, run_location


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default=None, choices=["teacher"],
                        help="recipe stage (default: the config's train.stage)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run's latest checkpoint (same --config/run.name)")
    _cli.add_config_args(parser)
    args = parser.parse_args(argv)
    _cli.setup_logging()
    cfg = _cli.config_from_args(args, [f"train.stage={args.stage}"] if args.stage else [])
    print(f"# onestep config\n{cfg.to_yaml()}", flush=True)
    _cli.init_ray(cfg)
    try:
        result = launch(cfg, resume=args.resume)
    except (RunExistsError, StorageError) as e:
        sys.exit(f"error: {e}")
    if result.error:
        sys.exit(f"training failed: {result.error}")
    run = run_location(cfg)
    metrics = result.metrics or {}  # empty when a resumed run had already finished
    if metrics:
        print(f"done: {metrics['clips_seen']:.0f} clips, final loss {metrics['loss']:.4f}")
    print(f"latest checkpoint: {latest_checkpoint(run.uri, cfg.run.s3_endpoint_url)}")


if __name__ == "__main__":
    main()
