"""tune/sweep.py as a user runs it: a sweep of λ (× one warm-up) on local Ray, each trial a
2-worker ZeRO-3 Ray Train run of the adversarial stage reading SynthTalk from a real S3 API
server, early-stopped by ASHA on validation; interrupted with Ctrl-C after its first trial,
resumed without rerunning that trial, and reported (table, plot, best config). The search space
itself (any dotted keys, grid and sampled) is tested without Ray."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, _free_port, tiny_overrides

from onestep.checkpoint import checkpoint_names, save_export
from onestep.config import ConfigError, load_config
from onestep.model import build_model
from onestep.prepare import prepare_synthtalk
from onestep.stages.base import student_config
from onestep.storage import resolve
from onestep.sweep.space import (
    concurrency,
    describe,
    grace_clips,
    num_trials,
    param_space,
    sweep_ready,
    trial_config,
)

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
        "adversarial.disc_warmup_steps": 0,
        "validation.clips": 2, "validation.every_clips": 8,
        "validation.reader": str(tmp_path / "reader.safetensors"),
        "validation.reader_clips": 24,
        "sweep.name": "lam-warmup",
        "sweep.space": "{adversarial.self_compare_weight: [0, 1], adversarial.warmup_steps: [3]}"})
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


@pytest.fixture
def own_ray(tmp_path):
    """A Ray head of the sweep's own, like `ray start --head` on a workstation.

    The sweep must not share a machine-wide "current cluster" with the test session's Ray: Train's
    helpers that look the cluster up by address would find two. RAY_ADDRESS, set in every process
    of this cluster, names it unambiguously; SIGTERM to `ray start --block` takes it all down.
    """
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": f"127.0.0.1:{port}",
           "RAY_AUTH_MODE": "disabled"}
    log = tmp_path / "ray-head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
             f"--port={port}", "--num-cpus=5", f"--dashboard-port={_free_port()}",
             f"--ray-client-server-port={_free_port()}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 120
    while "will now block" not in log.read_text():
        assert head.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    yield env
    head.terminate()
    head.wait(timeout=120)
    # `ray start` left its address as this machine's "current cluster"; it is gone now.
    current = Path("/tmp/ray/ray_current_cluster")
    if current.exists() and current.read_text().strip().endswith(f":{port}"):
        current.unlink()


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_sweep_interrupted_resumed_and_reported(ray_cluster, s3_endpoint, bucket, tmp_path,
                                                 tiny_config, own_ray):
    # The data is written with the session's Ray (ray_cluster): without it, the first Ray task
    # would start a Ray of its own here, and the session's could not start after this test.
    cfg = tiny_config(**{"data.uri": f"s3://{bucket}/synthtalk"})
    prepare_synthtalk(cfg.synth, resolve(cfg.data.uri))
    args = _sweep_args(bucket, tmp_path, *_random_exports(cfg, tmp_path))

    # Ctrl-C once the first trial is over: Tune saves its state and the script says how to go on.
    log1, log2 = tmp_path / "first.log", tmp_path / "resumed.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(SWEEP + args, stdout=out, stderr=subprocess.STDOUT, text=True,
                                env=own_ray, cwd=tmp_path)
        first = _wait_for_first_trial(proc, log1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=300) == 130, log1.read_text()[-3000:]
    assert "continue with the same command and --resume" in log1.read_text()
    trials = f"s3://{bucket}/runs/lam-warmup/trials"
    done_before = checkpoint_names(resolve(f"{trials}/{first}"))

    # What a person wrote of the sweep so far is kept when the report is rewritten.
    (tmp_path / "sweep-reading.md").write_text("## Reading\n\nOne trial in: nothing yet.\n")
    with open(log2, "w") as out:
        resumed = subprocess.run(SWEEP + args + ["--resume"], stdout=out,
                                 stderr=subprocess.STDOUT, env=own_ray, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, log2.read_text()[-3000:]
    # The trial that had finished was not run again: its Train run has the same checkpoints.
    assert checkpoint_names(resolve(f"{trials}/{first}")) == done_before
    assert f"trial {first} " not in log2.read_text()

    report = json.loads((tmp_path / "sweep.json").read_text())
    rows = report["trials"]
    assert sorted(tuple(r["params"].values()) for r in rows) == [(0.0, 3), (1.0, 3)]
    assert {r["status"] for r in rows} <= {"finished", "stopped early (ASHA)"}
    for r in rows:  # every trial reported validation metrics from its held-out clips
        assert -1 <= r["val_sync"] <= 1 and r["val_frechet"] >= 0
        assert r["val_score"] == pytest.approx(r["val_frechet"] + 1 - r["val_sync"])
    finished = [r for r in rows if r["status"] == "finished"]
    assert finished and all(r["clips_seen"] == 16 for r in finished)
    best = min(finished, key=lambda r: r["val_score"])
    assert report["best"]["trial"] == best["trial"]
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    markdown = (tmp_path / "sweep.md").read_text()
    assert "**Best**" in markdown and markdown.rstrip().endswith("One trial in: nothing yet.")

    # The best configuration is a config jobs/distill.py takes as it is.
    best_cfg = load_config(str(tmp_path / "sweep-best.yaml"))
    assert best_cfg.train.stage == "adversarial"
    assert best_cfg.adversarial.self_compare_weight == best["params"][
        "adversarial.self_compare_weight"]
    assert best_cfg.adversarial.warmup_steps == 3
    assert best_cfg.adversarial.student == str(tmp_path / "student")


@pytest.mark.parametrize("override, message", [
    ("sweep.search=hyperband", "sweep.search: expected 'grid', 'random' or 'bayes'"),
    ("sweep.space={}", "sweep.space: expected a mapping of dotted config keys"),
    ("sweep.space={adversarial.self_compare: [0]}",
     "sweep.space: unknown config key adversarial.self_compare; valid keys under adversarial:"),
    ("sweep.space={adversarial: [0]}", "sweep.space: adversarial is a section"),
    ("sweep.space={adversarial.warmup_steps: [fast]}",
     "sweep.space[adversarial.warmup_steps][0]: expected an integer, got 'fast'"),
    # A value of the right type that no trial could train with is refused before any trial.
    ("sweep.space={adversarial.self_compare_weight: [-1, 0.5]}",
     "sweep.space[adversarial.self_compare_weight] = -1.0: adversarial.self_compare_weight: "
     "expected ≥ 0"),
])
def test_bad_search_space_is_named(override, message, capsys):
    sys.path.insert(0, str(ROOT / "tune"))
    import sweep

    with pytest.raises(SystemExit) as e:
        sweep.main(["--student", "runs/x", "--set", override])
    assert message in str(e.value)


def test_any_dotted_keys_are_swept_as_their_types():
    sets = ["train.stage=dmd", "validation.every_clips=16",
            "sweep.space={dmd.lr: [1e-5, 1e-4], dmd.critic_steps: [2, 5, 8], "
            "adversarial.loss: [hinge]}"]
    cfg = sweep_ready(load_config("tiny", sets))
    assert cfg.sweep.space["dmd.lr"] == [1e-5, 1e-4]  # YAML's "1e-5" is a string: made a float
    grid = param_space(cfg)
    assert num_trials(cfg) == 6 and grid["dmd.critic_steps"] == {"grid_search": [2, 5, 8]}
    # Sampled: a float key is a range, any other key a choice from its list.
    cfg.sweep.search = "random"
    sampled = param_space(cfg)
    assert (sampled["dmd.lr"].lower, sampled["dmd.lr"].upper) == (1e-5, 1e-4)
    assert sampled["dmd.critic_steps"].categories == [2, 5, 8]
    assert sampled["adversarial.loss"].categories == ["hinge"]
    trial = trial_config(cfg, {"dmd.lr": 3e-5, "dmd.critic_steps": 5,
                               "adversarial.loss": "hinge"}, "runs/s", "t1")
    assert (trial.dmd.lr, trial.dmd.critic_steps, trial.adversarial.loss) == (3e-5, 5, "hinge")
    assert (trial.run.root, trial.run.name, cfg.dmd.critic_steps) == ("runs/s", "t1", 5)
    assert describe({"dmd.lr": 3e-5, "dmd.critic_steps": 5}) == "lr=3e-05, critic_steps=5"
    with pytest.raises(ConfigError, match=r"sweep parameters \['dmd.critic_lr'\]"):
        trial_config(cfg, {"dmd.critic_lr": 1.0}, "runs/s", "t2")
    fada = sweep_ready(load_config("tiny", ["train.stage=fada", "validation.every_clips=64",
                                            "sweep.space={fada.gt_weight_peak: [0.2, 0.3]}"]))
    assert num_trials(fada) == 2 and fada.validation.every_clips == 64


def test_configs_saved_before_sweep_space_still_load():
    """Exports and reports outlive the code that wrote them: reports/pretrained's and the
    committed best config of reports/sweep.md were saved with the sweep's two former keys."""
    from onestep.checkpoint import read_config

    saved = read_config(str(ROOT / "reports" / "pretrained" / "student"))
    assert saved.sweep.space == {"adversarial.self_compare_weight": [0.0, 0.25, 0.5, 1.0, 2.0],
                                 "adversarial.warmup_steps": [20, 100]}
    best = load_config(str(ROOT / "reports" / "sweep-best.yaml"))
    assert best.sweep.space["adversarial.warmup_steps"] == [4, 12]


def test_trials_fit_the_cluster_and_validate_before_asha_decides():
    cfg = load_config("tiny", ["train.stage=adversarial", "adversarial.clips_per_phase=64",
                               "adversarial.disc_warmup_steps=1"])
    assert grace_clips(cfg) == 48  # a quarter of 3 phases × 64 clips
    assert sweep_ready(cfg).validation.every_clips == 48
    assert concurrency(cfg, {"CPU": 5}) == 1  # the trial, 2 workers, 2 for Ray Data
    assert concurrency(cfg, {"CPU": 16}) == 3
    with pytest.raises(ConfigError, match="one trial needs 5 CPUs"):
        concurrency(cfg, {"CPU": 4})  # would deadlock its data pipeline: refuse clearly
    with pytest.raises(ConfigError, match=r"train.stage: stage sync trains a sync_expert, "
                       r"which has no validation score to rank trials by; sweep a generator "
                       r"stage \(teacher, dmd, adversarial, fada, osa_lcm\)"):
        sweep_ready(load_config("tiny", ["train.stage=sync", "audio.encoder=mfcc",
                                         "audio.feature_rate=100", "data.frames=41"]))
    too_rare = load_config("tiny", ["train.stage=adversarial", "validation.every_clips=100000"])
    with pytest.raises(ConfigError, match="validation.every_clips"):
        sweep_ready(too_rare)


def test_trial_slots_wait_for_room_and_take_back_a_dead_trials_slot(ray_cluster):
    import ray

    from onestep.sweep.slots import TrialSlots

    @ray.remote(num_cpus=0)
    class Trial:
        pass

    slots = TrialSlots.remote(1)
    first, second = Trial.remote(), Trial.remote()
    ray.get(slots.acquire.remote("first", first))
    waiting = slots.acquire.remote("second", second)
    assert not ray.wait([waiting], timeout=3)[0]  # one slot, and its holder is alive
    ray.kill(first)  # like a trial ASHA stopped: it never released its slot
    ray.get(waiting, timeout=30)
    ray.get(slots.release.remote("second"))
    ray.get(slots.acquire.remote("third", second), timeout=10)
