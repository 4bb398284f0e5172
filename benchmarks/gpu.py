"""The GPU checks: every stage's training step, attention kernels, bf16 ZeRO-3 training of a
Wan-sized network, one step vs forty.

    python benchmarks/gpu.py --out reports/gpu                        # on a GPU machine
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu-cpu  # the plumbing, on CPU

Four parts, one process (DeepSpeed on one rank, NCCL on a GPU):
  stages      every registered stage (teacher, dmd, adversarial, fada, osa_lcm, sync) through
              the training loop itself, from the tiny models in reports/pretrained, on SynthTalk
              batches handed over on the CPU as Ray Data does: the recipes' own code on the
              device, in the precision a GPU run uses (bf16).
  attention   torch SDPA on Wan2.1-1.3B's shapes at 480p × 81 frames (18,900 tokens, 12 heads of
              128) in bf16: which kernels run (flash, cuDNN, memory-efficient, math), their
              TFLOP/s and their largest difference from the math kernel.
  training    Wan2.1-1.3B's architecture (30 blocks, width 1536) at the same token count in
              onestep's own engine (DeepSpeed ZeRO-3, bf16 autocast over fp32 weights, AdamW, the
              EMA), with and without activation checkpointing: step time, clips/s and the peak
              memory the GPU allocator saw, against the memory plan printed at launch. Latents come
              from the pixel codec at factor 8 (192 channels): only the patch embedding and the
              head are wider than with Wan's VAE, and training on latent shards never runs the
              VAE.
  generation  a freshly initialised network of that architecture generating 3.2 s of video
              chunk by chunk at 480p with Wan2.1's VAE at its real size (random weights from
              jobs/make_tiny_wan.py --vae full), 1 step vs 40 steps with audio and reference
              CFG (120 NFE per chunk), in bf16 autocast (the student in fp32 too): end-to-end and
              decode time.

The GPU image has torch but not all of onestep's dependencies. reports/gpu-reading.md says how
reports/gpu.md was made: deepspeed, diffusers, pydantic and the like carried from a venv, PyAV
left behind (the stages' batches, which come from MP4, made beforehand with `--batches DIR` on a
machine that has it, and read from DIR there). `--quick` shrinks every part to a few blocks and
tokens.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from _report import header, save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))

from onestep.config import load_config  # noqa: E402

GIB = 2 ** 30
# Wan2.1-1.3B (dim 1536 = 12 heads × 128, 30 blocks, FFN 8960) at 480×480, 81 frames.
WAN_13B = ["model.kind=wan", "model.dim=1536", "model.heads=12", "model.depth=30",
           "model.ffn_dim=8960", "model.text_dim=4096", "model.prompt_tokens=512",
           "synth.resolution=480", "model.patch=[1, 2, 2]"]
QUICK = ["model.kind=wan", "model.dim=256", "model.heads=2", "model.depth=2", "model.ffn_dim=512",
         "model.text_dim=64", "model.prompt_tokens=16", "synth.resolution=64",
         "model.patch=[1, 2, 2]"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def attention(device: str, quick: bool) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    tokens, heads, dim = (512, 2, 128) if quick else (21 * 30 * 30, 12, 128)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, dim, device=device, dtype=dtype, generator=g)
               for _ in range(3))
    reference = sdpa(q.float(), k.float(), v.float())
    flops = 4 * heads * tokens ** 2 * dim
    rows = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        row = {"kernel": backend.name, "tokens": tokens, "dtype": str(dtype)}
        try:
            with sdpa_kernel([backend]):
                out = sdpa(q, k, v)
                seconds = _timed(lambda: sdpa(q, k, v), device, 5)
            row.update(ok=True, ms=1e3 * seconds, tflops=flops / seconds / 1e12,
                       max_abs_diff=(out.float() - reference).abs().max().item())
        except RuntimeError as e:  # a kernel that does not take these shapes/dtype says why
            row.update(ok=False, error=str(e).splitlines()[0][:160])
        rows.append(row)
        print(f"attention {row}", flush=True)
    return rows


def _train_config(device: str, quick: bool, checkpointing: bool):
    gpu = device == "cuda"
    return load_config("small", (QUICK if quick else WAN_13B) + [
        f"train.use_gpu={str(gpu).lower()}", f"train.precision={'bf16' if gpu else 'fp32'}",
        "train.num_workers=1", "train.global_batch=1", "train.zero_stage=3",
        f"train.activation_checkpointing={str(checkpointing).lower()}",
        "codec.kind=space_to_depth", "codec.factor=8", f"data.frames={5 if quick else 21}",
        "data.motion_frames=1", "audio.encoder=logmel"])


def _train_steps(cfg, device: str, steps: int) -> tuple[float, int]:
    """(median seconds of a training step: flow matching, ZeRO-3 backward and step, the EMA;
    bytes allocated between steps: the states, Adam's included, with no activation alive). The
    engine is gone when this returns."""
    from onestep.flow import flow_matching_loss
    from onestep.model import build_codec, build_model
    from onestep.model.dit import set_activation_checkpointing
    from onestep.stages.batch import prepare_batch
    from onestep.train.ema import ShardedEMA
    from onestep.train.engine import make_engine, update

    torch.manual_seed(0)
    model = build_model(cfg)
    set_activation_checkpointing(model, cfg.train.activation_checkpointing)
    engine = make_engine(model, cfg)
    ema = ShardedEMA(engine.module, cfg.train.ema_decay)
    codec = build_codec(cfg).to(engine.device)
    f, s, r = cfg.data.frames, cfg.resolution, cfg.audio.feature_rate // cfg.synth.fps
    batch = {"video": torch.rand(1, 3, f, s, s) * 2 - 1, "ref": torch.rand(1, 3, s, s) * 2 - 1,
             "audio": torch.randn(1, f * r, cfg.audio.n_mels), "use_motion": torch.tensor([True])}
    x0, cond = prepare_batch({k: v.to(engine.device) for k, v in batch.items()}, codec, cfg)
    rng = torch.Generator().manual_seed(0)  # training draws on the CPU (onestep.draws)

    def step():
        loss, _ = flow_matching_loss(engine, x0, cond, cfg.flow, rng)
        update(engine, loss)
        ema.update(1)

    seconds = _timed(step, device, steps)
    return seconds, torch.cuda.memory_allocated() if device == "cuda" else 0


def training(device: str, quick: bool, steps: int) -> list[dict]:
    from onestep.train.engine import init_distributed
    from onestep.train.memory_plan import device_bytes, peak_activation_bytes, plan_run

    rows = []
    for checkpointing in (True, False):  # the one that fits first: an OOM can leave memory held
        cfg = _train_config(device, quick, checkpointing)
        init_distributed(cfg)
        plans = plan_run(cfg, 1)
        row = {"activation_checkpointing": checkpointing,
               "plan_peak_gib": device_bytes(plans, cfg) / GIB,
               "plan_activations_gib": peak_activation_bytes(plans, cfg) / GIB,
               "tokens": cfg.data.frames * (cfg.resolution // 16) ** 2}
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            seconds, states = _train_steps(cfg, device, steps)
            row.update(ok=True, step_s=seconds, clips_per_s=1 / seconds)
            if device == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
                row["states_gib"] = states / GIB
                row["plan_states_gib"] = row["plan_peak_gib"] - row["plan_activations_gib"]
                row["plan_error"] = (row["plan_peak_gib"] - row["peak_gib"]) / row["peak_gib"]
        except torch.OutOfMemoryError as e:
            row.update(ok=False, error=f"out of memory ({str(e).splitlines()[0][:120]})")
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(f"training {row}", flush=True)
    return rows


# What the lip-sync expert's stage trains on (jobs/train_sync.py sets the same).
SYNC = ["audio.encoder=mfcc", "audio.feature_rate=100", "data.frames=21", "data.motion_frames=0"]


def _stage_batch(cfg) -> dict:
    """One micro-batch of SynthTalk training windows, as Ray Data hands it to a worker (CPU
    tensors; the loop moves them to the device)."""
    from onestep.audio_features import build_audio_encoder
    from onestep.data import clip_windows
    from onestep.shards import clip_row
    from onestep.synth import make_clip

    encoder, rows = build_audio_encoder(cfg.audio), []
    for i in range(cfg.train.global_batch):
        rows += clip_windows(clip_row(make_clip(i, cfg.synth), cfg.synth.fps,
                                      cfg.synth.sample_rate), cfg, encoder,
                             np.random.default_rng(i))
    return {k: torch.from_numpy(np.stack([w[k] for w in rows[:cfg.train.global_batch]]))
            for k in rows[0]}


def _cached_batch(cfg, folder: Path | None) -> dict:
    """`_stage_batch`, kept in `folder` as safetensors: making one encodes and decodes MP4, and
    a machine without PyAV (the GPU image) reads what a machine with it wrote."""
    if folder is None:
        return _stage_batch(cfg)
    from safetensors.torch import load_file, save_file

    path = folder / f"{cfg.train.stage}.safetensors"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in _stage_batch(cfg).items()}, str(path))
    return load_file(str(path))


def stages(device: str, steps: int, precision: str, batches: Path | None) -> list[dict]:
    """Every registered stage through the training loop itself (`run_stage`: the stage's own
    train_step, its updates, the EMAs and target networks, a final checkpoint), ZeRO-3 on one
    rank, on SynthTalk batches, from the tiny models in reports/pretrained: what a GPU job of
    each recipe runs, Ray aside. Each stage trains `steps` steps; the first is excluded from
    the step time (allocation, kernel selection)."""
    from onestep import cli
    from onestep.stages import STAGES, build_stage, stage_class
    from onestep.train.engine import precision as precision_of
    from onestep.train.loop import Hooks, run_stage

    pretrained = ROOT / "reports" / "pretrained"
    sources = ([f"{k}={pretrained / 'teacher'}" for k in cli.source_keys("teacher")]
               + [f"{k}={pretrained / 'student'}" for k in cli.source_keys("student")])
    gpu = device == "cuda"
    rows = []
    for name in STAGES:
        clips = 4 * steps
        cfg = load_config("tiny", sources + [
            f"train.stage={name}", f"train.use_gpu={str(gpu).lower()}", "train.num_workers=1",
            "train.global_batch=4", f"train.total_clips={clips}", "train.warmup_clips=4",
            f"train.checkpoint_every_clips={clips}", "train.log_every_steps=1",
            "validation.every_clips=0", "adversarial.phases=[1]",
            f"adversarial.clips_per_phase={clips}", "adversarial.disc_warmup_steps=0",
            f"train.precision={precision}", "sync.weights=", *(SYNC if name == "sync" else [])])
        stage_class(name).resolve_sources(cfg)
        batch = _cached_batch(cfg, batches)
        times = []  # each step's time: the loop reports after every step

        def timed(metrics, checkpoint, times=times):
            if "step_time_s" in metrics:
                times.append(metrics["step_time_s"])

        if gpu:
            torch.cuda.reset_peak_memory_stats()
        row = {"stage": name, "precision": precision_of(cfg), "steps": steps}
        try:
            metrics = run_stage(cfg, build_stage(cfg), iter(lambda: batch, None),
                                Hooks(report=timed))
            losses = {k: float(v) for k, v in metrics.items() if "loss" in k}
            row.update(ok=bool(np.isfinite(list(losses.values())).all()), losses=losses,
                       step_s=statistics.median(times[1:] or times))
            if gpu:
                row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        except Exception as e:  # one stage's failure is a row, not the end of the check
            row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            traceback.print_exc()
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
        rows.append(row)
        print(f"stage {row}", flush=True)
    return rows


def generation(device: str, quick: bool, seconds: float) -> list[dict]:
    import make_tiny_wan
    from make_sample import held_out_clip

    from onestep.generate import AvatarGenerator, Sampling
    from onestep.model import build_model

    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_wan.main(["--out", f"{tmp}/wan", "--vae", "tiny" if quick else "full"])
        cfg = load_config("small", (QUICK if quick else WAN_13B) + [
            "codec.kind=wan_vae", f"codec.pretrained={tmp}/wan", "codec.factor=8",
            f"data.frames={9 if quick else 81}", "data.motion_frames=5", "audio.encoder=logmel",
            "model.image_encoder="])
        torch.manual_seed(0)
        gen = AvatarGenerator(build_model(cfg).eval(), cfg, device)
        clip = held_out_clip(load_config("tiny").synth)
        image = np.asarray(Image.fromarray(clip.clean_frames[0]).resize((cfg.resolution,
                                                                           cfg.resolution)))
        audio = np.resize(clip.audio, int(seconds * cfg.synth.sample_rate))
        rows = []
        teacher = "teacher, 40 steps + CFG"
        # On a GPU in bf16 autocast, the student in fp32 too (the teacher's 120 NFE per chunk
        # would take minutes in fp32); on CPU in fp32.
        runs = ([("1-step", 1, 1.0, False), ("1-step", 1, 1.0, True), (teacher, 40, 2.0, True)]
                if device == "cuda" else [("1-step", 1, 1.0, False), (teacher, 40, 2.0, False)])
        for name, steps, scale, autocast in runs:
            sampling = Sampling(steps, scale, scale, 1.0, 0)
            with torch.autocast(device, torch.bfloat16, enabled=autocast):
                # Warm-up (kernel selection, allocator): one step is enough, and 40 would cost
                # as much as the timed run.
                gen.generate(image, audio[:cfg.synth.sample_rate],
                             Sampling(1, scale, scale, 1.0, 0))
                _sync(device)
                t0 = time.perf_counter()
                _, stats = gen.generate(image, audio, sampling)
                _sync(device)
                wall = time.perf_counter() - t0
            video_s = stats.frames / cfg.synth.fps
            rows.append({"model": name, "bf16_autocast": autocast,
                         "nfe_per_chunk": stats.nfe_per_chunk, "video_s": video_s,
                         "s_per_video_s": wall / video_s,
                         "decode_s_per_video_s": stats.decode_seconds / video_s,
                         "decode_share": stats.decode_seconds / wall})
            print(f"generation {rows[-1]}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny shapes: check the plumbing")
    p.add_argument("--parts", default="stages,attention,training,generation")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--seconds", type=float, default=3.2,
                   help="seconds of video generated (3.2: one 81-frame chunk)")
    p.add_argument("--stage-steps", type=int, default=6, help="training steps per stage")
    p.add_argument("--precision", default="auto",
                   help="the stages' train.precision (auto: bf16 on a GPU, fp32 on CPU)")
    p.add_argument("--batches", type=Path, default=None, metavar="DIR",
                   help="keep the stages' batches here (made where PyAV is, read where not)")
    p.add_argument("--out", default="reports/gpu")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or --device cpu --quick")
    os.environ.setdefault("MASTER_PORT", "29631")
    parts = args.parts.split(",")
    runs = {"stages": lambda: stages(args.device, args.stage_steps, args.precision,
                                     args.batches),
            "attention": lambda: attention(args.device, args.quick),
            "training": lambda: training(args.device, args.quick, args.steps),
            "generation": lambda: generation(args.device, args.quick, args.seconds)}
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    meta, head = header("GPU checks: every stage's step, attention kernels, bf16 ZeRO-3 "
                        "training, 1 vs 40 steps", "gpu.py", f"{name}, torch {torch.__version__}")
    results = {part: [] for part in runs}
    for part in (p for p in runs if p in parts):  # the report so far, after every part
        results[part] = runs[part]()
        save(Path(args.out), meta, results, head + _tables(results))


def _tables(results: dict) -> list[str]:
    lines = ["## Every stage through the training loop (tiny models, ZeRO-3 on one rank)", "",
              "| stage | precision | steps | runs | step s | peak GiB | final losses |",
              "|---|---|---|---|---|---|---|"]
    for r in results["stages"]:
        lines.append(f"| {r['stage']} | {r['precision']} | {r['steps']} | " + (
            f"yes | {r['step_s']:.3f} | {r.get('peak_gib', float('nan')):.2f} | "
            + ", ".join(f"{k} {v:.4g}" for k, v in r["losses"].items()) + " |"
            if r["ok"] else f"no: {r.get('error', 'a loss is not finite')} | | | |"))
    lines += ["", "## Attention (SDPA) on Wan2.1-1.3B's shapes", "",
              "| kernel | tokens | dtype | runs | ms | TFLOP/s | max diff vs fp32 math |",
              "|---|---|---|---|---|---|---|"]
    for r in results["attention"]:
        lines.append(f"| {r['kernel']} | {r['tokens']} | {r['dtype']} | "
                     + (f"yes | {r['ms']:.2f} | {r['tflops']:.1f} | {r['max_abs_diff']:.2e} |"
                        if r["ok"] else f"no: {r['error']} | | | |"))
    lines += ["", "## Training: Wan2.1-1.3B's architecture, ZeRO-3 on one rank, micro-batch 1",
              "", "States: what stays allocated between steps (weights, gradients, Adam, EMA); "
              "the rest of the peak is the step's activations and transient buffers.", "",
              "| activation checkpointing | tokens | step s | clips/s | peak GiB | plan GiB | "
              "plan error | states GiB (plan) | peak − states GiB (plan activations) |",
              "|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for r in results["training"]:
        lines.append(f"| {r['activation_checkpointing']} | {r['tokens']} | " + (
            f"{r['step_s']:.3f} | {r['clips_per_s']:.2f} | {r.get('peak_gib', nan):.1f}"
            f" | {r['plan_peak_gib']:.1f} | {100 * r.get('plan_error', nan):+.1f}% | "
            f"{r.get('states_gib', nan):.1f} ({r.get('plan_states_gib', nan):.1f}) | "
            f"{r.get('peak_gib', nan) - r.get('states_gib', nan):.1f} "
            f"({r['plan_activations_gib']:.1f}) |"
            if r["ok"] else f"{r['error']} | | | {r['plan_peak_gib']:.1f} | | | |"))
    lines += ["", "## Generation: 1 step vs 40 steps with CFG, Wan2.1's VAE at full size", "",
              "| model | bf16 autocast | NFE / chunk | s per video s | decode s per video s | "
              "decode share |", "|---|---|---|---|---|---|"]
    for r in results["generation"]:
        lines.append(f"| {r['model']} | {r['bf16_autocast']} | {r['nfe_per_chunk']} | "
                     f"{r['s_per_video_s']:.3f} | {r['decode_s_per_video_s']:.3f} | "
                     f"{100 * r['decode_share']:.0f}% |")
    return lines


if __name__ == "__main__":
    main()
