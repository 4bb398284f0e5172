"""The Tune job: every trial is a Ray Train run of the swept stage (Train V2 + Tune).

Tune keeps the experiment in <run.root>/<sweep.name> (its state and one folder per trial); each
trial's Train run (ZeRO-3 shards, checkpoints, exports) lives in
<run.root>/<sweep.name>/trials/<trial id>. A resumed sweep therefore skips finished trials
(Tune's state) and continues an interrupted trial from its last checkpoint (Ray Train restores a
run by its name). The base config is saved beside the state so `--resume` replays exactly it.
"""

from __future__ import annotations

import logging

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from onestep.config import Config, from_dict, read_yaml
from onestep.storage import Location, resolve
from onestep.sweep.slots import open_slots, trial_slot
from onestep.sweep.space import (
    METRIC,
    MODE,
    concurrency,
    describe,
    num_trials,
    param_space,
    scheduler,
    search_algorithm,
    trial_clips,
    trial_config,
)
from onestep.train.ray_job import make_trainer

log = logging.getLogger("onestep.sweep")
BASE_CONFIG = "sweep.yaml"


class SweepStateError(RuntimeError):
    """A sweep that should be new exists, or one to resume does not."""


def experiment(cfg: Config) -> Location:
    return resolve(cfg.run.root, cfg.run.s3_endpoint_url).join(cfg.sweep.name)


def _trial(params: dict, base: dict) -> None:
    """One trial: a complete Train run; its reports reach Tune through TuneReportCallback."""
    cfg = from_dict(base)
    trial_id = tune.get_context().get_trial_id()
    run_cfg = trial_config(cfg, params, experiment(cfg).join("trials").uri, trial_id)
    with trial_slot(cfg.sweep.name, trial_id):
        result = make_trainer(run_cfg, callbacks=[TuneReportCallback()]).fit()
    if result.error:
        raise result.error


class _Progress(tune.Callback):
    """One line per finished trial, so a long sweep's console says what each trial found."""

    def __init__(self, total_clips: int):
        self.total_clips = total_clips

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        clips = int(r.get("clips_seen", 0))
        how = "finished" if clips >= self.total_clips else f"stopped early at {clips} clips"
        print(f"trial {trial.trial_id} ({describe(trial.config)}) {how}: "
              f"{METRIC} {r.get(METRIC, float('nan')):.4f}, lip-sync "
              f"{r.get('val_sync', float('nan')):.3f}, Fréchet "
              f"{r.get('val_frechet', float('nan')):.4f}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"trial {trial.trial_id} ({describe(trial.config)}) failed; see {trial.path}",
              flush=True)


def load_base(cfg: Config) -> Config:
    """The base config a sweep was started with (for --resume)."""
    saved = experiment(cfg).join(BASE_CONFIG)
    if not saved.exists():
        raise SweepStateError(f"{experiment(cfg).uri}: no sweep to resume (no {BASE_CONFIG}); "
                              "start it without --resume")
    return from_dict(read_yaml(saved.read_bytes()))


def run_sweep(cfg: Config, resume: bool = False) -> tune.ResultGrid:
    """Run (or resume) the sweep described by `cfg` (absolute paths, sources pinned)."""
    exp = experiment(cfg)
    at_once = concurrency(cfg, ray.cluster_resources())
    slots = open_slots(cfg.sweep.name, at_once)  # noqa: F841 (kept alive by this reference)
    # A trial's driver only waits (for a slot, then on Train): a sliver of a CPU (Tune refuses
    # none), so waiting trials cannot take the CPUs a running trial's data pipeline needs.
    trainable = tune.with_resources(tune.with_parameters(_trial, base=cfg.to_dict()),
                                    {"CPU": 0.01})
    if resume:
        if not tune.Tuner.can_restore(exp.path, storage_filesystem=exp.fs):
            raise SweepStateError(f"{exp.uri}: no Tune state to resume")
        tuner = tune.Tuner.restore(exp.path, trainable, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=exp.fs)
    else:
        if exp.join(BASE_CONFIG).exists():
            raise SweepStateError(f"{exp.uri} already holds a sweep: pass --resume to continue "
                                  "it, or choose another name with --set sweep.name=...")
        exp.join(BASE_CONFIG).write_bytes(cfg.to_yaml().encode())
        root = resolve(cfg.run.root, cfg.run.s3_endpoint_url)
        log.info("sweep %s of stage %s over %s: %d trials, %d at a time, %s search, scheduler "
                 "%s", cfg.sweep.name, cfg.train.stage, ", ".join(cfg.sweep.space),
                 num_trials(cfg), at_once, cfg.sweep.search, cfg.sweep.scheduler)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, scheduler=scheduler(cfg),
                search_alg=search_algorithm(cfg),
                num_samples=1 if cfg.sweep.search == "grid" else cfg.sweep.num_samples,
                max_concurrent_trials=at_once, trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(name=cfg.sweep.name, storage_path=root.path,
                                      storage_filesystem=root.fs,
                                      callbacks=[_Progress(trial_clips(cfg))]))
    return tuner.fit()
