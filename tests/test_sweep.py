"""tune/sweep.py: the search-space errors users see, and how trials are sized to the cluster."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_overrides
from onestep.checkpoint import save_export
from onestep.config import ConfigError, load_config
from onestep.model import build_model
from onestep.stages.base import student_config
from onestep.sweep.space import concurrency, grace_clips, sweep_ready

SWEEP = [sys.executable, str(ROOT / "tune" / "sweep.py")]


def _random_exports(cfg, where: Path) -> tuple[str, str]:
    """A teacher and a 4-step student export of one random network: the sweep's mechanics do
    not depend on how good they are, and a real chain is tested in test_distill_chain."""
    torch.manual_seed(0)
    weights = build_model(cfg).state_dict()
    save_export(where / "teacher", weights, cfg, {"stage": "teacher", "step": 0})
    save_export(where / "student", weights, student_config(cfg, 4), {"stage": "dmd", "step": 0})
    return str(where / "teacher"), str(where / "student")


def _sweep_args(bucket: str, tmp_path: Path, teacher: str, student: str) -> list[str]:
    sets = tiny_overrides(**{
        "data.uri": f"s3://{bucket}/synthtalk", "run.root": f"s3://{bucket}/runs",
        "adversarial.phases": "[2,1]", "adversarial.clips_per_phase": 8,
        "validation.clips": 2, "validation.every_clips": 8,
        "validation.reader": str(tmp_path / "reader.safetensors"),
        "validation.reader_clips": 24,
        "sweep.name": "lam-warmup", "sweep.self_compare_weights": "[0,1]",
        "sweep.warmup_steps": "[1,4]"})
    return (["--teacher", teacher, "--student", student, "--out", str(tmp_path / "sweep")]
            + [a for kv in sets for a in ("--set", kv)])


def _wait_for_first_trial(proc: subprocess.Popen, log: Path) -> str:
    """The id of the first trial the sweep reports as over (finished or stopped by ASHA)."""
    while proc.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("trial ") and ("finished" in line or "stopped early" in line):
                return line.split()[1]
        time.sleep(1)
    raise AssertionError(f"the sweep ended before any trial did:\n{log.read_text()[-3000:]}")


def _env() -> dict:
    """Each sweep starts its own local Ray, as on a laptop (the S3 credentials are inherited)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.parametrize("override, message", [
    ("sweep.search=hyperband", "sweep.search: expected 'grid', 'random' or 'bayes'"),
    ("sweep.self_compare_weights=[]", "sweep.self_compare_weights: expected a non-empty list"),
    ("sweep.self_compare_weights=[-1,0.5]", "sweep.self_compare_weights: expected"),
    ("sweep.warmup_steps=fast", "sweep.warmup_steps: expected a list"),
])
def test_bad_search_space_is_named(override, message, capsys):
    sys.path.insert(0, str(ROOT / "tune"))
    import sweep

    with pytest.raises(SystemExit) as e:
        sweep.main(["--student", "runs/x", "--set", override])
    assert message in str(e.value)


def test_trials_fit_the_cluster_and_validate_before_asha_decides():
    cfg = load_config("tiny", ["train.stage=adversarial", "adversarial.clips_per_phase=64"])
    assert grace_clips(cfg) == 48  # a quarter of 3 phases × 64 clips
    assert sweep_ready(cfg).validation.every_clips == 48
    assert concurrency(cfg, {"CPU": 5}) == 1  # the trial, 2 workers, 2 for Ray Data
    assert concurrency(cfg, {"CPU": 16}) == 3
    with pytest.raises(ConfigError, match="one trial needs 5 CPUs"):
        concurrency(cfg, {"CPU": 4})  # would deadlock its data pipeline: refuse clearly
    with pytest.raises(ConfigError, match="train.stage"):
        sweep_ready(load_config("tiny"))
    too_rare = load_config("tiny", ["train.stage=adversarial", "validation.every_clips=100000"])
    with pytest.raises(ConfigError, match="validation.every_clips"):
        sweep_ready(too_rare)
