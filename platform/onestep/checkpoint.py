"""Checkpoint layout, and loading a generator for inference from a checkpoint alone.

A checkpoint directory (what Ray Train persists to the run's storage) holds:

    config.yaml          the full run config (reproduce or resume from this alone)
    state.json           stage, step, clips seen, world size
    model.safetensors    consolidated EMA generator weights: the inference export
    engines/<net>/       DeepSpeed ZeRO shards (weights + optimiser) per rank, for resuming
    ema/<net>-rank<r>.safetensors   each rank's EMA partition, for resuming

`load_generator(path)` needs only config.yaml + model.safetensors, from a folder or S3, and never
unpickles anything (safetensors + YAML).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from onestep.config import Config, from_dict
from onestep.model import build_model
from onestep.storage import resolve

CONFIG, STATE, WEIGHTS = "config.yaml", "state.json", "model.safetensors"


class CheckpointError(ValueError):
    pass


def save_export(directory: Path, weights: dict[str, torch.Tensor], cfg: Config,
                state: dict) -> None:
    """The inference export: what `load_generator` (jobs, Serve) needs and nothing else."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(cfg.to_yaml())
    (directory / STATE).write_text(json.dumps(state, indent=2))


def read_state(directory: Path) -> dict:
    return json.loads((directory / STATE).read_text())


def fetch(uri: str, endpoint_url: str = "") -> Path:
    """A local folder holding a checkpoint's config and weights (downloaded if on S3)."""
    loc = resolve(uri, endpoint_url)
    if not loc.is_s3:
        path = Path(loc.path)
        for name in (CONFIG, WEIGHTS):
            if not (path / name).is_file():
                raise CheckpointError(f"{uri}: not a onestep checkpoint (no {name}); pass a "
                                      "checkpoint_* folder of a run or an export folder")
        return path
    local = Path(tempfile.mkdtemp(prefix="onestep-ckpt-"))
    for name in (CONFIG, WEIGHTS, STATE):
        src = loc.join(name)
        if name == STATE and not src.exists():
            continue
        (local / name).write_bytes(src.read_bytes())
    return local


def checkpoint_names(run) -> list[str]:
    """A run's checkpoint folders, oldest first (Ray names them by timestamp)."""
    return sorted(n for n in run.listdir()
                  if n.startswith("checkpoint_") and not n.endswith(".json"))


def latest_checkpoint(run_uri: str, endpoint_url: str = "") -> str:
    """The newest checkpoint_* folder of a run."""
    run = resolve(run_uri, endpoint_url)
    names = checkpoint_names(run)
    if not names:
        raise CheckpointError(f"{run_uri}: no checkpoint_* folders in this run")
    return run.join(names[-1]).uri


def resolve_checkpoint(uri: str, endpoint_url: str = "") -> str:
    """A checkpoint folder as given, or a run folder's latest checkpoint."""
    if resolve(uri, endpoint_url).join(CONFIG).exists():
        return uri
    return latest_checkpoint(uri, endpoint_url)


def training_checkpoint(uri: str, stage: str, num_workers: int, endpoint_url: str = "") -> str:
    """`uri` (a checkpoint, or a run whose latest checkpoint is meant) as a concrete checkpoint
    that a run of `stage` on `num_workers` workers can continue from."""
    ckpt = resolve_checkpoint(uri, endpoint_url)
    loc = resolve(ckpt, endpoint_url)
    if not loc.join("engines").listdir():
        raise CheckpointError(f"{ckpt}: an export (weights only), not a training checkpoint; "
                              "pass a checkpoint_* folder of a run")
    state = json.loads(loc.join(STATE).read_bytes())
    if state["stage"] != stage:
        raise CheckpointError(f"{ckpt}: a checkpoint of stage {state['stage']!r}, not {stage!r}")
    if state["world_size"] != num_workers:
        raise CheckpointError(f"{ckpt}: saved by {state['world_size']} workers; its ZeRO shards "
                              f"need train.num_workers={state['world_size']} (not {num_workers})")
    return ckpt


def read_config(uri: str, endpoint_url: str = "") -> Config:
    """The config saved in a checkpoint (without fetching its weights)."""
    loc = resolve(uri, endpoint_url).join(CONFIG)
    if not loc.exists():
        raise CheckpointError(f"{uri}: not a onestep checkpoint (no {CONFIG})")
    return from_dict(yaml.safe_load(loc.read_bytes()))


def load_export(uri: str, endpoint_url: str = "") -> tuple[dict[str, torch.Tensor], Config]:
    """A checkpoint's inference weights and the config they were trained with."""
    path = fetch(uri, endpoint_url)
    cfg = from_dict(yaml.safe_load((path / CONFIG).read_text()))
    return load_file(str(path / WEIGHTS), device="cpu"), cfg


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], uri: str) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{uri}: weights do not match the config's model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_generator(uri: str, endpoint_url: str = "", device: str = "cpu"
                   ) -> tuple[torch.nn.Module, Config]:
    """Build the network from the saved config and load the EMA weights."""
    weights, cfg = load_export(uri, endpoint_url)
    model = build_model(cfg)
    load_weights_into(model, weights, uri)
    return model.to(device).eval(), cfg


def inherit_architecture(cfg: Config, source: Config) -> list[str]:
    """Give `cfg` the network, codec and audio encoder of the checkpoint it starts from (a
    distillation stage cannot change them). Returns the keys that changed, to tell the user."""
    changed = []
    for section in ("model", "codec", "audio"):
        mine, theirs = getattr(cfg, section).__dict__, getattr(source, section).__dict__
        changed += [f"{section}.{k}" for k in mine if mine[k] != theirs[k]]
        setattr(cfg, section, type(getattr(source, section))(**dict(theirs)))
    return changed
