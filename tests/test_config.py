import re

import pytest

from onestep.config import ConfigError, from_dict, load_config


def test_presets_load_and_scale_up():
    tiny, small, base = (load_config(n) for n in ("tiny", "small", "base"))
    assert tiny.model.dim < small.model.dim < base.model.dim
    assert not tiny.train.use_gpu and small.train.use_gpu and base.train.use_gpu
    assert base.run.root.startswith("s3://")


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", ["model.depth=6", "train.lr=1e-3", "train.use_gpu=false",
                               "model.patch=[1, 4, 4]"])
    assert cfg.model.depth == 6 and cfg.train.lr == 1e-3 and cfg.model.patch == [1, 4, 4]


def test_words_are_words_and_only_true_and_false_are_booleans(tmp_path):
    # YAML 1.1 (PyYAML's) reads off/on/yes/no as booleans; a choice named "off" must survive.
    assert load_config("tiny", ["fada.gt_weighting=off"]).fada.gt_weighting == "off"
    path = tmp_path / "mine.yaml"
    path.write_text("fada: {gt_weighting: off}\ntrain: {use_gpu: true}\n")
    cfg = load_config(str(path))
    assert cfg.fada.gt_weighting == "off" and cfg.train.use_gpu is True
    with pytest.raises(ConfigError, match="train.use_gpu: expected true or false, got 'yes'"):
        load_config("tiny", ["train.use_gpu=yes"])


def test_unknown_key_names_the_key_and_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["model.detph=6"])
    assert "model.detph" in str(e.value) and "depth" in str(e.value) and "heads" in str(e.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="train.global_batch: expected an integer"):
        load_config("tiny", ["train.global_batch=big"])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="train.global_batch"):
        load_config("tiny", ["train.global_batch=15"])  # 2 workers
    with pytest.raises(ConfigError, match="synth.resolution"):
        load_config("tiny", ["synth.resolution=30"])


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="presets: base, demo, small, tiny"):
        load_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config("small", ["model.depth=3"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path)) == cfg
    assert from_dict(cfg.to_dict()) == cfg


def test_teacher_and_student_flags_reach_every_registered_stage(monkeypatch):
    """--teacher/--student follow the registry's `sources`: a new stage is reached without an
    edit to the command-line code."""
    import argparse

    from onestep import cli, stages
    from onestep.stages.base import Stage

    class NewStage(Stage):
        sources = ("newstage.teacher", "newstage.student")

    monkeypatch.setitem(stages.STAGES, "newstage", NewStage)
    args = argparse.Namespace(stage="fada", teacher="runs/t", student="runs/s")
    overrides = cli.stage_overrides(args)
    assert overrides[0] == "train.stage=fada"
    assert {"dmd.teacher=runs/t", "fada.teacher=runs/t", "osa_lcm.teacher=runs/t",
            "newstage.teacher=runs/t", "adversarial.student=runs/s",
            "newstage.student=runs/s"} <= set(overrides)
    assert "model.pretrained=runs/t" not in overrides  # the teacher stage's source is no teacher
    parser = argparse.ArgumentParser()
    cli.add_stage_args(parser)
    assert "newstage" in parser.format_help()  # the help names what the flags set


def test_cli_reports_config_errors_without_a_traceback():
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "distill.py"), "--set",
                          "train.bogus=1"], capture_output=True, text=True, check=False)
    assert out.returncode != 0
    assert "unknown config key train.bogus" in out.stderr and "Traceback" not in out.stderr


def test_run_name_defaults_to_stage_and_preset():
    assert load_config("tiny").run.name == "teacher-tiny"
    assert load_config("tiny", ["train.stage=dmd"]).run.name == "dmd-tiny"
    assert load_config("tiny", ["train.stage=dmd", "run.name=mine"]).run.name == "mine"


@pytest.mark.parametrize("override,key", [
    ("adversarial.phases=[2, 3]", "adversarial.phases"),
    ("adversarial.phases=[]", "adversarial.phases"),
    ("adversarial.loss=wgan", "adversarial.loss"),
    ("dmd.critic_steps=0", "dmd.critic_steps"),
    ("adversarial.disc_timestep=[0.5, 0.1]", "adversarial.disc_timestep"),
    ("adversarial.disc_warmup_steps=1000000", "adversarial.disc_warmup_steps"),
    ("adversarial.regression_weight=-1", "adversarial.regression_weight"),
    ("adversarial.reg_weight=-1", "adversarial.reg_weight"),
    ("adversarial.gan_weight=-1", "adversarial.gan_weight"),
    (["adversarial.gan_weight=0", "adversarial.regression_weight=0"],
     "adversarial.gan_weight"),  # the generator would have no objective
    ("adversarial.last_phase_clips=-1", "adversarial.last_phase_clips"),
    (["adversarial.clips_per_phase=4096", "adversarial.last_phase_clips=16"],
     "adversarial.disc_warmup_steps"),  # no generator update in the last phase
])
def test_distillation_settings_are_checked(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("tiny", override if isinstance(override, list) else [override])


@pytest.mark.parametrize("override,expected", [
    ("train.num_workers=0", "train.num_workers: expected > 0, got 0"),  # was ZeroDivisionError
    ("train.lr=-0.001", "train.lr: expected > 0"),
    ("train.lr=.nan", "train.lr: expected a finite number"),
    ("adversarial.disc_lr=.inf", "adversarial.disc_lr: expected a finite number"),
    ("train.global_batch=0", "train.global_batch: expected > 0"),
    ("train.total_clips=-5", "train.total_clips: expected > 0"),
    ("train.max_failures=-1", "train.max_failures: expected ≥ 0"),
    ("train.ema_decay=1.5", "train.ema_decay: expected in [0, 1]"),
    ("data.frames=0", "data.frames: expected > 0"),
    ("train.min_workers=3", "train.min_workers: expected ≤ train.num_workers=2"),
    # Elastic 3–4 workers: the global batch of 16 would not split over 3.
    (["train.min_workers=3", "train.num_workers=4"],
     "train.global_batch: expected divisible by every worker count the run may have (3–4): "
     "a multiple of 12"),
])
def test_values_that_cannot_train_are_refused_by_name(override, expected):
    overrides = override if isinstance(override, list) else [override]
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config("tiny", overrides).validate()


@pytest.mark.parametrize("preset", ["tiny", "small", "base", "demo"])
def test_every_preset_validates(preset):
    load_config(preset).validate()


def test_the_rayjob_manifest_runs_the_distill_job_resumably():
    """KubeRay validates jobs/rayjob.yaml only on a cluster: its entrypoint must be a command
    the job accepts, that resumes when KubeRay retries it, on the resources the cluster has."""
    import shlex
    from pathlib import Path

    import yaml

    import distill

    root = Path(__file__).resolve().parents[1]
    job = yaml.safe_load((root / "jobs" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["backoffLimit"] >= 1
    python, script, *argv = shlex.split(job["spec"]["entrypoint"])
    assert python == "python" and script == "/home/ray/onestep/jobs/distill.py"
    args, cfg = distill.parse(argv)
    assert args.resume == "auto" and cfg.train.use_gpu
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               * g["maxReplicas"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert cfg.train.num_workers == gpus
    service = yaml.safe_load((root / "serve" / "rayservice.yaml").read_text())
    image = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["image"]
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"] == image


def test_a_refused_value_is_blamed_on_the_file_or_the_override_that_wrote_it(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set \(on top of tiny\.yaml\): train\.lr: "):
        load_config("tiny", ["train.lr=-1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: -1}\n")
    with pytest.raises(ConfigError, match=f"^{bad}: train.lr: "):
        load_config(str(bad), ["train.global_batch=8"])


def test_make_demo_and_teacher_start_on_a_fresh_clone_and_resume_on_a_rerun():
    """The Makefile's stages are re-runnable: each resumes only if its run exists
    (`--resume auto`); a bare `--resume` refuses a run that has no checkpoint yet, which a fresh
    clone's first `make demo` is."""
    import shlex
    import subprocess
    from pathlib import Path

    import distill

    root = Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "demo", "teacher"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.replace("\\\n", " ")
    stages = [shlex.split(line) for line in plan.splitlines() if "jobs/distill.py" in line]
    assert len(stages) == 3  # demo's dmd and adversarial, and teacher
    for words in stages:
        args, _ = distill.parse(words[words.index("jobs/distill.py") + 1:])
        assert args.resume == "auto", shlex.join(words)
