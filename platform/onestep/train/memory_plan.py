"""Per-rank memory of a run, planned before launch: for every network of the stage, its
parameters, gradients, optimizer state (Adam moments + fp32 master) and EMA, and the activations
one micro-batch saves for backward; the run's peak adds the states of all networks and the
activations of its largest backward pass.

The states follow what DeepSpeed allocates (measured against it by benchmarks/zero_memory.py),
with P parameters and N ranks. A trained network's weights are fp32 in either precision (bf16 is
autocast compute: onestep.train.engine); a frozen one's are bf16 under bf16 (b = 2), else fp32
(b = 4). Buffers (Wan's stored prompt) keep their fp32 and are held whole on every rank.

    trained      params    4P/N under ZeRO-3, else 4P
                 grads     4P/N under ZeRO ≥ 1 (reduced into partitions), else 4P; plus a copy
                           4P/N for the master's step under ZeRO-3
                 optimizer Adam 8P/N + fp32 master 4P/N under ZeRO ≥ 1; ZeRO-0: 8P
    frozen       params    b·P/N under ZeRO-3, else b·P (no gradients, no optimizer)
    EMA          fp32 copy of the exported network's local shard: 4P/N under ZeRO-3, else 4P

Activations are saved in the compute dtype (bf16 under autocast, traced as a bf16 network).

With `train.offload_optimizer` the optimizer terms (and the fp32 gradient copy) live in host
memory instead, and with `train.offload_params` the parameter shards. Activations are counted by
running the network's forward (the stage says on what: `Stage.plan_inputs`) on the meta device
(no memory, no compute) and adding up the tensors autograd saves, with attention counted the way a
flash/cuDNN kernel saves it (q, k, v, output and a log-sum-exp per row, never the T×T matrix);
with `train.activation_checkpointing` only each block's input is kept, plus one block's
activations while it is recomputed in backward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from onestep.config import Config
from onestep.model.dit import Block, Conditions, set_activation_checkpointing

MIB = 2 ** 20


@dataclass
class NetworkPlan:
    name: str
    parameters: int
    trained: bool
    params_bytes: float = 0.0
    grads_bytes: float = 0.0
    optimizer_bytes: float = 0.0
    ema_bytes: float = 0.0
    host_bytes: float = 0.0  # offloaded optimizer state
    activation_bytes: float = 0.0

    @property
    def device_bytes(self) -> float:
        return (self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.ema_bytes
                + self.activation_bytes)


def compute_dtype(cfg: Config) -> torch.dtype:
    from onestep.train.engine import precision

    return torch.bfloat16 if precision(cfg) == "bf16" else torch.float32


def state_plan(cfg: Config, world_size: int, name: str, parameters: int, trained: bool,
               exported: bool, buffers: int = 0) -> NetworkPlan:
    """The parameter, gradient, optimizer and EMA terms of one network (module docstring);
    `buffers` elements (Wan's stored prompt) are held whole on every rank."""
    z, n, p = cfg.train.zero_stage, world_size, parameters
    b = 2 if not trained and compute_dtype(cfg) == torch.bfloat16 else 4
    plan = NetworkPlan(name, parameters, trained)
    plan.params_bytes = b * p / (n if z == 3 else 1) + 4 * buffers
    if cfg.train.offload_params:  # ZeRO-3 fetches each layer's shard from host memory
        plan.host_bytes, plan.params_bytes = plan.params_bytes, 0.0
    if exported:
        plan.ema_bytes = 4 * p / (n if z == 3 else 1)
    if not trained:
        return plan
    plan.grads_bytes = 4 * p / (n if z >= 1 else 1)
    fp32_grads = 4 * p / n if z == 3 else 0.0
    optimizer = 8 * p / n + 4 * p / n if z >= 1 else 8 * p
    if cfg.train.offload_optimizer:
        plan.host_bytes += optimizer + fp32_grads
    else:
        plan.optimizer_bytes, plan.grads_bytes = optimizer, plan.grads_bytes + fp32_grads
    return plan


class _FlashLikeAttention(torch.autograd.Function):
    """What a flash attention kernel saves for backward, on the meta device: q, k, v, the
    output and a float32 log-sum-exp per query row (never the T×T weights)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the trace only counts what forward saves
        raise NotImplementedError


@contextlib.contextmanager
def _flash_attention_on_meta():
    original = F.scaled_dot_product_attention

    def attention(q, k, v, *args, **kwargs):
        return _FlashLikeAttention.apply(q, k, v)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _cast(value, dtype: torch.dtype):
    if torch.is_tensor(value):
        return value.to(dtype)
    if isinstance(value, Conditions):
        return Conditions(**{k: _cast(v, dtype) for k, v in vars(value).items()})
    return value


def saved_activation_bytes(model: torch.nn.Module, cfg: Config, batch: int) -> float:
    """Bytes autograd saves in one forward of `model` (built on the meta device) for a
    micro-batch of `batch` training windows; storages counted once."""
    from onestep.stages import stage_class

    dtype = compute_dtype(cfg)
    with torch.device("meta"):
        inputs = stage_class(cfg.train.stage).plan_inputs(cfg, model, batch)
    model = model.to(dtype)
    inputs = [_cast(x, dtype) for x in inputs]
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen.setdefault(storage._cdata, storage.nbytes())
        return tensor

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    with _flash_attention_on_meta(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return float(sum(v for k, v in seen.items() if k not in params))


def activation_bytes(model: torch.nn.Module, cfg: Config, batch: int) -> float:
    """Activations of one training forward. With checkpointing, what stays between forward and
    backward (the trace sees each block's input, which the checkpoint keeps, and the non-block
    part) plus one block's activations while it is recomputed."""
    full = saved_activation_bytes(model, cfg, batch)
    if not cfg.train.activation_checkpointing:
        return full
    set_activation_checkpointing(model, True)
    try:
        kept = saved_activation_bytes(model, cfg, batch)
    finally:
        set_activation_checkpointing(model, False)
    blocks = sum(isinstance(m, Block) for m in model.modules())
    return kept + (full - kept) / blocks if blocks else full


def buffer_elements(model: torch.nn.Module) -> int:
    return sum(b.numel() for b in model.buffers())


def _meta_network(cfg: Config, name: str) -> torch.nn.Module:
    from onestep.stages import stage_class

    with torch.device("meta"):
        return stage_class(cfg.train.stage).plan_network(cfg, name)


def peak_activation_bytes(plans: list[NetworkPlan], cfg: Config) -> float:
    """Activations alive at once: the largest backward pass. The networks a stage names in
    `backward_together` (an adversarial generator step runs through the discriminator) add
    up; any other trained network has a backward pass of its own."""
    from onestep.stages import stage_class

    together = set(stage_class(cfg.train.stage).backward_together)
    return max(sum(p.activation_bytes for p in plans if p.name in together),
               *(p.activation_bytes for p in plans))


def device_bytes(plans: list[NetworkPlan], cfg: Config) -> float:
    """Per-rank device memory of the run: every network's states plus the peak activations."""
    return (sum(p.device_bytes - p.activation_bytes for p in plans)
            + peak_activation_bytes(plans, cfg))


def plan_run(cfg: Config, world_size: int | None = None) -> list[NetworkPlan]:
    """The per-rank plan of every network of `cfg.train.stage` on `world_size` ranks."""
    from onestep.model import count_parameters
    from onestep.stages import stage_class

    n = world_size or cfg.train.num_workers
    stage = stage_class(cfg.train.stage)
    plans = []
    for name in (*stage.trained, *stage.frozen_networks(cfg)):
        model = _meta_network(cfg, name)
        trained = name in stage.trained
        plan = state_plan(cfg, n, name, count_parameters(model), trained, name == stage.export,
                          buffer_elements(model))
        if trained:
            plan.activation_bytes = activation_bytes(model, cfg, cfg.train.global_batch // n)
        plans.append(plan)
    return plans


def _size(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / MIB:.1f} MiB"


def format_plan(plans: list[NetworkPlan], cfg: Config, world_size: int) -> str:
    """A markdown table, one row per network, sizes per rank."""
    t = cfg.train
    options = [o for o, on in (("activation checkpointing", t.activation_checkpointing),
                               ("optimizer offload", t.offload_optimizer),
                               ("parameter offload", t.offload_params)) if on]
    lines = [f"memory plan per rank: stage {t.stage}, {world_size} workers, ZeRO-{t.zero_stage}, "
             f"{'bf16' if compute_dtype(cfg) == torch.bfloat16 else 'fp32'}, micro-batch "
             f"{t.global_batch // world_size}" + "".join(f", {o}" for o in options), "",
             "| network | parameters | params | grads | optimizer | EMA | activations | device "
             "| host |", "|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        sizes = (p.params_bytes, p.grads_bytes, p.optimizer_bytes, p.ema_bytes,
                 p.activation_bytes, p.device_bytes, p.host_bytes)
        lines.append(f"| {p.name}{'' if p.trained else ' (frozen)'} | {p.parameters / 1e6:.1f}M | "
                     + " | ".join(_size(x) for x in sizes) + " |")
    lines.append(f"| run (peak) | {sum(p.parameters for p in plans) / 1e6:.1f}M | | | | | "
                 f"{_size(peak_activation_bytes(plans, cfg))} | "
                 f"{_size(device_bytes(plans, cfg))} | "
                 f"{_size(sum(p.host_bytes for p in plans))} |")
    return "\n".join(lines)
