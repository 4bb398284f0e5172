"""Resuming a run on another number of workers.

ZeRO-3 splits every parameter and its Adam moments over the ranks that saved them, so N workers'
shards do not load on M. DeepSpeed's universal checkpoint holds each parameter whole (fp32 weights,
exp_avg, exp_avg_sq in one folder per parameter), and any world size loads its own slices from it.

The conversion runs where the restore runs, inside the worker group, not on the driver: an
elastic run (`train.min_workers`) is restarted by Ray Train on whatever worker count fits, with
the checkpoint Ray hands over, and no driver code sees that. One rank per node converts into the
node's local disk (no upload; nodes convert in parallel), the node's ranks load from it, and it is
removed. The EMA is not a DeepSpeed state: it is re-partitioned from the checkpoint's export, which
is the whole EMA of the exported network.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from onestep.train.engine import deepspeed_pickled_types, world

log = logging.getLogger("onestep.train")


@contextlib.contextmanager
def _tensors_only_loads():
    """DeepSpeed's converter and its universal loader call `torch.load(weights_only=False)` in a
    dozen places; a checkpoint anyone else can write to would run their code. Inside the block
    every `torch.load` is made `weights_only=True`, allowing only the DeepSpeed types its files
    hold. (torch.load is patched for the whole process: the block runs while the worker does
    nothing else.)"""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(deepspeed_pickled_types()):
            return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def to_universal(engine_dir: Path, out: Path) -> None:
    """Convert one network's ZeRO checkpoint (`engine_dir/state`) into `out/state`."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(engine_dir / "state"), output_folder=str(out / "state"),
        # In-process: a pool would fork a worker that holds the process group and its threads.
        num_extract_workers=1, num_merge_workers=1,
        keep_temp_folder=False, strict=True, inject_missing_state=False)
    with _tensors_only_loads():
        ds_to_universal.main(args)


def _node_scratch() -> Path:
    """A folder name every rank agrees on (rank 0 draws it), on this node's disk."""
    name = [Path(tempfile.mkdtemp(prefix="onestep-universal-")).name if world()[0] == 0 else ""]
    torch.distributed.broadcast_object_list(name, src=0)
    return Path(tempfile.gettempdir()) / name[0]


def load_resized(directory: Path, engines: dict, names: list[str], saved_by: int) -> None:
    """Collective: load the DeepSpeed states of `names` that `saved_by` workers wrote in
    `directory/engines/` into `engines`, on this run's worker count."""
    world_size = world()[1]
    first_on_node = int(os.environ.get("LOCAL_RANK", "0")) == 0
    scratch = _node_scratch()
    try:
        if first_on_node:
            t0 = time.perf_counter()
            scratch.mkdir(exist_ok=True)
            for name in names:
                to_universal(directory / "engines" / name, scratch / name)
            log.info("converted the checkpoint of %d workers for %d in %.1f s (%s)", saved_by,
                     world_size, time.perf_counter() - t0, ", ".join(names))
        torch.distributed.barrier()
        for name in names:
            engine = engines[name]
            engine._config.load_universal_checkpoint = True  # read at load time only
            try:
                with _tensors_only_loads():
                    path, _ = engine.load_checkpoint(str(scratch / name), tag="state")
            finally:
                engine._config.load_universal_checkpoint = False
            if path is None:
                raise RuntimeError(f"{directory}: no DeepSpeed state for network {name!r}")
        torch.distributed.barrier()  # every rank of the node has read it
    finally:
        if first_on_node:
            shutil.rmtree(scratch, ignore_errors=True)
