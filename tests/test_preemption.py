"""A preemption notice makes the loop checkpoint at once, off its schedule.

Ray Train gives the notice (`ray.train.get_preemption_info`) only when a cluster node is being
drained, which a single local node cannot do without ending the test; the loop is therefore run
in a plain process (DeepSpeed on one gloo rank, its own process so the process group does not
outlive it) with a notice hook that fires at the third step.
"""

import json
import subprocess
import sys

from conftest import ROOT, tiny_overrides

SCRIPT = r"""
import json, sys
import numpy as np, torch
from onestep.config import SynthConfig, load_config
from onestep.audio_features import build_audio_encoder
from onestep.data import clip_windows
from onestep.shards import clip_row
from onestep.stages import build_stage
from onestep.synth import make_clip
from onestep.train.loop import Hooks, run_stage

cfg = load_config("tiny", json.loads(sys.argv[1]))
synth = SynthConfig(**{**cfg.synth.__dict__, "test_identity_fraction": 0.0})
rows = [clip_row(make_clip(i, synth), synth.fps, synth.sample_rate) for i in range(2)]
encoder = build_audio_encoder(cfg.audio)
windows = [w for i, r in enumerate(rows) for w in clip_windows(r, cfg, encoder, np.random.default_rng(i))]
batch = {k: torch.from_numpy(np.stack([w[k] for w in windows[:cfg.train.global_batch]]))
         for k in windows[0]}

def batches():
    while True:
        yield batch

calls, saved = [], []

def notice():
    calls.append(1)
    return len(calls) == 3

def report(metrics, checkpoint):
    if checkpoint is not None:
        saved.append(int(metrics["step"]))

run_stage(cfg, build_stage(cfg), batches(), Hooks(report=report, preemption_notice=notice))
print(json.dumps(saved))
"""


def test_a_preemption_notice_checkpoints_at_once():
    overrides = tiny_overrides(**{"train.num_workers": 1, "train.total_clips": 24,
                                  "train.checkpoint_every_clips": 16,
                                  "validation.every_clips": 0})
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(overrides)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={"PYTHONWARNINGS": "ignore", **__import__("os").environ,
                              "MASTER_PORT": "29617"})
    assert run.returncode == 0, run.stderr[-3000:]
    # 4 clips a step: the schedule checkpoints at steps 4 and 6 (the last); the notice, heard
    # at the third step, adds step 3.
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [3, 4, 6]
    assert "preemption notice: checkpointing at step 3" in run.stderr
