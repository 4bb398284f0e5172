"""Per-rank parameter, gradient and optimizer-state memory under ZeRO 0/1/2/3 with 2 workers.

    python benchmarks/zero_memory.py --config small --out reports/zero_memory

Each stage runs one real training step of the model in 2 processes (gloo) through onestep's own
engine code (`onestep.train.engine.make_engine`). At the second optimizer step — when
parameters, gradients and optimizer states all coexist — every rank counts:
  params     the parameter elements it holds (ZeRO-3 partitions, else full tensors)
  optimizer  Adam moments in the optimizer it steps (partitions under ZeRO ≥ 1)
  gradients  gradient tensors alive on the rank (module grads + ZeRO partition grads)
  total      every live tensor storage in the process, deduplicated (params, grads, states,
             ZeRO's fp32 master partitions and flat buffers)
The model is the chosen preset's network (default `small`, 48M parameters) on a tiny input, so
the step is cheap on CPU while the memory is that of the real network. fp32 on CPU by default:
DeepSpeed's bf16 path did not complete a step on the CPU accelerator with gloo here.
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


def _worker(rank: int, world: int, port: int, stage: int, preset: str, precision: str,
            queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from onestep.train.engine import init_distributed, local_shard, make_engine

    cfg = load_config(preset, ["train.use_gpu=false", f"train.precision={precision}",
                               f"train.zero_stage={stage}", f"train.num_workers={world}",
                               f"train.global_batch={world}", "synth.resolution=32",
                               "codec.factor=2", "data.frames=4", "data.motion_frames=1"])
    torch.set_num_threads(1)
    init_distributed(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    n_params = count_parameters(model)
    engine = make_engine(model, cfg)
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
    for _ in range(2):
        loss, _ = flow_matching_loss(engine, x0, cond, cfg.flow, gen)
        engine.backward(loss)
        engine.step()
    params = sum(local_shard(p).numel() * local_shard(p).element_size()
                 for p in engine.module.parameters())
    optimizer = sum(t.numel() * t.element_size() for st in base.state.values()
                    for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    queue.put({"stage": stage, "rank": rank, "n_params": n_params, "params_mb": params / MB,
               "gradients_mb": captured["gradients"] / MB, "optimizer_mb": optimizer / MB,
               "total_mb": captured["total"] / MB})
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(stage: int, preset: str, precision: str, world: int = 2) -> list[dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, stage, preset, precision, queue))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small")
    p.add_argument("--stages", default="0,1,2,3")
    p.add_argument("--precisions", default="fp32",
                   help="comma list; bf16 hung in DeepSpeed's CPU/gloo path here, use it on GPU")
    p.add_argument("--out", default="reports/zero_memory")
    args = p.parse_args()
    rows = []
    for precision in args.precisions.split(","):
        for stage in (int(s) for s in args.stages.split(",")):
            t0 = time.perf_counter()
            new = measure(stage, args.config, precision)
            rows += [{**r, "precision": precision} for r in new]
            print(f"{precision} ZeRO-{stage}: rank 0 {new[0]} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    out = Path(args.out)
    meta, lines = header(f"ZeRO memory per rank ({rows[0]['n_params'] / 1e6:.1f}M-parameter DiT, "
                         "2 workers)", "zero_memory.py",
                         f"torch {torch.__version__}, gloo, 2 processes")
    base = {(r["precision"], r["rank"]): r["total_mb"] for r in rows if r["stage"] == 0}
    lines += ["| precision | stage | rank | params MiB | gradients MiB | Adam states MiB | "
             "all tensors MiB | vs ZeRO-0 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["total_mb"] / base.get((r["precision"], r["rank"]), float("nan"))
        lines.append(f"| {r['precision']} | {r['stage']} | {r['rank']} | {r['params_mb']:.1f} | "
                     f"{r['gradients_mb']:.1f} | {r['optimizer_mb']:.1f} | {r['total_mb']:.1f} | "
                     f"{ratio:.2f}× |")
    lines += ["", "What each stage shards across the 2 ranks: ZeRO-1 the optimizer states, "
              "ZeRO-2 also the gradients, ZeRO-3 also the parameters. 'All tensors' also counts "
              "ZeRO's fp32 master partitions (in bf16 the optimizer steps fp32 masters of bf16 "
              "weights; in fp32 DeepSpeed still keeps a separate master partition) and its flat "
              "communication buffers.", "", f"![per-rank memory]({out.name}.png)"]
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, out.with_suffix(".png"))
    save(out, meta, rows, lines)


if __name__ == "__main__":
    main()
