"""The Ray Train job: TorchTrainer over the stage loop, Ray Data in, checkpoints to run storage.

This is the one place where Ray Train meets the loop: it fills `Hooks` with `ray.train.report`
and `ray.train.get_checkpoint`, hands each worker its dataset shard, and configures storage
(local or S3), failure handling (failed workers restart from the last checkpoint) and resources.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from onestep import cli
from onestep.checkpoint import CONFIG, STATE, WEIGHTS, checkpoint_names
from onestep.config import Config, from_dict
from onestep.data import build_dataset
from onestep.evaluation.mouth_reader import load_or_train
from onestep.stages import build_stage, stage_class
from onestep.storage import Location, check_reachable, resolve
from onestep.train.engine import world
from onestep.train.loop import Hooks, run_stage

log = logging.getLogger("onestep.train")


class RunExistsError(RuntimeError):
    pass


def _batches(cfg: Config) -> Iterator[dict]:
    """This worker's micro-batches, epoch after epoch, from its Ray Data shard."""
    _, world_size = world()
    shard = ray.train.get_dataset_shard("train")
    epoch = 0
    while True:
        n = 0
        for batch in shard.iter_torch_batches(
                batch_size=cfg.train.global_batch // world_size, drop_last=True,
                local_shuffle_buffer_size=cfg.data.shuffle_buffer,
                local_shuffle_seed=cfg.data.seed + epoch, device="cpu"):
            n += 1
            yield batch
        if n == 0:
            raise RuntimeError(f"{cfg.data.uri}: no training windows for split "
                               f"{cfg.data.split!r} (too few clips for the batch size?)")
        epoch += 1


def _report(metrics: dict, checkpoint: Path | None) -> None:
    ckpt = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
    ray.train.report({k: float(v) for k, v in metrics.items()}, checkpoint=ckpt)


def _restorer(cfg: Config):
    """The run's own latest checkpoint (Ray Train restores it by run name and storage), else
    the checkpoint it branches from, else none."""
    @contextlib.contextmanager
    def restore_dir():
        ckpt = ray.train.get_checkpoint()
        if ckpt is None and cfg.run.branch_from:
            loc = resolve(cfg.run.branch_from, cfg.run.s3_endpoint_url)
            ckpt = ray.train.Checkpoint(loc.path, filesystem=loc.fs)
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as directory:
            yield Path(directory)
    return restore_dir


def tensorboard_dir(cfg: Config) -> Path:
    """TensorBoard events beside the run when it is local; a local cache for S3 runs."""
    run = resolve(cfg.run.root, cfg.run.s3_endpoint_url)
    if run.is_s3:
        return Path.home() / ".cache" / "onestep" / "tensorboard" / cfg.run.name
    return Path(run.path) / cfg.run.name / "tensorboard"


def export_location(cfg: Config, name: str) -> Location:
    """Where a stage's milestone model is kept: <run>/exports/<name> (e.g. exports/1step)."""
    return run_location(cfg).join("exports", name)


def _publisher(cfg: Config):
    def publish(name: str, checkpoint: Path) -> None:
        dest = export_location(cfg, name)
        for f in (WEIGHTS, STATE, CONFIG):  # config.yaml last: it marks a complete export
            dest.join(f).write_bytes((checkpoint / f).read_bytes())
    return publish


def train_worker(config: dict) -> None:
    cli.setup_logging(force=True)
    # DeepSpeed calls collectives torch has renamed; torch warns on every step, burying our logs.
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r".*is deprecated\. Please use `torch\.distributed\.")
    cfg = from_dict(config)
    hooks = Hooks(report=_report, restore_dir=_restorer(cfg), tensorboard_dir=tensorboard_dir(cfg),
                  publish=_publisher(cfg))
    run_stage(cfg, build_stage(cfg), _batches(cfg), hooks)


def run_location(cfg: Config) -> Location:
    return resolve(cfg.run.root, cfg.run.s3_endpoint_url).join(cfg.run.name)


def worker_config(cfg: Config) -> Config:
    """The config the workers get. They run in Ray's own working directory, so local paths
    (runs, data, pinned checkpoints) are made absolute here, where the user typed them."""
    out = from_dict(cfg.to_dict())
    endpoint = cfg.run.s3_endpoint_url
    out.run.root = resolve(cfg.run.root, endpoint).uri
    out.data.uri = resolve(cfg.data.uri, endpoint).uri
    out.validation.reader = resolve(cfg.validation.reader, endpoint).uri
    if cfg.run.branch_from:
        out.run.branch_from = resolve(cfg.run.branch_from, endpoint).uri
    for key in stage_class(cfg.train.stage).sources:
        section, name = key.split(".")
        if getattr(getattr(out, section), name):
            setattr(getattr(out, section), name,
                    resolve(getattr(getattr(out, section), name), endpoint).uri)
    return out


def prepare_validation(cfg: Config) -> None:
    """Train the mouth reader here, once, if validation needs one that does not exist yet:
    otherwise every run (every Tune trial) would train its own on its rank 0."""
    if cfg.validation.every_clips:
        load_or_train(cfg.validation.reader, cfg.synth, cfg.validation.reader_clips,
                      endpoint_url=cfg.run.s3_endpoint_url)


def make_trainer(cfg: Config, callbacks: list | None = None) -> TorchTrainer:
    """The TorchTrainer for `cfg.train.stage`. A run whose folder has checkpoints continues
    from the latest (Ray Train restores a run by its name and storage path)."""
    root = resolve(cfg.run.root, cfg.run.s3_endpoint_url)
    return TorchTrainer(
        train_worker,
        train_loop_config=worker_config(cfg).to_dict(),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.run.name, storage_path=root.path, storage_filesystem=root.fs,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=3), callbacks=callbacks or []),
        datasets={"train": build_dataset(cfg)},
    )


def launch(cfg: Config, resume: bool = False) -> ray.train.Result:
    """Train `cfg.train.stage`; with `resume`, continue the run's latest checkpoint."""
    check_reachable(resolve(cfg.run.root, cfg.run.s3_endpoint_url), create=True)
    run = run_location(cfg)
    if checkpoint_names(run) and not resume:
        raise RunExistsError(f"{run.uri} already has checkpoints: pass --resume to continue it, "
                             "or choose another name with --set run.name=...")
    prepare_validation(cfg)
    return make_trainer(cfg).fit()
