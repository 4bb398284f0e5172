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
    run = subprocess.run([sys.executable, "-c", OFFLOAD, json.dumps(overrides)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": "29619"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["step"] == 2 and result["loss"] > 0
