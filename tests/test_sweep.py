"""tune/sweep.py: the search-space errors users see, and how trials are sized to the cluster."""

import sys

import pytest

from conftest import ROOT
from onestep.config import ConfigError, load_config
from onestep.sweep.space import concurrency, grace_clips, sweep_ready

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
