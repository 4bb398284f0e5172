"""The Ray Train job: TorchTrainer over the stage loop, Ray Data in, checkpoints to run storage.

This is the one place where Ray Train meets the loop: it fills `Hooks` with `ray.train.report`
and `ray.train.get_checkpoint`, hands each worker its dataset shard, and configures storage
(local or S3), failure handling (failed workers restart from the last checkpoint) and resources.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from onestep import cli
from onestep.checkpoint import (CONFIG, STATE, WEIGHTS, checkpoint_at_step, checkpoint_names,
                               export_in_dtype, resume_point)
from onestep.config import Config, from_dict
from onestep.data import build_dataset
from onestep.evaluation.mouth_reader import load_or_train
from onestep.evaluation.run import is_labelled
from onestep.integrity import EXPORT_SUMS
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


def _restorer(cfg: Config, resume_from: str, newer_than: str):
    """A checkpoint this launch wrote (after a worker failure: Ray Train hands it over), else
    the one the driver chose to resume from, else the checkpoint the run branches from, else
    none. Ray's own latest from before this launch is not used: it may be damaged, and it
    misses a checkpoint written after the driver was interrupted (written, never registered),
    so the driver's choice among the folders themselves (`launch`) wins."""
    @contextlib.contextmanager
    def restore_dir():
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None and Path(ckpt.path).name <= newer_than:
            ckpt = None
        source = resume_from or cfg.run.branch_from
        if ckpt is None and source:
            loc = resolve(source, cfg.run.s3_endpoint_url)
            ckpt = ray.train.Checkpoint(loc.path, filesystem=loc.fs)
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as directory:
            yield Path(directory)
    return restore_dir


def _rollback_finder(cfg: Config):
    """The run's intact checkpoint of a step, read from its storage: it may have been written by
    an earlier launch of the run, which Ray's list of this launch's reports would not name."""
    @contextlib.contextmanager
    def rollback_dir(step: int):
        run = run_location(cfg)
        name = checkpoint_at_step(run, step)
        if name is None:
            yield None
            return
        loc = run.join(name)
        with ray.train.Checkpoint(loc.path, filesystem=loc.fs).as_directory() as directory:
            yield Path(directory)
    return rollback_dir


STOPPED = "stopped.json"  # in the run folder: why the last launch ended itself, if it did


def stopped_note(cfg: Config) -> dict | None:
    """{"step", "reason", "checks"} when the run's last launch stopped on a collapse."""
    note = run_location(cfg).join(STOPPED)
    return json.loads(note.read_bytes()) if note.exists() else None


def _stop_noter(cfg: Config):
    def stopped(note: dict) -> None:
        run_location(cfg).join(STOPPED).write_bytes(json.dumps(note, indent=2).encode())
    return stopped


def tensorboard_location(cfg: Config) -> Location:
    """TensorBoard events live with the run: `tensorboard --logdir <run>/tensorboard` (an
    s3:// logdir too; TensorBoard reads S3 through boto3)."""
    return run_location(cfg).join("tensorboard")


class TensorBoardUpload:
    """For a run on S3: events are written to a local folder and copied to the run's storage,
    at most every `every_s` seconds and at the end. S3 has no append, so each copy is a whole
    event file (one PUT: readers never see a part of one)."""

    def __init__(self, dest: Location, every_s: float = 30.0):
        self.dest, self.every_s, self.last = dest, every_s, 0.0
        self.local = Path(tempfile.mkdtemp(prefix="onestep-tensorboard-"))

    def __call__(self, final: bool) -> None:
        if not final and time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        for f in self.local.iterdir():
            self.dest.join(f.name).upload(f)
        if final:
            shutil.rmtree(self.local, ignore_errors=True)


def export_location(cfg: Config, name: str) -> Location:
    """Where a stage's milestone model is kept: <run>/exports/<name> (e.g. exports/1step)."""
    return run_location(cfg).join("exports", name)


def _publisher(cfg: Config):
    def publish(name: str, checkpoint: Path) -> None:
        dest = export_location(cfg, name)
        with tempfile.TemporaryDirectory(prefix="onestep-export-") as tmp:
            export = export_in_dtype(checkpoint, cfg.train.export_dtype, Path(tmp))
            for f in (WEIGHTS, STATE, EXPORT_SUMS, CONFIG):  # config.yaml last: marks it complete
                dest.join(f).upload(export / f)
    return publish


def train_worker(config: dict) -> None:
    """config: the run's config, and `resume_from` / `newer_than` (see `_restorer`)."""
    cli.setup_logging(force=True)
    # DeepSpeed calls collectives torch has renamed; torch warns on every step, burying our logs.
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r".*is deprecated\. Please use `torch\.distributed\.")
    cfg = from_dict(config["config"])
    hooks = Hooks(report=_report, publish=_publisher(cfg),
                  restore_dir=_restorer(cfg, config["resume_from"], config["newer_than"]),
                  preemption_notice=lambda: ray.train.get_preemption_info() is not None,
                  rollback_dir=_rollback_finder(cfg), stopped=_stop_noter(cfg))
    if ray.train.get_context().get_world_rank() == 0:  # the rank that writes events
        events = tensorboard_location(cfg)
        if events.is_s3:
            upload = TensorBoardUpload(events)
            hooks.tensorboard_dir, hooks.tensorboard_sync = upload.local, upload
        else:
            hooks.tensorboard_dir = Path(events.path)
    run_stage(cfg, build_stage(cfg), _batches(cfg), hooks)


def run_location(cfg: Config) -> Location:
    return resolve(cfg.run.root, cfg.run.s3_endpoint_url).join(cfg.run.name)


# Locations a run may name (empty: unused) that workers open themselves: pretrained weights and
# encoders, the lip-sync expert validation scores with, the branch point.
OPTIONAL_PATHS = ("codec.pretrained", "model.pretrained", "model.image_encoder",
                  "model.text_encoder", "model.prompt_embedding", "audio.wav2vec2_path",
                  "sync.weights", "run.branch_from")


def worker_config(cfg: Config) -> Config:
    """The config the workers get. They run in Ray's own working directory, so local paths
    (runs, data, pinned checkpoints) are made absolute here, where the user typed them."""
    out = from_dict(cfg.to_dict())
    endpoint = cfg.run.s3_endpoint_url
    out.run.root = resolve(cfg.run.root, endpoint).uri
    out.data.uri = resolve(cfg.data.uri, endpoint).uri
    out.validation.reader = resolve(cfg.validation.reader, endpoint).uri
    for key in (*OPTIONAL_PATHS, *stage_class(cfg.train.stage).sources):
        section, name = key.split(".")
        if getattr(getattr(out, section), name):
            setattr(getattr(out, section), name,
                    resolve(getattr(getattr(out, section), name), endpoint).uri)
    return out


def prepare_validation(cfg: Config) -> None:
    """Train the mouth reader here, once, if validation needs one that does not exist yet:
    otherwise every run (every Tune trial) would train its own on its rank 0. Footage without
    mouth labels is scored by the lip-sync expert alone."""
    if cfg.validation.every_clips and is_labelled(cfg.data.uri, cfg.run.s3_endpoint_url):
        load_or_train(cfg.validation.reader, cfg.synth, cfg.validation.reader_clips,
                      endpoint_url=cfg.run.s3_endpoint_url)


def _workers(cfg: Config) -> int | tuple[int, int]:
    """A count, or Ray Train V2's elastic (min, max)."""
    t = cfg.train
    return (t.min_workers, t.num_workers) if t.min_workers else t.num_workers


def make_trainer(cfg: Config, callbacks: list | None = None, resume_from: str = "",
                 newer_than: str = "") -> TorchTrainer:
    """The TorchTrainer for `cfg.train.stage`, starting from `resume_from` if given. Without it
    a run whose folder has checkpoints continues from the latest Ray Train registered (it
    restores a run by its name and storage path: a Tune trial restarted by Tune)."""
    root = resolve(cfg.run.root, cfg.run.s3_endpoint_url)
    return TorchTrainer(
        train_worker,
        train_loop_config={"config": worker_config(cfg).to_dict(), "resume_from": resume_from,
                           "newer_than": newer_than},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=_workers(cfg), use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.run.name, storage_path=root.path, storage_filesystem=root.fs,
            failure_config=FailureConfig(
                max_failures=cfg.train.max_failures,
                max_preemption_failures=cfg.train.max_preemption_failures),
            # Ray always keeps the newest checkpoint; of the others, those whose validation
            # passed the collapse guards (`guards_passed`, the rollback targets), newest first.
            checkpoint_config=CheckpointConfig(num_to_keep=3,
                                               checkpoint_score_attribute="guards_passed"),
            callbacks=callbacks or []),
        datasets={"train": build_dataset(cfg, stage_class(cfg.train.stage).total_clips(cfg))},
    )


def _registered(run: Location) -> set[str]:
    """Checkpoint folders Ray Train's controller has recorded in the run's snapshot. Any folder
    name the snapshot mentions counts, so that nothing Ray may still need is ever removed."""
    snapshot = run.join("checkpoint_manager_snapshot.json")
    text = snapshot.read_bytes().decode(errors="replace") if snapshot.exists() else ""
    return {name for name in checkpoint_names(run) if name in text}


def _remove_orphans(run: Location, keep: str = "") -> None:
    """Remove checkpoint folders Ray never registered (written by workers while the driver was
    being stopped, or half-written when it was killed) other than `keep`; and when Ray has
    registered newer ones, every unregistered folder older than those (superseded)."""
    registered = _registered(run)
    newest = max(registered, default="")
    for name in sorted(set(checkpoint_names(run)) - registered - {keep}):
        if not keep and name > newest:
            continue  # newer than anything registered: may be the only copy of that step
        log.warning("removing %s: a checkpoint folder Ray Train never registered", name)
        run.join(name).delete_tree()


def check_storage(cfg: Config) -> None:
    """Every place the job writes or reads, reachable with the credentials at hand, before any
    work: one line naming the URI instead of a failure on the workers minutes later. (A local
    data folder without shards is named by the manifest check, with the command that makes it.)
    """
    endpoint = cfg.run.s3_endpoint_url
    check_reachable(resolve(cfg.run.root, endpoint), create=True)
    reads = [cfg.data.uri] + ([cfg.validation.reader] if cfg.validation.every_clips else [])
    for uri in reads:
        if resolve(uri, endpoint).is_s3:
            check_reachable(resolve(uri, endpoint))


def launch(cfg: Config, resume: bool = False) -> ray.train.Result:
    """Train `cfg.train.stage`; with `resume`, continue from the run's newest checkpoint that
    is complete and intact (checksums verified), whether or not Ray registered it."""
    check_storage(cfg)
    run = run_location(cfg)
    names = checkpoint_names(run)
    if names and not resume:
        raise RunExistsError(f"{run.uri} already has checkpoints: pass --resume to continue it, "
                             "or choose another name with --set run.name=...")
    if resume and not names:
        raise RunExistsError(f"{run.uri}: no checkpoint to resume from; drop --resume to start "
                             "the run, or pass --resume auto (resume if there is one)")
    resume_from = ""
    if resume:
        pick, passed_over = resume_point(run)
        for name, found in passed_over.items():
            log.warning("not resuming from %s: %s", name, "; ".join(found))
        if pick is None:
            raise RunExistsError(f"{run.uri}: none of its {len(names)} checkpoints is complete "
                                 "and intact (see the warnings above); start a new run")
        _remove_orphans(run, keep=pick)
        resume_from = run.join(pick).uri
        log.info("resuming from %s", resume_from)
    prepare_validation(cfg)
    if run.join(STOPPED).exists():  # from a launch before this one
        run.join(STOPPED).delete_file()
    result = make_trainer(cfg, resume_from=resume_from, newer_than=max(names, default="")).fit()
    _remove_orphans(run)
    return result
