"""EMA of a network's weights that works on ZeRO-3 partitions.

Each rank averages only the slice of every parameter it owns (`ds_tensor`), so the EMA is sharded
exactly like the model and costs 1/N of its memory per rank. To export, the EMA slices are swapped
into the parameters, DeepSpeed gathers the full tensors, and the live weights are swapped back.
"""

from __future__ import annotations

import contextlib

import torch
from safetensors.torch import load_file, save_file

from onestep.train.engine import full_state_dict, local_shard, world


class ShardedEMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay = module, decay
        self.names = [n for n, _ in module.named_parameters()]
        self.shadow = [local_shard(p).detach().float().clone() for p in module.parameters()]

    @torch.no_grad()
    def reset(self) -> None:
        """Start averaging afresh from the live weights."""
        for s, p in zip(self.shadow, self.module.parameters()):
            s.copy_(local_shard(p).float())

    @torch.no_grad()
    def update(self, step: int) -> None:
        """`step`: updates since the average (re)started. Warm-up as in DiT/edm2 practice:
        early weights are noise; don't average them for long."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.module.parameters()):
            s.lerp_(local_shard(p).float(), 1 - decay)

    @contextlib.contextmanager
    def swapped_in(self):
        params = list(self.module.parameters())
        backup = [local_shard(p).detach().clone() for p in params]
        for s, p in zip(self.shadow, params):
            local_shard(p).copy_(s)
        try:
            yield
        finally:
            for b, p in zip(backup, params):
                local_shard(p).copy_(b)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Consolidated EMA weights on rank 0, {} on the others (collective: every rank must
        call)."""
        with self.swapped_in():
            return full_state_dict(self.module)

    def save_shard(self, path: str) -> None:
        save_file({n: s.contiguous() for n, s in zip(self.names, self.shadow)}, path)

    @torch.no_grad()
    def load_full(self, weights: dict[str, torch.Tensor]) -> None:
        """This rank's slices of the whole EMA (a checkpoint's export): how the average follows
        a run that resumes on another number of workers. A ZeRO-3 partition is the rank's
        equal, zero-padded piece of the flattened parameter."""
        rank, _ = world()
        for i, (n, p) in enumerate(zip(self.names, self.module.parameters())):
            full = weights[n].detach().float().flatten()
            if not hasattr(p, "ds_tensor"):
                self.shadow[i].copy_(full.view_as(self.shadow[i]))
                continue
            size = self.shadow[i].numel()
            piece = full[rank * size:(rank + 1) * size]
            self.shadow[i].zero_()
            self.shadow[i][:piece.numel()].copy_(piece)

    @torch.no_grad()
    def copy_into(self, module: torch.nn.Module) -> None:
        """Write the average into `module`'s parameters: a network of the same architecture,
        sharded alike (a consistency model's target network follows its student so)."""
        for s, p in zip(self.shadow, module.parameters()):
            local_shard(p).copy_(s)

    def load_shard(self, path: str) -> None:
        state = load_file(path)
        for i, n in enumerate(self.names):
            if state[n].shape != self.shadow[i].shape:
                raise ValueError(f"{path}: EMA shard {n} has shape {tuple(state[n].shape)}, "
                                 f"expected {tuple(self.shadow[i].shape)} (resumed with a "
                                 "different number of workers?)")
            self.shadow[i].copy_(state[n])
