"""A run saved by N workers continues on M: the ZeRO-3 checkpoint is resharded (universal
checkpoint), exactly, and an elastic run restarts on the worker count that fits."""

import json
import subprocess
import sys

from onestep.checkpoint import latest_checkpoint
from onestep.prepare import prepare_synthtalk
from onestep.storage import resolve
from onestep.train.ray_job import launch, make_trainer, run_location

from conftest import ROOT

# Restores a 2-worker checkpoint on one plain-process rank and compares what it holds with the
# saved shards: every weight, both Adam moments, the optimiser and schedule positions, the EMA.
SCRIPT = r"""
import glob, json, sys
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file
from onestep.checkpoint import read_config
from onestep.stages import build_stage
from onestep.train.ema import ShardedEMA
from onestep.train.engine import full_state_dict, init_distributed, make_engine
from onestep.train.loop import _restore
from pathlib import Path

ckpt = Path(sys.argv[1])
cfg = read_config(str(ckpt))
cfg.train.num_workers = 1
init_distributed(cfg)
stage = build_stage(cfg)
net = stage.build_networks()["generator"]
engine = make_engine(net, cfg, cfg.train.lr, total_clips=stage.total_clips(cfg))
emas = {"generator": ShardedEMA(engine.module, cfg.train.ema_decay)}
state = _restore(ckpt, stage, {"generator": engine}, emas)

saved = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "engines" / "generator"), "state")
live = full_state_dict(engine.module)
weights = max(float((live[k] - saved[k]).abs().max()) for k in saved)
ema = emas["generator"].full_state_dict()
export = load_file(str(ckpt / "model.safetensors"))
ema_diff = max(float((ema[k] - export[k]).abs().max()) for k in export)

def sums(tensors):
    return [float(sum(t.double().pow(2).sum() for t in tensors))]

shards = [torch.load(f, weights_only=False)["optimizer_state_dict"]
          for f in sorted(glob.glob(str(ckpt / "engines/generator/state/*optim_states.pt")))]
flat = engine.optimizer.fp32_partitioned_groups_flat[0]
moments = engine.optimizer.optimizer.state[flat]
model_state = torch.load(glob.glob(str(ckpt / "engines/generator/state/*model_states.pt"))[0],
                         weights_only=False)
print(json.dumps({
    "world_size": state["world_size"], "weights_max_diff": weights, "ema_max_diff": ema_diff,
    "saved_shards": len(shards),
    "exp_avg": sums([s["optimizer_state_dict"]["state"][0]["exp_avg"] for s in shards])
               + sums([moments["exp_avg"]]),
    "exp_avg_sq": sums([s["optimizer_state_dict"]["state"][0]["exp_avg_sq"] for s in shards])
                  + sums([moments["exp_avg_sq"]]),
    "optimizer_step": [int(shards[0]["optimizer_state_dict"]["state"][0]["step"]),
                       int(moments["step"])],
    "schedule_step": [model_state["lr_scheduler"]["last_epoch"],
                      engine.lr_scheduler.last_epoch],
}))
"""


def test_two_worker_checkpoint_resumes_on_one_exactly_and_elastically(ray_cluster, tmp_path,
                                                                       tiny_config):
    base = {"data.uri": str(tmp_path / "data"), "run.root": str(tmp_path / "runs"),
            "validation.every_clips": 0}
    cfg = tiny_config(**base)
    prepare_synthtalk(cfg.synth, resolve(cfg.data.uri))
    assert launch(cfg).error is None  # two workers, checkpoints at steps 1 and 2
    run = run_location(cfg)
    saved = latest_checkpoint(run.uri)

    out = subprocess.run([sys.executable, "-c", SCRIPT, saved], cwd=ROOT, capture_output=True,
                         text=True, timeout=600,
                         env={**__import__("os").environ, "MASTER_PORT": "29619"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["world_size"] == 1 and got["saved_shards"] == 2
    assert got["weights_max_diff"] == 0.0 and got["ema_max_diff"] == 0.0
    for key in ("exp_avg", "exp_avg_sq"):
        before, after = got[key]
        assert before > 0 and abs(after - before) <= 1e-9 * before, (key, before, after)
    assert got["optimizer_step"] == [2, 2] and got["schedule_step"][0] == got["schedule_step"][1]

    # Elastic: up to 2 workers of 3 CPUs on a 5-CPU cluster fits one; Ray Train starts on one
    # and the run reshards the two-worker checkpoint to continue.
    elastic = tiny_config(**base, **{"train.total_clips": 16, "train.min_workers": 1,
                                     "train.cpus_per_worker": 3})
    assert make_trainer(elastic).scaling_config.num_workers == (1, 2)
    result = launch(elastic, resume=True)
    assert result.error is None and result.metrics["clips_seen"] == 16
    state = json.loads(resolve(latest_checkpoint(run.uri)).join("state.json").read_bytes())
    assert state["world_size"] == 1 and state["resumed_at_steps"] == [2] and state["step"] == 4
