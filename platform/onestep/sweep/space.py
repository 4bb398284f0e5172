"""What a sweep varies and how it searches: pure functions of the config (no Ray started).

The two knobs are TurboTalk's Table 4: the self-compare weight λ and the dynamic-timestep
warm-up. Grid search runs every combination; random and Bayesian search sample λ uniformly
between the smallest and largest listed value and pick the warm-up from the list.
"""

from __future__ import annotations

import math

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from onestep.config import Config, ConfigError, from_dict

METRIC, MODE = "val_score", "min"
PARAMS = ("self_compare_weight", "warmup_steps")  # fields of cfg.adversarial


def param_space(cfg: Config) -> dict:
    s = cfg.sweep
    if s.search == "grid":
        return {"self_compare_weight": tune.grid_search(list(s.self_compare_weights)),
                "warmup_steps": tune.grid_search(list(s.warmup_steps))}
    return {"self_compare_weight": tune.uniform(min(s.self_compare_weights),
                                                max(s.self_compare_weights)),
            "warmup_steps": tune.choice(list(s.warmup_steps))}


def num_trials(cfg: Config) -> int:
    s = cfg.sweep
    if s.search == "grid":
        return len(s.self_compare_weights) * len(s.warmup_steps)
    return s.num_samples


def search_algorithm(cfg: Config):
    """None for grid and random (Tune's own variant generator); Optuna's TPE for bayes."""
    if cfg.sweep.search != "bayes":
        return None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=METRIC, mode=MODE, seed=cfg.data.seed)


def trial_clips(cfg: Config) -> int:
    return sum(cfg.adversarial.phase_clips())


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
    """The base config every trial starts from, checked for a sweep: it must train the
    adversarial stage and validate during training (ASHA ranks trials by validation)."""
    if cfg.train.stage != "adversarial":
        raise ConfigError(f"train.stage: a sweep tunes the adversarial stage, got "
                          f"{cfg.train.stage!r}")
    out = from_dict(cfg.to_dict())
    if not out.validation.every_clips:
        out.validation.every_clips = grace_clips(out)
    if out.validation.every_clips > trial_clips(out):
        raise ConfigError(f"validation.every_clips: {out.validation.every_clips} is more than a "
                          f"trial's {trial_clips(out)} clips; trials would never be compared")
    return out


def trial_config(base: Config, params: dict, root: str, name: str) -> Config:
    """One trial's config: the base with the sampled knobs, its own run folder."""
    cfg = from_dict(base.to_dict())
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise ConfigError(f"sweep parameters {sorted(unknown)}: only {list(PARAMS)} are swept")
    cfg.adversarial.self_compare_weight = float(params["self_compare_weight"])
    cfg.adversarial.warmup_steps = int(params["warmup_steps"])
    cfg.run.root, cfg.run.name = root, name
    return cfg.validate()
