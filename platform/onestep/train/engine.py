"""DeepSpeed in one place: engine config, ZeRO stage, precision, backend and gathering.

Model code never imports DeepSpeed; stages ask this module for engines. On CPU DeepSpeed runs with
its CPU accelerator and the gloo backend, in fp32; on GPU with NCCL and bf16 compute. Frozen
networks (the teacher in DMD) are sharded for inference with ZeRO-3 too, so per-rank memory falls
with workers.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

from onestep.config import Config


def configure_accelerator(use_gpu: bool) -> None:
    """Must run before `import deepspeed`: picks DeepSpeed's accelerator from the config."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")


def precision(cfg: Config) -> str:
    if cfg.train.precision == "auto":
        return "bf16" if cfg.train.use_gpu else "fp32"
    return cfg.train.precision


def init_distributed(cfg: Config) -> None:
    """Join (or, in a plain single process, create) the process group DeepSpeed will use."""
    configure_accelerator(cfg.train.use_gpu)
    import deepspeed

    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
    deepspeed.init_distributed(dist_backend="nccl" if cfg.train.use_gpu else "gloo")


def world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def from_rank0(obj):
    """Collective: rank 0's `obj` (any picklable value) on every rank. Decisions only rank 0 can
    make (it alone validates) must reach every rank, or their collectives would diverge."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def ds_config(cfg: Config, micro_batch: int, trainable: bool = True) -> dict:
    """DeepSpeed config. Bucket sizes follow the model width (dim²), as HF's "auto" does:
    DeepSpeed's defaults (5e8 elements) allocate gigabytes of flat buffers even for a tiny model.
    Persistence threshold 0: every parameter is partitioned under ZeRO-3, none kept whole."""
    prec = precision(cfg)
    bucket = max(cfg.model.dim ** 2, 2 ** 20)  # ≥ 1M elements: few, not tiny, collectives
    conf = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.train.zero_stage,
                              "reduce_bucket_size": bucket,
                              "allgather_bucket_size": bucket,
                              "stage3_prefetch_bucket_size": int(0.9 * bucket),
                              "stage3_param_persistence_threshold": 0},
        # bf16 is autocast (DeepSpeed's `torch_autocast`): weights, gradients and optimizer
        # states stay fp32, matrix products and convolutions run in bf16, and ZeRO-3 gathers
        # their weights in bf16. DeepSpeed's `bf16` mode would store bf16 weights but hand the
        # networks fp32 inputs, which every network would then have to cast itself.
        "torch_autocast": {"enabled": prec == "bf16", "dtype": "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    pin = cfg.train.use_gpu  # page-locked host memory: faster copies to and from a GPU
    if cfg.train.offload_optimizer and trainable:
        conf["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
        # torch's AdamW steps the offloaded states (DeepSpeedCPUAdam needs compiled ops).
        conf["zero_force_ds_cpu_optimizer"] = False
    if cfg.train.offload_params:
        conf["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": pin}
    if trainable:
        conf["gradient_clipping"] = cfg.train.grad_clip
    return conf


def lr_lambda(cfg: Config, update_every: int = 1, total_clips: int | None = None):
    """Linear warm-up then cosine decay to min_lr_ratio, in optimiser steps derived from clips.

    `update_every`: training steps per optimiser step of this network (a DMD generator steps
    once per `dmd.critic_steps`), so its schedule spans the run like the others'.
    """
    warm = max(1, cfg.train.warmup_clips // (cfg.train.global_batch * update_every))
    total_clips = total_clips or cfg.train.total_clips
    total = max(warm + 1, math.ceil(total_clips / (cfg.train.global_batch * update_every)))

    def fn(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / (total - warm))
        return cfg.train.min_lr_ratio + (1 - cfg.train.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress))

    return fn


def deepspeed_pickled_types() -> list[type]:
    """The non-tensor types DeepSpeed's checkpoint files hold: what `weights_only` loading must
    allow, and nothing more."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [ZeroStageEnum, LossScaler]


def _safe_checkpoint_engine(ds_config_params):
    """DeepSpeed's torch checkpoint engine, but loading with `weights_only=True`.

    DeepSpeed unpickles its shards with weights_only=False; resuming from storage other people can
    write to would then run their code.
    """
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(deepspeed_pickled_types()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeTorchCheckpointEngine(ds_config_params)


def param_groups(model: torch.nn.Module, lr: float, lr_scales: dict[str, float]) -> list[dict]:
    """The trained parameters as optimiser groups: those whose name contains a key of
    `lr_scales` at `lr` × its value (the first key that matches), the rest at `lr`, first (the
    rate the loop logs is the first group's)."""
    groups: dict[float, list] = {1.0: []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in lr_scales.items() if k in name), 1.0)
            groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": lr * scale, "lr_scale": scale}
            for scale, ps in groups.items() if ps]


def make_engine(model: torch.nn.Module, cfg: Config, lr: float | None = None,
                trainable: bool = True, update_every: int = 1, total_clips: int | None = None,
                lr_scales: dict[str, float] | None = None):
    """Wrap a network in a DeepSpeed engine: AdamW + schedule when trainable (`lr_scales`: see
    `param_groups`); otherwise an inference engine whose weights ZeRO-3 still shards (a frozen
    teacher costs 1/N per rank)."""
    import deepspeed

    _, world_size = world()
    micro = cfg.train.global_batch // world_size
    if not trainable:
        model.requires_grad_(False)
        if precision(cfg) == "bf16":  # never stepped: its weights need no fp32 to accumulate in
            for p in model.parameters():  # buffers (Wan's stored prompt) keep fp32
                p.data = p.data.to(torch.bfloat16)
        engine, *_ = deepspeed.initialize(model=model, config=ds_config(cfg, micro, False))
        engine.eval()
        return engine
    opt = torch.optim.AdamW(param_groups(model, lr or cfg.train.lr, lr_scales or {}),
                            betas=(0.9, 0.99), weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, update_every, total_clips))
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                      config=ds_config(cfg, micro))
    engine.checkpoint_engine = _safe_checkpoint_engine(engine._config)
    return engine


def reset_peak_lr(engine, lr: float) -> None:
    """Make the config's peak rate win over a restored checkpoint's.

    DeepSpeed restores the scheduler's `base_lrs` (and the optimiser's rates) from the checkpoint,
    so `--resume --set train.lr=...` would silently train on at the old rate. The position in the
    schedule (`last_epoch`) is kept; only the rate it scales is replaced.
    """
    sched = engine.lr_scheduler
    groups = sched.optimizer.param_groups
    sched.base_lrs = [lr * group.get("lr_scale", 1.0) for group in groups]
    sched._last_lr = [base * fn(sched.last_epoch)
                      for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, base, current in zip(groups, sched.base_lrs, sched._last_lr):
        group["initial_lr"], group["lr"] = base, current


def local_shard(p: torch.nn.Parameter) -> torch.Tensor:
    """The part of a parameter this rank owns: the ZeRO-3 partition, or the whole tensor."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


def update(engine, loss: torch.Tensor) -> float:
    """One optimiser update of a trained network from `loss`; its gradient norm (before
    clipping). Stages update networks only through this, so what DeepSpeed's engine needs
    (backward through the engine, its step, where the norm lives) stays in this module."""
    engine.backward(loss)
    engine.step()
    return float(engine.get_global_grad_norm() or 0.0)


@contextlib.contextmanager
def no_param_grads(network):
    """No parameter gradients for `network` (an engine or a module) inside the block, while
    gradients still flow *through* it.

    A generator's adversarial loss backpropagates through the discriminator; its parameters must
    not collect gradients then, or ZeRO-3 would reduce them into the discriminator's next update.
    """
    module = getattr(network, "module", network)
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def gathered(params, modifier_rank: int | None = None):
    """Full parameters inside the block on every rank (a no-op without ZeRO-3)."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Consolidated fp32 weights on rank 0; other ranks get {} (collective under ZeRO-3: all
    ranks must call). Gathered one module at a time, so a rank holds one module's full
    parameters at once, never the whole network's, and only rank 0 copies them."""
    rank, _ = world()
    out: dict[str, torch.Tensor] = {}
    for prefix, m in module.named_modules():
        params = list(m.named_parameters(prefix=prefix, recurse=False))
        if not params:
            continue
        with gathered([p for _, p in params]):
            if rank == 0:
                out.update((k, p.detach().float().cpu().clone()) for k, p in params)
    if rank == 0:  # buffers are whole on every rank; state_dict names the persistent ones
        out.update((k, v.detach().float().cpu().clone()) for k, v in module.state_dict().items()
                   if k not in out)
    return out


def memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
