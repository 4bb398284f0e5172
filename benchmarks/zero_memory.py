"""Per-rank memory under ZeRO 0/1/2/3, measured, against the memory plan printed at launch.

    python benchmarks/zero_memory.py --config small --out reports/zero_memory

Each configuration runs two real training steps of the preset's network in N processes (gloo)
through onestep's own engine code (`onestep.train.engine.make_engine`) with the EMA the loop
keeps. At the second optimizer step, when parameters, gradients and optimizer states all coexist,
every rank counts:
  params       the parameter elements it holds (ZeRO-3 partitions, else full tensors)
  gradients    gradient tensors alive on the rank (module grads + ZeRO partition grads)
  optimizer    Adam moments in the optimizer it steps (partitions under ZeRO ≥ 1)
  total        every live tensor storage in the process, deduplicated (params, grads, states,
               ZeRO's fp32 master partitions and flat buffers, the EMA)
  activations  what autograd saved during the training forward (parameters excluded)
and `onestep.train.memory_plan` plans the same run without building it. Part 1: ZeRO 0–3 on 2
workers; part 2: ZeRO-3 on 1, 2 and 4 workers, plan against measurement. The network is the
chosen preset's (default `small`, 49M parameters) on a small input, so a step is cheap on CPU
while the state memory is the real network's. In fp32: under bf16, which is autocast, the states
are the same fp32 tensors (`--precisions fp32,bf16` measures both), and
reports/gpu-training.md holds the plan against a GPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from _report import header, save

from onestep.config import load_config
from onestep.flow import flow_matching_loss
from onestep.model import build_codec, build_model, count_parameters
from onestep.stages.batch import prepare_batch
from onestep.train.memory_plan import activation_bytes, buffer_elements, state_plan

MB = 2 ** 20


def _live_tensor_bytes() -> int:
    import warnings

    warnings.simplefilter("ignore")  # gc also holds half-built objects that warn on isinstance
    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor):
                storage = obj.untyped_storage()
                if storage.data_ptr() not in seen and storage.nbytes() > 0:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
        except (RuntimeError, ReferenceError):
            continue
    return total


def _grad_bytes(tensors) -> int:
    return sum(t.grad.numel() * t.grad.element_size() for t in tensors if t.grad is not None)


def bench_config(preset: str, precision: str, stage: int, world: int, kind: str = "dit"):
    """The preset's network (`kind`: onestep's DiT, or Wan2.1's architecture at the preset's
    width and depth) on a small input."""
    return load_config(preset, ["train.use_gpu=false", f"train.precision={precision}",
                                f"train.zero_stage={stage}", f"train.num_workers={world}",
                                f"train.global_batch={world}", "synth.resolution=32",
                                "codec.factor=2", "data.frames=4", "data.motion_frames=1",
                                f"model.kind={kind}"])


def _saved_bytes(seen: dict):
    """Saved-tensor hooks that add up the storages autograd keeps, parameters excluded."""
    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if not isinstance(base, torch.nn.Parameter):
            storage = tensor.untyped_storage()
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor
    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


def _worker(rank: int, world: int, port: int, stage: int, preset: str, precision: str,
            kind: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from onestep.train.ema import ShardedEMA
    from onestep.train.engine import init_distributed, local_shard, make_engine

    cfg = bench_config(preset, precision, stage, world, kind)
    torch.set_num_threads(1)
    init_distributed(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    n_params = count_parameters(model)
    engine = make_engine(model, cfg)
    ema = ShardedEMA(engine.module, cfg.train.ema_decay)
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    captured: dict = {}

    def at_step(opt, args, kwargs):
        if not opt.state:  # first step: Adam's moments are created inside it; measure the next
            return
        opt_params = [p for g in opt.param_groups for p in g["params"]]
        captured["gradients"] = _grad_bytes(opt_params) + _grad_bytes(
            [p for p in engine.module.parameters() if all(p is not q for q in opt_params)])
        captured["total"] = _live_tensor_bytes()

    base.register_step_pre_hook(at_step)
    codec = build_codec(cfg)
    f, s, r = cfg.data.frames, cfg.resolution, cfg.audio.feature_rate // cfg.synth.fps
    batch = {"video": torch.rand(1, 3, f, s, s) * 2 - 1, "ref": torch.rand(1, 3, s, s) * 2 - 1,
             "audio": torch.randn(1, f * r, cfg.audio.n_mels), "use_motion": torch.tensor([True])}
    x0, cond = prepare_batch(batch, codec, cfg)
    gen = torch.Generator().manual_seed(rank)
    saved: dict = {}
    for _ in range(2):
        saved.clear()
        with _saved_bytes(saved):
            loss, _ = flow_matching_loss(engine, x0, cond, cfg.flow, gen)
        engine.backward(loss)
        engine.step()
        ema.update(1)
    params = sum(local_shard(p).numel() * local_shard(p).element_size()
                 for p in engine.module.parameters())
    optimizer = sum(t.numel() * t.element_size() for st in base.state.values()
                    for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    queue.put({"stage": stage, "rank": rank, "n_params": n_params, "params_mb": params / MB,
               "gradients_mb": captured["gradients"] / MB, "optimizer_mb": optimizer / MB,
               "total_mb": captured["total"] / MB, "ema_mb": sum(
                   t.numel() * t.element_size() for t in ema.shadow) / MB,
               "activations_mb": sum(saved.values()) / MB})
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(stage: int, preset: str, precision: str, world: int = 2,
            kind: str = "dit") -> list[dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, stage, preset, precision, kind,
                                                    queue))
             for r in range(world)]
    for p in procs:
        p.start()
    rows = [queue.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"ZeRO-{stage} rank process exited with {p.exitcode}")
    return sorted(rows, key=lambda r: r["rank"])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precisions = sorted({r["precision"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(precisions), figsize=(5 * len(precisions), 3.6),
                             squeeze=False)
    for ax, prec in zip(axes[0], precisions):
        rank0 = {r["stage"]: r for r in rows if r["rank"] == 0 and r["precision"] == prec}
        labels = [f"ZeRO-{s}" for s in sorted(rank0)]
        bottom = [0.0] * len(rank0)
        for key, label in (("params_mb", "parameters"), ("gradients_mb", "gradients"),
                           ("optimizer_mb", "Adam states")):
            vals = [rank0[s][key] for s in sorted(rank0)]
            ax.bar(labels, vals, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.plot(labels, [rank0[s]["total_mb"] for s in sorted(rank0)], "k.-",
                label="all live tensors")
        ax.set_title(f"{prec}: rank 0 of 2")
        ax.set_ylabel("MiB")
        ax.legend(fontsize=7)
    fig.suptitle(f"Per-rank training memory, {rows[0]['n_params'] / 1e6:.0f}M-param DiT")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def planned(preset: str, precision: str, stage: int, world: int, kind: str) -> dict:
    """The memory plan's terms for the configuration `measure` runs, in MiB."""
    cfg = bench_config(preset, precision, stage, world, kind)
    with torch.device("meta"):
        model = build_model(cfg)
    plan = state_plan(cfg, world, "generator", count_parameters(model), True, True,
                      buffer_elements(model))
    plan.activation_bytes = activation_bytes(model, cfg, cfg.train.global_batch // world)
    return {"plan_params_mb": plan.params_bytes / MB, "plan_grads_mb": plan.grads_bytes / MB,
            "plan_optimizer_mb": plan.optimizer_bytes / MB, "plan_ema_mb": plan.ema_bytes / MB,
            "plan_activations_mb": plan.activation_bytes / MB,
            "plan_total_mb": plan.device_bytes / MB}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small")
    p.add_argument("--stages", default="0,1,2,3", help="ZeRO stages compared on 2 workers")
    p.add_argument("--workers", default="1,2,4", help="worker counts compared under ZeRO-3")
    p.add_argument("--precisions", default="fp32",
                   help="comma list; bf16 hung in DeepSpeed's CPU/gloo path here, use it on GPU")
    p.add_argument("--out", default="reports/zero_memory")
    args = p.parse_args()
    precisions = args.precisions.split(",")
    runs = [(prec, stage, 2, "dit") for prec in precisions
            for stage in map(int, args.stages.split(","))]
    runs += [(prec, 3, w, "dit") for prec in precisions
             for w in map(int, args.workers.split(",")) if (prec, 3, w, "dit") not in runs]
    runs += [(prec, 3, 2, "wan") for prec in precisions]
    rows = []
    for precision, stage, world, kind in runs:
        t0 = time.perf_counter()
        plan = planned(args.config, precision, stage, world, kind)
        new = measure(stage, args.config, precision, world, kind)
        for r in new:
            measured = r["total_mb"] + r["activations_mb"]
            rows.append({**r, **plan, "precision": precision, "world": world, "kind": kind,
                         "measured_mb": measured,
                         "plan_error": (plan["plan_total_mb"] - measured) / measured})
        print(f"{kind} {precision} ZeRO-{stage} × {world}: rank 0 {rows[-len(new)]} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    out = Path(args.out)
    meta, lines = header(f"ZeRO memory per rank ({rows[0]['n_params'] / 1e6:.1f}M-parameter DiT): "
                         "the plan against the measurement", "zero_memory.py",
                         f"torch {torch.__version__}, gloo, one process per worker")
    rank0 = [r for r in rows if r["rank"] == 0]
    base = {r["precision"]: r["total_mb"] for r in rank0
            if r["stage"] == 0 and r["world"] == 2 and r["kind"] == "dit"}
    lines += ["## What each ZeRO stage shards (2 workers, rank 0)", "",
              "| precision | stage | params MiB | gradients MiB | Adam states MiB | EMA MiB | "
              "all tensors MiB | vs ZeRO-0 |", "|---|---|---|---|---|---|---|---|"]
    for r in rank0:
        if r["world"] == 2 and r["kind"] == "dit":
            lines.append(f"| {r['precision']} | {r['stage']} | {r['params_mb']:.1f} | "
                         f"{r['gradients_mb']:.1f} | {r['optimizer_mb']:.1f} | {r['ema_mb']:.1f} |"
                         f" {r['total_mb']:.1f} | "
                         f"{r['total_mb'] / base.get(r['precision'], float('nan')):.2f}× |")
    lines += ["", "ZeRO-1 shards the optimizer states, ZeRO-2 also the gradients, ZeRO-3 also the "
              "parameters. 'All tensors' also counts ZeRO's fp32 master partitions (in fp32 "
              "DeepSpeed still keeps a separate master partition) and its flat buffers.", "",
              "## The plan against the measurement (rank 0)", "",
              "| network | precision | stage | workers | params plan / measured | "
              "EMA plan / measured | activations plan / measured | total plan MiB | "
              "total measured MiB | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rank0:
        name = f"Wan2.1 ({r['n_params'] / 1e6:.0f}M)" if r["kind"] == "wan" else "DiT"
        lines.append(f"| {name} | {r['precision']} | {r['stage']} | {r['world']} | "
                     f"{r['plan_params_mb']:.1f} / {r['params_mb']:.1f} | "
                     f"{r['plan_ema_mb']:.1f} / {r['ema_mb']:.1f} | "
                     f"{r['plan_activations_mb']:.2f} / {r['activations_mb']:.2f} | "
                     f"{r['plan_total_mb']:.1f} | {r['measured_mb']:.1f} | "
                     f"{100 * r['plan_error']:+.1f}% |")
    worst = max(abs(r["plan_error"]) for r in rows)
    lines += ["", f"Largest error over every rank: {100 * worst:.1f}% (goal: within 15%). "
              "Measured total: every live tensor at the second optimizer step plus what autograd "
              "saved in the forward before it; the plan's total: parameters + gradients + "
              "optimizer (Adam moments and fp32 master) + EMA + activations "
              "(`onestep.train.memory_plan`, computed on the meta device). The plan's params "
              "include buffers, held whole on every rank (Wan's stored prompt embedding: 8 MiB "
              "here), which the measured params column does not count.", "",
              f"![per-rank memory]({out.name}.png)"]
    out.parent.mkdir(parents=True, exist_ok=True)
    plot([r for r in rows if r["world"] == 2 and r["kind"] == "dit"], out.with_suffix(".png"))
    save(out, meta, rows, lines)


if __name__ == "__main__":
    main()
