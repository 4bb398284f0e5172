"""The TurboTalk chain as a user runs it: a trained teacher (the committed one: training a
teacher is tests/test_teacher_pipeline.py's) → dmd → adversarial 4→3→2→1, each stage a 2-worker
DeepSpeed ZeRO-3 Ray Train job reading SynthTalk from a real S3 API server, each checkpointing,
resuming, and handing its result to the next; the 1-step export then generates an MP4 with one
network evaluation per chunk."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load

from conftest import ROOT, tiny_overrides
from onestep.checkpoint import checkpoint_names, latest_checkpoint
from onestep.prepare import prepare_synthtalk
from onestep.storage import resolve

TEACHER = ROOT / "reports" / "pretrained" / "teacher"


def _state(uri: str) -> dict:
    return json.loads(resolve(uri).join("state.json").read_bytes())


def _sets(**extra) -> list[str]:
    return [a for kv in tiny_overrides(**extra) for a in ("--set", kv)]


def _dtypes(uri: str) -> set:
    return {v.dtype for v in load(resolve(uri).join("model.safetensors").read_bytes()).values()}


def _config(uri: str) -> dict:
    return yaml.safe_load(resolve(uri).join("config.yaml").read_bytes())


def test_teacher_dmd_adversarial_chain(ray_cluster, bucket, tiny_config, tmp_path, capsys):
    import distill
    import generate
    import make_sample

    where = {"data.uri": f"s3://{bucket}/synthtalk", "run.root": f"s3://{bucket}/runs"}
    prepare_synthtalk(tiny_config(**where).synth, resolve(where["data.uri"]))

    # DMD: generator and critic trained, teacher frozen; every network sharded over 2 ranks.
    dmd = _sets(**where, **{"run.name": "dmd", "dmd.critic_steps": 2})
    distill.main(["--stage", "dmd", "--teacher", str(TEACHER)] + dmd)
    out = capsys.readouterr().out
    assert f"# teacher: {TEACHER}" in out
    dmd_run = f"s3://{bucket}/runs/dmd"
    first = _state(latest_checkpoint(dmd_run))
    assert first["stage"] == "dmd" and first["step"] == 2
    assert set(resolve(latest_checkpoint(dmd_run)).join("engines").listdir()) == {
        "generator", "fake_score"}  # the frozen teacher is rebuilt from its pinned checkpoint
    distill.main(["--stage", "dmd", "--resume"] + dmd + ["--set", "train.total_clips=16"])
    assert _state(latest_checkpoint(dmd_run))["resumed_at_steps"] == [2]
    export = f"{dmd_run}/exports/4step"
    assert _config(export)["sample"] == {**_config(export)["sample"], "steps": 4,
                                         "audio_scale": 1.0, "ref_scale": 1.0}
    student = dmd_run  # a run folder: its latest checkpoint is pinned

    # Adversarial: first one phase (4→3), then extended with --resume to 3→2→1. Each phase
    # opens with a discriminator-only step, which the generator's engine sits out on every rank.
    adv_settings = {"adversarial.clips_per_phase": 8, "adversarial.warmup_steps": 1,
                    "adversarial.disc_warmup_steps": 1}
    adv = _sets(**where, **adv_settings, **{"run.name": "adv", "train.export_dtype": "bfloat16"})
    distill.main(["--stage", "adversarial", "--student", student, "--set",
                  "adversarial.phases=[3]"] + adv)
    out = capsys.readouterr().out
    assert f"# student (4 steps): {latest_checkpoint(dmd_run)}" in out
    assert f"# discriminator trunk (teacher): {TEACHER}" in out
    adv_run = f"s3://{bucket}/runs/adv"
    assert _config(f"{adv_run}/exports/3step")["sample"]["steps"] == 3
    distill.main(["--stage", "adversarial", "--student", student, "--resume", "--set",
                  "adversarial.phases=[3, 2, 1]"] + adv)
    out = capsys.readouterr().out
    for steps in (3, 2, 1):
        assert f"export: {adv_run}/exports/{steps}step" in out
        assert _config(f"{adv_run}/exports/{steps}step")["sample"]["steps"] == steps
    state = _state(latest_checkpoint(adv_run))
    assert state["stage"] == "adversarial" and state["resumed_at_steps"] == [2]
    # Published in bf16 (half the bytes), while the checkpoint keeps the fp32 EMA to resume from.
    assert _dtypes(f"{adv_run}/exports/1step") == {torch.bfloat16}
    assert _dtypes(latest_checkpoint(adv_run)) == {torch.float32}
    assert state["step"] == 6 and state["world_size"] == 2

    # A branch: a new run continues `adv` from its 2-step checkpoint (the end of phase 2) with
    # another R1/R2 weight and a longer 1-step phase; the sources stay pinned, `adv` stays as is.
    names = checkpoint_names(resolve(adv_run))
    two_step = next(f"{adv_run}/{n}" for n in names if _state(f"{adv_run}/{n}")["step"] == 4)
    branch = ["--stage", "adversarial", "--set", "adversarial.phases=[3, 2, 1]"] + _sets(
        **where, **adv_settings, **{"run.name": "adv-branch", "adversarial.reg_weight": 3,
                                    "adversarial.last_phase_clips": 12})
    with pytest.raises(SystemExit, match="not a training checkpoint"):
        distill.main(branch + ["--branch-from", f"{adv_run}/exports/2step"])
    with pytest.raises(SystemExit, match="a checkpoint of stage 'dmd', not 'adversarial'"):
        distill.main(branch + ["--branch-from", dmd_run])
    distill.main(branch + ["--branch-from", two_step])
    out = capsys.readouterr().out
    assert f"# branch from: {two_step}" in out and "# student (4 steps)" in out
    branch_run = f"s3://{bucket}/runs/adv-branch"
    state = _state(latest_checkpoint(branch_run))
    assert state["resumed_at_steps"] == [2, 4]  # adv's history, then the branch point
    assert state["step"] == 7  # 8 + 8 + 12 clips
    assert _config(f"{branch_run}/exports/1step")["adversarial"]["reg_weight"] == 3
    assert checkpoint_names(resolve(adv_run)) == names

    make_sample.main(["--out-dir", str(tmp_path), "--set", "synth.clip_seconds=1.2"])
    generate.main(["--checkpoint", f"{adv_run}/exports/1step", "--image",
                   str(tmp_path / "face.png"), "--audio", str(tmp_path / "speech.wav"),
                   "--out", str(tmp_path / "one.mp4")])
    out = capsys.readouterr().out
    assert "1 NFE per chunk" in out and (tmp_path / "one.mp4").stat().st_size > 1000


def test_stage_without_its_source_checkpoint_says_which_flag(ray_cluster, tmp_path):
    import distill

    with pytest.raises(SystemExit, match="dmd.teacher: required"):
        distill.main(["--stage", "dmd", "--set", f"run.root={tmp_path}"])
    with pytest.raises(SystemExit, match="adversarial.student: .*no checkpoint"):
        distill.main(["--stage", "adversarial", "--student", str(tmp_path / "nothing"),
                      "--set", f"run.root={tmp_path}"])


def test_workers_get_absolute_local_paths(tmp_path, monkeypatch):
    """Ray runs workers in its own directory: relative paths typed by the user (the README's
    `runs`, `data/synthtalk`) must reach them resolved where the user typed them."""
    from onestep.config import load_config
    from onestep.train.ray_job import worker_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", ["train.stage=dmd", "run.root=runs", "data.uri=data/synthtalk",
                               "dmd.teacher=runs/teacher-tiny/checkpoint_1"])
    out = worker_config(cfg)
    assert out.run.root == str(tmp_path / "runs")
    assert out.data.uri == str(tmp_path / "data" / "synthtalk")
    assert out.dmd.teacher == str(tmp_path / "runs" / "teacher-tiny" / "checkpoint_1")
    wan = worker_config(load_config("tiny", ["model.kind=wan", "model.image_encoder=models/wan",
                                             "model.pretrained=models/wan.safetensors"]))
    assert wan.model.image_encoder == str(tmp_path / "models" / "wan")  # opened by the workers
    assert wan.model.pretrained == str(tmp_path / "models" / "wan.safetensors")
    assert wan.model.text_encoder == ""  # unused stays unused
    s3 = load_config("tiny", ["run.root=s3://bucket/runs", "data.uri=s3://bucket/data"])
    assert worker_config(s3).run.root == "s3://bucket/runs"
