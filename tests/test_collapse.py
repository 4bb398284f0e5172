"""Collapse guards: the checks on hand-made videos, and a forced collapse in a real run.

The run is the adversarial stage from onestep's own trained DMD student (reports/pretrained), a
2-worker ZeRO-3 Ray Train job, with a generator learning rate a million times too high: its first
validation passes (the student is good, so every check arms), the next fails, the guard rolls back
to the checkpoint that passed with the rate halved, fails again and stops the stage by name.
"""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from onestep.config import ValidationConfig
from onestep.evaluation import collapse

PRETRAINED = ROOT / "reports" / "pretrained"


def _video(seed: int = 0, n: int = 12) -> np.ndarray:
    """A moving textured clip: a gradient with a drifting square."""
    rng = np.random.default_rng(seed)
    v = np.zeros((n, 32, 32, 3), np.uint8)
    v[:] = (np.linspace(40, 200, 32)[None, :, None] + rng.integers(0, 20, (32, 1, 3))).astype(
        np.uint8)
    for i in range(n):
        v[i, 8 + i % 8:16 + i % 8, 8:16] = 230
    return v


def _metrics(videos, reference, sync=0.6, reference_sync=0.6) -> dict:
    return {f"val_{k}": v for k, v in
            collapse.collapse_metrics(videos, reference, sync, reference_sync).items()}


def test_a_good_video_passes_every_check():
    v = ValidationConfig()
    ref = [_video(0), _video(1)]
    m = _metrics([_video(2), _video(3)], ref)
    assert collapse.passing(m, v) == {c.key for c in collapse.CHECKS}
    assert collapse.failing(m, v, {c.key for c in collapse.CHECKS}) == []


@pytest.mark.parametrize("broken, failures", [
    (lambda x: np.repeat(x[:1], len(x), 0), {"static video"}),
    (lambda x: np.full_like(x, 90), {"static video", "solid colour", "colours drifted"}),
    (lambda x: np.where(x > 120, 255, 0).astype(np.uint8), {"oversaturated", "colours drifted"}),
    (lambda x: (x * 0.6 + np.array([100, 0, 0])).astype(np.uint8), {"colours drifted"}),
])
def test_each_collapse_trips_its_checks(broken, failures):
    v, ref = ValidationConfig(), [_video(0), _video(1)]
    m = _metrics([broken(_video(2)), broken(_video(3))], ref)
    failed = collapse.failing(m, v, {c.key for c in collapse.CHECKS})
    assert {c.failure for c in failed} == failures
    line = collapse.describe(failed, m, v)
    for c in failed:  # the message names each metric, its value and its bound
        assert f"val_{c.key} " in line and f"validation.{c.threshold}=" in line


def test_lost_lip_sync_and_nan_trip_and_unarmed_checks_do_not():
    v, ref = ValidationConfig(), [_video(0)]
    m = _metrics([_video(1)], ref, sync=0.05, reference_sync=0.6)
    assert [c.failure for c in collapse.failing(m, v, {"sync_ratio"})] == ["lip-sync lost"]
    assert collapse.failing(m, v, {"motion_ratio"}) == []  # sync not armed: not a collapse
    m["val_std_ratio"] = float("nan")
    assert "solid colour" in {c.failure for c in collapse.failing(m, v, {"std_ratio"})}
    # A reference without lip-sync (an untrained teacher) gives nothing to lose: never trips.
    m = _metrics([_video(1)], ref, sync=0.0, reference_sync=0.0)
    assert m["val_sync_ratio"] == float("inf") and "sync_ratio" in collapse.passing(m, v)


def test_a_forced_collapse_rolls_back_then_stops(ray_cluster, tmp_path):
    import distill

    from onestep.checkpoint import checkpoint_names
    from onestep.config import load_config
    from onestep.prepare import prepare_synthtalk
    from onestep.storage import resolve

    data = tmp_path / "synthtalk"
    sets = {"data.uri": str(data), "run.root": str(tmp_path / "runs"), "run.name": "collapse",
            "synth.num_clips": 16, "synth.clips_per_shard": 8, "synth.num_identities": 8,
            "synth.clip_seconds": 1.2, "train.global_batch": 4, "train.log_every_steps": 1,
            "train.checkpoint_every_clips": 400, "data.windows_per_clip": 2,
            "data.shuffle_buffer": 8, "adversarial.phases": "[1]",
            "adversarial.clips_per_phase": 40, "adversarial.disc_warmup_steps": 0,
            "adversarial.warmup_steps": 1, "adversarial.teacher": str(PRETRAINED / "teacher"),
            "adversarial.lr": 20.0,  # ×10⁶: the generator leaves the data manifold in one step
            "validation.every_clips": 8, "validation.clips": 2,
            "validation.reader": str(PRETRAINED / "mouth_reader.safetensors"),
            "validation.on_collapse": "rollback", "validation.max_rollbacks": 1,
            "validation.rollback_lr_scale": 0.5}
    overrides = [f"{k}={v}" for k, v in sets.items()]
    prepare_synthtalk(load_config("tiny", overrides).synth, resolve(str(data)))
    argv = ["--stage", "adversarial", "--student", str(PRETRAINED / "student")]
    with pytest.raises(SystemExit) as stopped:
        distill.main(argv + [a for kv in overrides for a in ("--set", kv)])
    # The driver's last words name the checks, their values and their bounds, and why the guard
    # could not roll back again.
    message = str(stopped.value)
    assert message.startswith("stopped at step 2: collapse — ")
    assert "(val_motion_ratio 0.0" in message and "< validation.min_motion_ratio=0.25" in message
    assert "no rollback: validation.max_rollbacks=1 rollbacks done" in message

    run = tmp_path / "runs" / "collapse"
    scalars = EventAccumulator(str(run / "tensorboard"), purge_orphaned_data=False).Reload()
    series = {tag: [(e.step, e.value) for e in scalars.Scalars(f"adversarial/{tag}")]
              for tag in ("guards_passed", "rollbacks", "lr", "collapsed",
                          "collapse_motion_ratio")}
    # Step 0 passed (the student is good) and was checkpointed; step 2 failed, the run went back
    # to step 0 with the rate halved, trained to step 2 again, failed again and stopped there.
    assert series["guards_passed"][0] == (0, 1.0)
    assert series["collapse_motion_ratio"] == [(2, 1.0), (2, 1.0)]
    assert series["rollbacks"][-1] == (2, 1.0) and series["collapsed"] == [(2, 1.0)]
    (step, lr), (step_again, lr_again) = series["lr"]  # logged at step 1, before and after
    assert step == step_again == 1 and lr_again == pytest.approx(lr / 2)
    # The collapsed weights were never checkpointed: the run can go on from the step that passed.
    (name,) = checkpoint_names(resolve(str(run)))
    assert json.loads((run / name / "state.json").read_text())["step"] == 0
    assert json.loads((run / "stopped.json").read_text())["step"] == 2
