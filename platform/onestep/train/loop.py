"""The one training loop: runs any stage under DeepSpeed, inside Ray Train or a plain process.

Ray stays at the edges: the loop talks to the outside through `Hooks` (report metrics and a
checkpoint directory; find the checkpoint to resume from). `onestep.train.ray_job` fills them with
`ray.train.report` / `ray.train.get_checkpoint`; pytest can fill them with plain functions.
Progress is counted in clips seen (not steps) so a run can change its worker count.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
from safetensors.torch import load_file

from onestep import integrity
from onestep.checkpoint import CONFIG, STATE, WEIGHTS, read_state, save_export
from onestep.config import Config
from onestep.evaluation.validation import Validator
from onestep.model import count_parameters
from onestep.model.dit import set_activation_checkpointing
from onestep.train import guards
from onestep.train.ema import ShardedEMA
from onestep.train.resize import load_resized
from onestep.train.engine import (
    init_distributed,
    local_shard,
    make_engine,
    memory_mb,
    reset_peak_lr,
    world,
)

log = logging.getLogger("onestep.train")


@contextlib.contextmanager
def _no_checkpoint():
    yield None


@dataclass
class Hooks:
    report: Callable[[dict, Path | None], None] = lambda metrics, checkpoint: None
    restore_dir: Callable[[], ContextManager[Path | None]] = _no_checkpoint
    tensorboard_dir: Path | None = None
    # Called after TensorBoard events are flushed (final=True once at the end): where the run's
    # storage is not this node's disk, this copies them there.
    tensorboard_sync: Callable[[bool], None] = lambda final: None
    # Rank 0 only: keep a finished model (a stage's milestone, e.g. "1step") under a stable name.
    publish: Callable[[str, Path], None] = lambda name, checkpoint: None
    # Collective (every rank calls it at the same steps): whether a node of the run has been
    # told it will be preempted, so the run checkpoints before it goes.
    preemption_notice: Callable[[], bool] = lambda: False
    # Collective: the run's intact checkpoint of a step (where a collapse guard rolls back to),
    # or None when it is gone.
    rollback_dir: Callable[[int], ContextManager[Path | None]] = lambda step: _no_checkpoint()
    # Rank 0 only: the stage ended itself (a collapse) for this reason; kept where the driver
    # (and the user) will look, since Ray's result holds only the last checkpoint's metrics.
    stopped: Callable[[dict], None] = lambda note: None


@dataclass
class _Meter:
    """Averages of per-step logs plus timing between two reports. A key is averaged over the
    steps that logged it (a DMD generator loss exists only on generator steps)."""

    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    steps: int = 0
    data_wait: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, logs: dict, wait: float) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1
        self.data_wait += wait

    def summary(self, clips_per_step: int) -> dict:
        elapsed = max(1e-9, time.perf_counter() - self.started)
        out = {k: v / self.counts[k] for k, v in self.sums.items()}
        out.update(samples_per_s=self.steps * clips_per_step / elapsed,
                   data_wait_frac=self.data_wait / elapsed, step_time_s=elapsed / self.steps)
        return out


def _save(directory: Path, cfg: Config, stage, engines: dict, emas: dict, state: dict) -> None:
    """Collective: every rank writes its shards; rank 0 writes the export and metadata."""
    rank, _ = world()
    for name in stage.trained:  # frozen networks are rebuilt from their pinned sources
        engine = engines[name]
        engine.save_checkpoint(str(directory / "engines" / name), tag="state")
    (directory / "ema").mkdir(parents=True, exist_ok=True)
    for name, ema in emas.items():
        ema.save_shard(str(directory / "ema" / f"{name}-rank{rank}.safetensors"))
    export = emas[stage.export].full_state_dict()
    if rank == 0:
        save_export(directory, export, stage.export_config(state["step"]), state)
    resume_files = integrity.files_under(directory, exclude={WEIGHTS, CONFIG, STATE})
    integrity.record(directory, resume_files, integrity.rank_sums(rank))


def _restore(directory: Path, stage, engines: dict, emas: dict) -> dict:
    """Collective. A checkpoint of another worker count is resharded (`resize`)."""
    rank, world_size = world()
    state = read_state(directory)
    saved_by = state["world_size"]
    if saved_by == world_size:
        for name in stage.trained:
            path, _ = engines[name].load_checkpoint(str(directory / "engines" / name), tag="state")
            if path is None:
                raise RuntimeError(f"{directory}: no DeepSpeed state for network {name!r}")
        for name, ema in emas.items():
            ema.load_shard(str(directory / "ema" / f"{name}-rank{rank}.safetensors"))
    else:
        if rank == 0:
            log.info("%s was saved by %d workers; resharding it for %d", directory, saved_by,
                     world_size)
        load_resized(directory, engines, list(stage.trained), saved_by)
        # The exported network's whole EMA. A target network's own, faster average is not
        # resharded: it restarts from this one.
        exported = load_file(str(directory / WEIGHTS))
        for ema in emas.values():
            ema.load_full(exported)
        state["world_size"] = world_size
    _set_lrs(stage, engines, state)
    _sync_targets(stage, engines, emas)
    return state


def _average(stage, engines: dict, emas: dict, state: dict) -> None:
    """After the step `state["step"]`: every EMA takes it in (restarted first where a stage
    begins a new model), and each target network its average."""
    if stage.restarts_ema(state["step"]):
        state["ema_since"] = state["step"]
        for ema in emas.values():
            ema.reset()
    for ema in emas.values():
        ema.update(state["step"] - state.get("ema_since", 0))
    _sync_targets(stage, engines, emas)


def _sync_targets(stage, engines: dict, emas: dict) -> None:
    """Each target network takes the average of the network it follows."""
    for name in stage.targets:
        if name in emas:
            emas[name].copy_into(engines[name].module)


def _set_lrs(stage, engines: dict, state: dict) -> None:
    """Every trained network at its configured peak rate, times what rollbacks left."""
    scale = state["guards"]["lr_scale"] if "guards" in state else 1.0
    for name in stage.trained:
        reset_peak_lr(engines[name], stage.optimizer(name)[0] * scale)


def _validate(stage, emas: dict, validator: Validator | None, step: int) -> dict:
    """Collective (gathers the EMA weights); rank 0 scores them, other ranks return {}."""
    weights = emas[stage.export].full_state_dict()
    if validator is None:
        return {}
    t0 = time.perf_counter()
    out = validator(weights, stage.export_config(max(step, 1)))
    log.info("validation at step %d: score %.4f | lip-sync %.3f | Fréchet %.4f | %.0f s", step,
             out["val_score"], out["val_sync"], out["val_frechet"], time.perf_counter() - t0)
    return out


def _on(device: torch.device, batch: dict) -> dict:
    """The batch's tensors on the training device (Ray Data and plain iterators hand over CPU
    tensors)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def _scalars(writer, stage, metrics: dict, step: int) -> None:
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"{stage.name}/{k}", v, step)


def _eta(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(0, seconds)))


def _build(cfg: Config, stage) -> tuple[dict, dict]:
    """The stage's networks under DeepSpeed engines (trained ones with optimisers, frozen ones
    sharded for inference), and the EMAs the loop keeps: the exported network's and each
    target network's."""
    rank, _ = world()
    torch.manual_seed(cfg.data.seed)  # identical initial weights on every rank
    networks = stage.build_networks()
    for name in stage.trained:
        set_activation_checkpointing(networks[name], cfg.train.activation_checkpointing)
    if rank == 0:
        for name, net in networks.items():
            log.info("%s: %.2fM parameters", name, count_parameters(net) / 1e6)
    engines = {}
    for name in stage.trained:
        lr, update_every = stage.optimizer(name)
        engines[name] = make_engine(networks[name], cfg, lr, update_every=update_every,
                                    total_clips=stage.total_clips(cfg),
                                    lr_scales=stage.lr_scales(name))
    frozen = stage.frozen_networks(cfg)
    for name in frozen:
        engines[name] = make_engine(networks[name], cfg, trainable=False)
    emas = {stage.export: ShardedEMA(engines[stage.export].module, cfg.train.ema_decay)}
    for name in (n for n in stage.targets if n in frozen):
        source, decay = stage.target_of(name)
        emas[name] = ShardedEMA(engines[source].module, decay)
    return engines, emas


def _start(hooks: Hooks, stage, engines: dict, emas: dict) -> tuple[dict, bool]:
    """Collective: the training state to go on from (the checkpoint `hooks.restore_dir`
    finds, else step 0), and whether it was restored."""
    rank, world_size = world()
    state = {"stage": stage.name, "step": 0, "clips_seen": 0, "world_size": world_size,
             "resumed_at_steps": []}
    with hooks.restore_dir() as directory:
        restored = directory is not None
        if restored:
            state = _restore(Path(directory), stage, engines, emas)
            state["resumed_at_steps"] = state.get("resumed_at_steps", []) + [state["step"]]
            if rank == 0:
                log.info("resumed from %s at step %d (%d clips)", directory, state["step"],
                         state["clips_seen"])
    state.setdefault("guards", guards.initial_state())
    return state, restored


class _Progress:
    """What a launch tells the user, TensorBoard and Ray: per-step logs averaged between
    reports, the time spent waiting for data, and the progress line with its rate and ETA.
    TensorBoard is written by rank 0 only."""

    def __init__(self, cfg: Config, stage, hooks: Hooks, state: dict, total_steps: int,
                 exported: torch.nn.Module):
        self.stage, self.hooks, self.total_steps = stage, hooks, total_steps
        self.batch_size = cfg.train.global_batch
        self.rank = world()[0]
        self.writer = None
        if self.rank == 0 and hooks.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(hooks.tensorboard_dir), purge_step=state["step"])
        # What ZeRO leaves on this rank: ≈ 1/world_size of the parameters under stage 3.
        self.params_local_fraction = (sum(local_shard(p).numel() for p in exported.parameters())
                                      / count_parameters(exported))
        self.start(state)  # and again once the first validation is done
        # Blocked on data over the whole launch, epoch boundaries included; the first batch
        # (the pipeline starting) is counted apart, as it is paid once per launch.
        self.first_batch_wait, self.blocked, self.since, self.wait = None, 0.0, 0.0, 0.0

    def start(self, state: dict) -> None:
        """Rates count from here: the first step, after the first validation (and anything
        it rolled back)."""
        self.meter, self.started, self.start_step = _Meter(), time.perf_counter(), state["step"]

    def next_batch(self, batches: Iterator[dict]) -> dict:
        t0 = time.perf_counter()
        batch = next(batches)
        self.wait = time.perf_counter() - t0
        if self.first_batch_wait is None:
            self.first_batch_wait, self.since = self.wait, time.perf_counter()
        else:
            self.blocked += self.wait
        return batch

    def add(self, logs: dict) -> None:
        """A step's logs, with the wait for its batch."""
        self.meter.add(logs, self.wait)

    def restart_meter(self) -> None:
        self.meter = _Meter()

    def scalars(self, metrics: dict, step: int) -> None:
        _scalars(self.writer, self.stage, metrics, step)

    def report(self, metrics: dict) -> None:
        """A result without a checkpoint, to Ray and TensorBoard."""
        self.hooks.report(metrics, None)
        self.scalars(metrics, metrics["step"])

    def metrics(self, state: dict, extra: dict, lr: float) -> dict:
        """The steps since the last report, averaged, with `extra` (validation, guards)."""
        out = {**self.meter.summary(self.batch_size), **extra}
        out.update(step=state["step"], clips_seen=state["clips_seen"], lr=lr,
                   memory_mb=memory_mb(), params_local_fraction=self.params_local_fraction,
                   first_batch_wait_s=self.first_batch_wait,
                   data_wait_run_frac=self.blocked / max(1e-9, time.perf_counter() - self.since))
        return out

    def log(self, metrics: dict, state: dict) -> None:
        """Rank 0: the progress line, and the scalars to TensorBoard."""
        if self.rank != 0:
            return
        rate = (state["step"] - self.start_step) / (time.perf_counter() - self.started)
        losses = " | ".join(f"{k} {metrics[k]:.4g}" for k in self.stage.headline if k in metrics)
        log.info("step %d/%d | clips %d | %s | %.1f clips/s | data wait %.0f%% | ETA %s",
                 state["step"], self.total_steps, state["clips_seen"], losses,
                 metrics["samples_per_s"], 100 * metrics["data_wait_frac"],
                 _eta((self.total_steps - state["step"]) / rate))
        if self.writer is not None:
            self.scalars(metrics, state["step"])
            self.writer.flush()
            self.hooks.tensorboard_sync(False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.hooks.tensorboard_sync(True)


def run_stage(cfg: Config, stage, batches: Iterator[dict], hooks: Hooks | None = None) -> dict:
    """Train `stage` on `batches` (per-rank micro-batches) until stage.total_clips(cfg).

    Validation (rank 0) runs before the first step and every `validation.every_clips`; its
    collapse guards may roll the run back or stop it (onestep.train.guards). A checkpoint is
    written every `train.checkpoint_every_clips`, at a stage's milestones (published as
    exports), at the end, on a preemption notice and, under rollback, after each validation
    that passes."""
    hooks = hooks or Hooks()
    init_distributed(cfg)
    rank, _ = world()
    torch.set_num_threads(cfg.train.torch_threads)
    engines, emas = _build(cfg, stage)
    state, restored = _start(hooks, stage, engines, emas)
    rollback_mode = cfg.validation.on_collapse == "rollback"

    batch_size = cfg.train.global_batch
    total_steps = math.ceil(stage.total_clips(cfg) / batch_size)
    if state["step"] >= total_steps and rank == 0:
        log.info("nothing to do: the run already reached %d clips (the stage trains on %d)",
                 state["clips_seen"], stage.total_clips(cfg))
    ckpt_every = max(1, cfg.train.checkpoint_every_clips // batch_size)
    every = cfg.validation.every_clips
    val_every = max(1, every // batch_size) if every else 0
    device = engines[stage.export].device  # where the networks train: batches go there
    validator = (Validator(cfg, stage.teacher_uri(), str(device)) if val_every and rank == 0
                 else None)
    progress = _Progress(cfg, stage, hooks, state, total_steps, engines[stage.export].module)
    val = {}

    def checkpoint(metrics: dict, milestone: str | None = None) -> None:
        with tempfile.TemporaryDirectory(prefix="onestep-ckpt-") as tmp:
            _save(Path(tmp), cfg, stage, engines, emas, dict(state))
            if milestone is not None and rank == 0:
                hooks.publish(milestone, Path(tmp))
                log.info("published %s", milestone)
            hooks.report(metrics, Path(tmp))

    def restore(directory: Path, guard_state: dict) -> dict:  # a collapse guard's rollback
        restored = _restore(directory, stage, engines, emas)
        restored.update(guards=guard_state, resumed_at_steps=state["resumed_at_steps"])
        _set_lrs(stage, engines, restored)
        return restored

    # Validation runs before the first step too, so every report carries a val_score (Tune's
    # scheduler requires its metric in each result) and the curve starts at the initialisation.
    if val_every:
        val = _validate(stage, emas, validator, state["step"])
        outcome, state, failed = guards.apply(cfg, stage, state, val, hooks, progress.report,
                                              restore)
        if outcome == "stopped":
            progress.close()
            return state
        if outcome == "go":
            head = {"step": state["step"], "clips_seen": state["clips_seen"], **val,
                    **guards.metrics(state, failed)}
            progress.scalars(head, state["step"])
            if rollback_mode and not restored and not failed:  # a first rollback target
                checkpoint(head)
            else:
                hooks.report(head, None)
    rng = torch.Generator().manual_seed(cfg.data.seed * 100003 + rank * 7919 + state["step"])
    progress.start(state)
    metrics = {}

    while state["step"] < total_steps:
        batch = _on(device, progress.next_batch(batches))
        logs = stage.train_step(batch, engines, rng, state["step"])
        _average(stage, engines, emas, state)
        state["step"] += 1
        state["clips_seen"] += batch_size
        progress.add(logs)

        last = state["step"] == total_steps
        milestone = stage.milestone(state["step"], total_steps)
        checkpoint_now = state["step"] % ckpt_every == 0 or last or milestone is not None
        if state["step"] % cfg.train.log_every_steps == 0 and not checkpoint_now \
                and hooks.preemption_notice():
            checkpoint_now = True
            if rank == 0:
                log.warning("preemption notice: checkpointing at step %d", state["step"])
        validate_now = val_every and (state["step"] % val_every == 0 or last)
        failed = []
        if validate_now:
            val = _validate(stage, emas, validator, state["step"])
            outcome, state, failed = guards.apply(cfg, stage, state, val, hooks,
                                                  progress.report, restore)
            if outcome == "stopped":
                progress.close()
                return state
            if outcome == "rolled back":
                progress.restart_meter()
                continue
            # Under rollback, every validation that passes leaves a checkpoint to go back to.
            checkpoint_now = checkpoint_now or (rollback_mode and not failed)
        if state["step"] % cfg.train.log_every_steps == 0 or checkpoint_now or validate_now:
            metrics = progress.metrics(state, {**val, **guards.metrics(state, failed)},
                                       engines[stage.trained[0]].get_lr()[0])
            progress.log(metrics, state)
            progress.restart_meter()
            if checkpoint_now:
                checkpoint(metrics, milestone)
            else:
                hooks.report(metrics, None)
    progress.close()
    return metrics
