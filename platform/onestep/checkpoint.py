"""Checkpoint layout, and loading a generator for inference from a checkpoint alone.

A checkpoint directory (what Ray Train persists to the run's storage) holds:

    config.yaml          the full run config (reproduce or resume from this alone)
    state.json           stage, step, clips seen, world size
    model.safetensors    consolidated EMA generator weights: the inference export
    checksums.json       size and SHA-256 of the three files above (onestep.integrity)
    engines/<net>/       DeepSpeed ZeRO shards (weights + optimiser) per rank, for resuming
    ema/<net>-rank<r>.safetensors   each rank's EMA partition, for resuming
    checksums-rank<r>.json          size and SHA-256 of each rank's resume files

`load_generator(path)` needs only config.yaml + model.safetensors (+ checksums.json), from a
folder or S3, verifies them, and never unpickles anything (safetensors + YAML).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from onestep import integrity
from onestep.config import Config, ConfigError, from_dict, read_yaml
from onestep.model import build_model
from onestep.storage import Location, resolve

CONFIG, STATE, WEIGHTS = "config.yaml", "state.json", "model.safetensors"
EXPORT_FILES = (WEIGHTS, STATE, CONFIG)
log = logging.getLogger("onestep.checkpoint")


class CheckpointError(ValueError):
    pass


def save_export(directory: Path, weights: dict[str, torch.Tensor], cfg: Config,
                state: dict) -> None:
    """The inference export: what `load_generator` (jobs, Serve) needs and nothing else."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(cfg.to_yaml())
    (directory / STATE).write_text(json.dumps(state, indent=2))
    integrity.record(directory, list(EXPORT_FILES), integrity.EXPORT_SUMS)


def export_in_dtype(directory: Path, dtype: str, out: Path) -> Path:
    """A checkpoint's export (fp32: the EMA) with its floating-point weights in `dtype`
    ("float32" or "bfloat16"): `directory` itself for float32, else a copy written into `out`
    with its checksums renewed. Loading casts back to the model's dtype."""
    if dtype == "float32":
        return directory
    weights = load_file(str(directory / WEIGHTS))
    out.mkdir(parents=True, exist_ok=True)
    target = getattr(torch, dtype)
    save_file({k: v.to(target) if v.is_floating_point() else v for k, v in weights.items()},
              str(out / WEIGHTS))
    for name in (CONFIG, STATE):
        (out / name).write_bytes((directory / name).read_bytes())
    integrity.record(out, list(EXPORT_FILES), integrity.EXPORT_SUMS)
    return out


def read_state(directory: Path) -> dict:
    return json.loads((directory / STATE).read_text())


def verify_export(loc: Location, uri: str) -> None:
    """Raise naming the file (under `uri`, where `loc` may be its download) if an export's files
    differ from what was written; one from before checksums were recorded loads with a warning."""
    if not integrity.has_sums(loc):
        log.warning("%s: no %s (written by an older onestep): its files cannot be verified",
                    uri, integrity.EXPORT_SUMS)
        return
    found = integrity.problems(loc, integrity.EXPORT_SUMS)
    if found:
        raise CheckpointError("; ".join(p.replace(loc.uri, uri.rstrip("/"), 1) for p in found))


@contextlib.contextmanager
def fetched(uri: str, endpoint_url: str = "") -> Iterator[Path]:
    """A local folder holding a checkpoint's verified config and weights: the folder itself, or
    a download from S3 that is removed when the block ends."""
    loc = resolve(uri, endpoint_url)
    if not loc.join(CONFIG).exists():
        raise CheckpointError(f"{uri}: not a onestep checkpoint (no {CONFIG}); pass a "
                              "checkpoint_* folder of a run or an export folder")
    if not loc.is_s3:
        if not loc.join(WEIGHTS).exists():
            raise CheckpointError(f"{uri}: no {WEIGHTS}")
        verify_export(loc, uri)
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="onestep-ckpt-") as tmp:
        local = Path(tmp)
        for name in (*EXPORT_FILES, integrity.EXPORT_SUMS):
            src = loc.join(name)
            if name in (STATE, integrity.EXPORT_SUMS) and not src.exists():
                continue
            src.download(local / name)
        verify_export(resolve(str(local)), uri)
        yield local


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


def checkpoint_problems(loc: Location) -> list[str]:
    """Why a training checkpoint folder cannot be resumed from (empty: it can): the export's
    and every rank's checksum lists present, and every file they name intact."""
    found = integrity.problems(loc, integrity.EXPORT_SUMS)
    if found:
        return found
    world_size = json.loads(loc.join(STATE).read_bytes())["world_size"]
    for rank in range(world_size):
        found += integrity.problems(loc, integrity.rank_sums(rank))
    return found


def resume_point(run: Location) -> tuple[str | None, dict[str, list[str]]]:
    """The newest checkpoint of a run that is complete and intact, and why each newer one was
    passed over (a crash mid-write, a truncated upload, flipped bytes)."""
    passed_over = {}
    for name in reversed(checkpoint_names(run)):
        found = checkpoint_problems(run.join(name))
        if not found:
            return name, passed_over
        passed_over[name] = found
    return None, passed_over


def checkpoint_at_step(run: Location, step: int) -> str | None:
    """The newest complete and intact checkpoint of a run taken at `step` (a collapse guard's
    rollback target), or None."""
    for name in reversed(checkpoint_names(run)):
        loc = run.join(name)
        if loc.join(STATE).exists() and json.loads(loc.join(STATE).read_bytes())["step"] == step \
                and not checkpoint_problems(loc):
            return name
    return None


def resolve_checkpoint(uri: str, endpoint_url: str = "") -> str:
    """A checkpoint folder as given, or a run folder's latest checkpoint."""
    if resolve(uri, endpoint_url).join(CONFIG).exists():
        return uri
    return latest_checkpoint(uri, endpoint_url)


def training_checkpoint(uri: str, stage: str, endpoint_url: str = "") -> str:
    """`uri` (a checkpoint, or a run whose latest checkpoint is meant) as a concrete checkpoint
    that a run of `stage` can continue from (on any number of workers: see train.resize)."""
    ckpt = resolve_checkpoint(uri, endpoint_url)
    loc = resolve(ckpt, endpoint_url)
    if not loc.join("engines").listdir():
        raise CheckpointError(f"{ckpt}: an export (weights only), not a training checkpoint; "
                              "pass a checkpoint_* folder of a run")
    found = checkpoint_problems(loc)
    if found:
        raise CheckpointError(f"{ckpt}: cannot be continued: {'; '.join(found)}")
    state = json.loads(loc.join(STATE).read_bytes())
    if state["stage"] != stage:
        raise CheckpointError(f"{ckpt}: a checkpoint of stage {state['stage']!r}, not {stage!r}")
    return ckpt


def read_config(uri: str, endpoint_url: str = "") -> Config:
    """The config saved in a checkpoint (without fetching its weights)."""
    loc = resolve(uri, endpoint_url).join(CONFIG)
    if not loc.exists():
        raise CheckpointError(f"{uri}: not a onestep checkpoint (no {CONFIG})")
    return _parse_config(loc.read_bytes(), uri)


def _parse_config(text: bytes, uri: str) -> Config:
    try:
        return from_dict(read_yaml(text))
    except (yaml.YAMLError, ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{uri}/{CONFIG}: not a valid onestep config "
                              f"({str(e).splitlines()[0][:200]})") from None


def _saved_shapes(path: Path, uri: str) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors' own errors name neither the file nor the cause well
        raise CheckpointError(f"{uri}/{WEIGHTS}: not a readable safetensors file "
                              f"({str(e).splitlines()[0][:200]})") from None


def check_weights(path: Path, cfg: Config, uri: str) -> None:
    """The weights file holds exactly the tensors, with their shapes, of the network `cfg`
    describes: read from its header against a network built on the meta device, so a mismatch
    is one line before any tensor is loaded (and nothing is allocated, whatever the size)."""
    saved = _saved_shapes(path / WEIGHTS, uri)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = [f"{k} is {saved[k]}, the config's model has {expected[k]}"
             for k in sorted(set(saved) & set(expected)) if saved[k] != expected[k]]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "", *wrong[:3]]))
        raise CheckpointError(f"{uri}/{WEIGHTS}: does not fit the model in its {CONFIG} "
                              f"({detail})")


def load_export(uri: str, endpoint_url: str = "") -> tuple[dict[str, torch.Tensor], Config]:
    """A checkpoint's verified inference weights and the config they were trained with."""
    with fetched(uri, endpoint_url) as path:
        cfg = _parse_config((path / CONFIG).read_bytes(), uri)
        check_weights(path, cfg, uri)
        return load_file(str(path / WEIGHTS), device="cpu"), cfg


def check_export(uri: str, endpoint_url: str = "") -> Config:
    """Everything `load_generator` would check, without loading the weights: for a server
    that must refuse to start on a checkpoint it could not load."""
    with fetched(uri, endpoint_url) as path:
        cfg = _parse_config((path / CONFIG).read_bytes(), uri)
        check_weights(path, cfg, uri)
        return cfg


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
