"""What a sweep varies and how it searches: pure functions of the config (no Ray started).

`sweep.space` maps dotted config keys to values. Grid search runs every combination; random
and Bayesian search sample a float key uniformly between its smallest and largest value (a
learning rate or a loss weight is a continuum) and pick any other key's value from its list (a
step count, a switch, a loss name is not).
"""

from __future__ import annotations

import math

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from onestep.config import Config, ConfigError, field_type, from_dict, with_values
from onestep.stages import STAGES, stage_class

METRIC, MODE = "val_score", "min"


def param_space(cfg: Config) -> dict:
    if cfg.sweep.search == "grid":
        return {key: tune.grid_search(values) for key, values in cfg.sweep.space.items()}
    return {key: _sampled(key, values) for key, values in cfg.sweep.space.items()}


def _sampled(key: str, values: list):
    if field_type(key) is float and len(set(values)) > 1:
        return tune.uniform(min(values), max(values))
    return tune.choice(values)


def num_trials(cfg: Config) -> int:
    if cfg.sweep.search == "grid":
        return math.prod(len(values) for values in cfg.sweep.space.values())
    return cfg.sweep.num_samples


def search_algorithm(cfg: Config):
    """None for grid and random (Tune's own variant generator); Optuna's TPE for bayes."""
    if cfg.sweep.search != "bayes":
        return None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=METRIC, mode=MODE, seed=cfg.data.seed)


def trial_clips(cfg: Config) -> int:
    return stage_class(cfg.train.stage).total_clips(cfg)


def grace_clips(cfg: Config) -> int:
    """ASHA's first rung, in clips: sweep.grace_clips, else a quarter of a trial, at least one
    batch."""
    batch = cfg.train.global_batch
    clips = cfg.sweep.grace_clips or trial_clips(cfg) // 4
    return max(batch, math.ceil(clips / batch) * batch)


def scheduler(cfg: Config):
    if cfg.sweep.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="clips_seen", max_t=trial_clips(cfg),
                         grace_period=grace_clips(cfg), reduction_factor=2)


def trial_cpus(cfg: Config) -> int:
    """Logical CPUs one trial holds: its Tune driver (1), its Train workers and, on CPU, Ray
    Data's minimum of a read task and a decoding actor (2). With fewer, a trial's data pipeline
    waits forever for a CPU."""
    t = cfg.train
    return 1 + t.num_workers * t.cpus_per_worker + 2


def concurrency(cfg: Config, resources: dict) -> int:
    """Trials at once: sweep.max_concurrent, else as many Train runs as the cluster fits."""
    t = cfg.train
    if t.use_gpu:
        fits = int(resources.get("GPU", 0) // t.num_workers)
        need = f"{t.num_workers} GPUs"
    else:
        fits = int(resources.get("CPU", 0) // trial_cpus(cfg))
        need = f"{trial_cpus(cfg)} CPUs (the trial, {t.num_workers} workers, 2 for Ray Data)"
    if fits < 1:
        raise ConfigError(f"train.num_workers: one trial needs {need}; the cluster has "
                          f"{resources.get('GPU' if t.use_gpu else 'CPU', 0):g}")
    return min(cfg.sweep.max_concurrent, fits) if cfg.sweep.max_concurrent else fits


def sweep_ready(cfg: Config) -> Config:
    """The base config every trial starts from, checked for a sweep: its stage must validate
    during training (ASHA ranks trials by validation), and every value of the space must make a
    valid config (found now, not when its trial starts hours later)."""
    exported = stage_class(cfg.train.stage).export
    if exported != "generator":
        generators = [name for name, stage in STAGES.items() if stage.export == "generator"]
        raise ConfigError(f"train.stage: stage {cfg.train.stage} trains a {exported}, which has "
                          "no validation score to rank trials by; sweep a generator stage ("
                          + ", ".join(generators) + ")")
    out = from_dict(cfg.to_dict())
    if not out.validation.every_clips:
        out.validation.every_clips = grace_clips(out)
    if out.validation.every_clips > trial_clips(out):
        raise ConfigError(f"validation.every_clips: {out.validation.every_clips} is more than a "
                          f"trial's {trial_clips(out)} clips; trials would never be compared")
    for key, values in out.sweep.space.items():
        for value in values:
            try:
                with_values(out, {key: value})
            except ConfigError as e:
                raise ConfigError(f"sweep.space[{key}] = {value!r}: {e}") from None
    return out


def trial_config(base: Config, params: dict, root: str, name: str) -> Config:
    """One trial's config: the base with the sampled values, its own run folder."""
    unknown = set(params) - set(base.sweep.space)
    if unknown:
        raise ConfigError(f"sweep parameters {sorted(unknown)} are not in sweep.space "
                          f"({', '.join(base.sweep.space)})")
    cfg = with_values(base, params)
    cfg.run.root, cfg.run.name = root, name
    return cfg


def label(key: str, keys: list[str]) -> str:
    """A swept key as tables and logs show it: its last part, unless another key shares it."""
    short = key.rsplit(".", 1)[-1]
    return short if sum(k.rsplit(".", 1)[-1] == short for k in keys) == 1 else key


def describe(params: dict) -> str:
    """`self_compare_weight=0.5, warmup_steps=20`."""
    keys = list(params)
    return ", ".join(f"{label(k, keys)}={_fmt(v)}" for k, v in params.items())


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
