"""The memory plan printed before launch, and the options it plans for: activation checkpointing
(the same gradients, far fewer activations kept) and ZeRO-3 offload (a real DeepSpeed step with
optimizer states and parameters in host memory). How close the plan is to what DeepSpeed
allocates is measured by benchmarks/zero_memory.py (reports/zero_memory.md)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_overrides
from onestep.flow import flow_matching_loss
from onestep.model import build_model
from onestep.model.dit import Conditions, set_activation_checkpointing
from onestep.train.memory_plan import device_bytes, plan_run


def test_the_job_prints_the_plan_of_every_stage_and_plan_only_stops_there(capsys):
    import distill

    for stage in ("teacher", "dmd", "adversarial"):
        distill.main(["--plan", "--stage", stage])
        out = capsys.readouterr().out
        assert f"memory plan per rank: stage {stage}, 2 workers, ZeRO-3, fp32" in out
        assert "| run (peak) |" in out and "done:" not in out
    assert "adversarial.student, adversarial.teacher not given: planning the config's own" in out
    assert "| discriminator |" in out and "| reference (frozen) |" in out


def test_the_plan_shrinks_with_workers_and_moves_what_is_offloaded(tiny_config):
    base = tiny_config()
    one, four = plan_run(base, 1), plan_run(base, 4)
    assert device_bytes(four, base) < device_bytes(one, base)
    assert four[0].params_bytes == pytest.approx(one[0].params_bytes / 4)
    offload = tiny_config(**{"train.offload_optimizer": True, "train.offload_params": True})
    moved = plan_run(offload, 4)[0]
    assert moved.optimizer_bytes == 0 and moved.params_bytes == 0
    assert moved.host_bytes == pytest.approx(four[0].optimizer_bytes + four[0].params_bytes
                                             + four[0].grads_bytes - moved.grads_bytes)
    checkpointed = plan_run(tiny_config(**{"train.activation_checkpointing": True}), 4)[0]
    assert checkpointed.activation_bytes < 0.6 * four[0].activation_bytes  # 2 blocks here
    # An adversarial generator step backpropagates through the discriminator: both count.
    adv = tiny_config(**{"train.stage": "adversarial"})
    plans = plan_run(adv, 2)
    peak = device_bytes(plans, adv) - sum(p.device_bytes - p.activation_bytes for p in plans)
    assert peak == pytest.approx(plans[0].activation_bytes + plans[1].activation_bytes)


def test_under_bf16_trained_networks_keep_fp32_states_and_frozen_ones_halve(tiny_config):
    """bf16 is autocast compute: the states of a trained network are fp32's; only what is never
    stepped (a frozen teacher) is stored in bf16. Activations are saved in bf16."""
    fp32 = {p.name: p for p in plan_run(tiny_config(**{"train.stage": "dmd"}), 2)}
    bf16 = {p.name: p for p in plan_run(tiny_config(**{"train.stage": "dmd",
                                                          "train.precision": "bf16"}), 2)}
    for name in ("generator", "fake_score"):
        for term in ("params_bytes", "grads_bytes", "optimizer_bytes", "ema_bytes"):
            assert getattr(bf16[name], term) == getattr(fp32[name], term)
        assert bf16[name].activation_bytes < fp32[name].activation_bytes
    assert bf16["teacher"].params_bytes == pytest.approx(fp32["teacher"].params_bytes / 2)


@pytest.mark.parametrize("kind", ["dit", "wan"])
def test_activation_checkpointing_gives_the_same_gradients(tiny_config, kind):
    cfg = tiny_config(**{"model.kind": kind, "model.prompt_tokens": 4, "model.text_dim": 16})
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    c, f, s = model.c, cfg.data.frames, cfg.resolution // cfg.codec.factor
    x0 = torch.randn(2, c, f, s, s, generator=g)
    cond = Conditions(ref=torch.randn(2, c, s, s, generator=g),
                      audio=torch.randn(2, f * 2, cfg.audio.n_mels, generator=g),
                      motion=torch.zeros(2, c, f, s, s), motion_mask=torch.zeros(2, 1, f, s, s))
    grads = []
    for on in (False, True):
        set_activation_checkpointing(model, on)
        model.zero_grad()
        loss, _ = flow_matching_loss(model, x0, cond, cfg.flow, torch.Generator().manual_seed(2))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


OFFLOAD = r"""
import json, sys
import torch
from onestep.config import load_config
from onestep.stages import build_stage
from onestep.train.loop import Hooks, run_stage

cfg = load_config("tiny", json.loads(sys.argv[1]))
g = torch.Generator().manual_seed(0)
f, s, b = cfg.data.frames, cfg.resolution, cfg.train.global_batch
batch = {"video": torch.rand(b, 3, f, s, s, generator=g) * 2 - 1,
         "ref": torch.rand(b, 3, s, s, generator=g) * 2 - 1,
         "audio": torch.randn(b, f * 2, cfg.audio.n_mels, generator=g),
         "use_motion": torch.ones(b, dtype=torch.bool)}

def batches():
    while True:
        yield batch

metrics = run_stage(cfg, build_stage(cfg), batches(), Hooks())
print(json.dumps({"step": metrics["step"], "loss": metrics["loss"]}))
"""


def test_zero3_offload_and_checkpointing_train_through_the_loop():
    """One plain process (DeepSpeed on one gloo rank, as in test_preemption)."""
    overrides = tiny_overrides(**{"train.num_workers": 1, "train.offload_optimizer": True,
                                  "train.offload_params": True,
                                  "train.activation_checkpointing": True,
                                  "validation.every_clips": 0})
    result = _in_one_process(OFFLOAD, overrides, port=29619)
    assert result["step"] == 2 and result["loss"] > 0


def _in_one_process(script: str, overrides: list[str], port: int) -> dict:
    """The JSON `script` prints last, run in a process of its own (its process group must not
    outlive it)."""
    run = subprocess.run([sys.executable, "-c", script, json.dumps(overrides)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(port)})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


BF16 = r"""
import json, sys
import numpy as np, torch
from onestep.config import SynthConfig, load_config
from onestep.audio_features import build_audio_encoder
from onestep.data import clip_windows
from onestep.model import build_model
from onestep.shards import clip_row
from onestep.stages import build_stage, stage_class
from onestep.synth import make_clip
from onestep.train.engine import init_distributed, make_engine
from onestep.train.loop import Hooks, run_stage

cfg = load_config("tiny", json.loads(sys.argv[1]))
stage_class(cfg.train.stage).resolve_sources(cfg)
init_distributed(cfg)
wan = load_config("tiny", json.loads(sys.argv[1])
                  + ["model.kind=wan", "model.prompt_tokens=4", "model.text_dim=16"])
frozen = make_engine(build_model(wan), wan, trainable=False)  # Wan keeps its prompt as a buffer
dtypes = sorted({str(p.dtype) for p in frozen.module.parameters()})
buffers = sorted({str(b.dtype) for b in frozen.module.buffers() if b.is_floating_point()})
rows = [clip_row(make_clip(i, cfg.synth), cfg.synth.fps, cfg.synth.sample_rate) for i in range(2)]
encoder = build_audio_encoder(cfg.audio)
windows = [w for i, r in enumerate(rows)
           for w in clip_windows(r, cfg, encoder, np.random.default_rng(i))]
batch = {k: torch.from_numpy(np.stack([w[k] for w in windows[:cfg.train.global_batch]]))
         for k in windows[0]}
metrics = run_stage(cfg, build_stage(cfg), iter(lambda: batch, None), Hooks())
print(json.dumps({"frozen": dtypes, "buffers": buffers, "step": metrics["step"],
                  "losses": [metrics["dmd_loss"], metrics["critic_loss"]]}))
"""


def test_bf16_trains_a_distillation_stage_with_its_teacher_frozen_in_bf16():
    """The precision a GPU run uses (train.precision: auto → bf16), here on the CPU: autocast
    over fp32 weights for the trained networks, the frozen teacher stored in bf16 (buffers, a
    Wan network's stored prompt, kept fp32). reports/gpu.md runs every stage so on a GPU."""
    overrides = tiny_overrides(**{"train.num_workers": 1, "train.stage": "dmd",
                                  "train.precision": "bf16", "dmd.critic_steps": 1,
                                  "dmd.teacher": str(ROOT / "reports/pretrained/teacher"),
                                  "validation.every_clips": 0})
    result = _in_one_process(BF16, overrides, port=29621)
    assert result["frozen"] == ["torch.bfloat16"] and result["buffers"] == ["torch.float32"]
    assert result["step"] == 2 and all(0 < loss < 100 for loss in result["losses"])
