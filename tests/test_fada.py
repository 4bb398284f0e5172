"""FADA (stage `fada`): the maths on hand-made tensors — PeRFlow's straight windows, the
ground-truth weight's regimes, guidance as an input — and the chain as a user runs it: the
shipped teacher distilled by a 2-worker ZeRO-3 job reading SynthTalk from a real S3 API server,
its export generating an MP4 at guidance scales set per request, one evaluation per step, then
taken to one step by TurboTalk's adversarial stage with its guidance input intact."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, tiny_overrides

from onestep.config import ConfigError, load_config
from onestep.distill.windows import gt_weight, per_sample_mse, solve, straight_flow, window_bounds
from onestep.flow import GuidedVelocity, add_noise, window_timesteps
from onestep.generate import Sampling
from onestep.model import build_model
from onestep.model.dit import Conditions
from onestep.model.guidance import eq9_coefficients
from onestep.shards import synthtalk_tier
from onestep.stages.base import without_guidance_input

TEACHER = ROOT / "reports" / "pretrained" / "teacher"


def _cond(b: int, c: int = 12, f: int = 4, side: int = 16, rows: int = 8) -> Conditions:
    g = torch.Generator().manual_seed(1)
    return Conditions(ref=torch.randn(b, c, side, side, generator=g),
                      audio=torch.randn(b, rows, 40, generator=g),
                      motion=torch.zeros(b, c, f, side, side),
                      motion_mask=torch.zeros(b, 1, f, side, side))


def test_the_window_line_through_the_forward_process_is_x_t_and_its_velocity():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 5, 5, generator=g), torch.randn(3, 4, 2, 5, 5, generator=g)
    t_start, t_end = window_bounds(torch.tensor([0, 1, 3]), 4)
    assert t_start.tolist() == [1.0, 0.75, 0.25] and t_end.tolist() == [0.75, 0.5, 0.0]
    t = torch.tensor([0.8, 0.6, 0.1])
    z_t, v = straight_flow(add_noise(x0, eps, t_start), add_noise(x0, eps, t_end), t_start,
                           t_end, t)
    assert torch.allclose(z_t, add_noise(x0, eps, t), atol=1e-6)
    assert torch.allclose(v, eps - x0, atol=1e-5)


def test_the_teacher_solve_is_exact_on_a_straight_flow_and_the_student_target_then_its_velocity():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    t_start, t_end = torch.tensor([1.0, 0.5]), torch.tensor([0.75, 0.25])
    end = solve(lambda x, t: eps - x0, add_noise(x0, eps, t_start), t_start, t_end, steps=3)
    assert torch.allclose(end, add_noise(x0, eps, t_end), atol=1e-6)


def test_the_ground_truth_weight_rises_peaks_falls_and_dies():
    r = torch.tensor([0.0, 3.0, 15.0, 30.0, 65.0, 100.0, 400.0])
    args = dict(peak=0.25, rise=0.2, peak_ratio=30.0, dead_ratio=100.0)
    w = gt_weight(r, "adaptive", **args)
    assert w[0] == 0 and bool((w[:4].diff() > 0).all()) and w[3] == pytest.approx(0.25)
    assert w[4] == pytest.approx(0.125) and w[5] == 0 and w[6] == 0  # linear fall, then dead
    unlimited = gt_weight(r, "unlimited", **args)
    assert torch.equal(unlimited[:4], w[:4]) and bool((unlimited.diff() > 0).all())
    assert torch.equal(gt_weight(r, "fixed", **args), torch.full_like(r, 0.25))
    assert not gt_weight(r, "off", **args).any()
    err = per_sample_mse(torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    assert err.tolist() == [1.0, 4.0]


def test_window_timesteps_put_each_window_its_own_steps():
    t = window_timesteps([2, 1, 1, 2])
    assert t.tolist() == [1.0, 0.875, 0.75, 0.5, 0.25, 0.125, 0.0]
    cfg = load_config("tiny", ["sample.steps=6", "sample.window_steps=[2,1,1,2]",
                               "model.guidance_input=tokens"])
    own = Sampling.from_config(cfg)
    assert own.nfe == 6 and torch.equal(own.timesteps(), t)  # one evaluation per step
    assert Sampling.from_config(cfg, steps=2).window_steps == ()  # other counts: uniform
    with pytest.raises(ConfigError, match="sample.window_steps: expected empty, or step counts"):
        load_config("tiny", ["sample.steps=4", "sample.window_steps=[2,1,1,2]"])


@pytest.mark.parametrize("kind", ["scalar", "layer", "tokens"])
def test_a_student_starts_as_its_teacher_at_every_scale_and_runs_once_per_step(kind):
    cfg = load_config("tiny", tiny_overrides(**{"model.guidance_input": kind}))
    torch.manual_seed(0)
    teacher = build_model(without_guidance_input(cfg)).eval()
    for p in teacher.parameters():  # a trained-looking teacher: its zero-initialised head too
        p.data.normal_(0, 0.05)
    student = build_model(cfg).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert missing and not unexpected and all("guidance" in k for k in missing)
    x, t, cond = torch.randn(2, 12, 4, 16, 16), torch.tensor([0.9, 0.3]), _cond(2)
    with torch.no_grad():
        v_teacher = teacher(x, t, cond)
        guided = GuidedVelocity(student, cond, torch.tensor([1.0, 6.5]), 2.0, takes_guidance=True)
        assert torch.allclose(guided(x, t), v_teacher, atol=1e-5) and guided.nfe == 1
    with pytest.raises(ValueError, match="takes guidance scales as an input"):
        student(x, t, cond)


def test_the_guidance_input_learns_at_its_own_rate_also_after_a_resume():
    from types import SimpleNamespace

    from onestep.stages.fada import FADAStage
    from onestep.train.engine import lr_lambda, param_groups, reset_peak_lr

    cfg = load_config("tiny", tiny_overrides(**{
        "train.stage": "fada", "fada.teacher": "x", "model.guidance_input": "tokens",
        "fada.guidance_lr_scale": 10}))
    model = build_model(cfg)
    groups = param_groups(model, 1e-4, FADAStage(cfg).lr_scales("generator"))
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups[0]["lr_scale"] == 1.0  # the rate the loop logs is the first group's
    fast = next(g for g in groups if g["lr_scale"] == 10)
    assert fast["lr"] == pytest.approx(1e-3)
    assert sorted(names[id(p)] for p in fast["params"]) == sorted(
        n for n in names.values() if "guidance" in n)
    assert sum(len(g["params"]) for g in groups) == len(names)
    # A resume puts every group back at the configured peak × its own scale.
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    reset_peak_lr(SimpleNamespace(lr_scheduler=sched), 2e-4)
    assert sorted(sched.base_lrs) == pytest.approx([2e-4, 2e-3])


def test_per_sample_scales_are_eq9_for_each_sample_and_the_tokens_combine_as_it_does():
    torch.manual_seed(0)
    model = build_model(load_config("tiny", tiny_overrides())).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    x, t, cond = torch.randn(2, 12, 4, 16, 16), torch.tensor([0.9, 0.3]), _cond(2)
    with torch.no_grad():
        both = GuidedVelocity(model, cond, torch.tensor([1.5, 4.0]), torch.tensor([1.0, 2.0]))
        together = both(x, t)
        for i, (audio, ref) in enumerate([(1.5, 1.0), (4.0, 2.0)]):
            one = Conditions(cond.ref[i:i + 1], cond.audio[i:i + 1], cond.motion[i:i + 1],
                             cond.motion_mask[i:i + 1])
            alone = GuidedVelocity(model, one, audio, ref)(x[i:i + 1], t[i:i + 1])
            assert torch.allclose(together[i:i + 1], alone, atol=1e-5)
    c = eq9_coefficients(torch.tensor([[6.5, 2.0]]))
    v_none, v_ref, v_full = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(5.0)
    expected = v_none + 2.0 * (v_ref - v_none) + 6.5 * (v_full - v_ref)
    assert float(c[0] @ torch.stack([v_none, v_ref, v_full])) == pytest.approx(float(expected))


def test_synthtalk_tiers_and_fada_config_errors():
    assert synthtalk_tier({}) == "high" and synthtalk_tier({"blur": 1.0}) == "moderate"
    assert synthtalk_tier({"offset": 0.4}) == "low"
    assert synthtalk_tier({"blur": 1.0, "jitter": 1.0}) == "low"
    for override, message in [
        ("fada.steps_per_window=[2,2]", "fada.steps_per_window: expected fada.windows=4 step"),
        ("fada.cfg_mode=magic", "fada.cfg_mode: expected 'tokens', 'layer', 'scalar' or 'none'"),
        ("fada.gt_tiers=[great]", "fada.gt_tiers: expected a list of high, moderate, low"),
        ("fada.gt_dead_ratio=10", "fada.gt_peak_ratio: expected > 0 and below"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_config("tiny", [override])
    with pytest.raises(ConfigError, match="model.guidance_input: expected '', 'scalar', 'layer' "
                                          "or 'tokens'"):
        load_config("tiny", ["model.kind=wan", "model.guidance_input=token"])


def _scales_act(export: str, nfe: int) -> None:
    """The export costs `nfe` evaluations per chunk at any scales, and they change its video."""
    from onestep.checkpoint import load_generator
    from onestep.generate import AvatarGenerator

    model, cfg = load_generator(export)
    gen = AvatarGenerator(model, cfg)
    image = np.full((cfg.resolution, cfg.resolution, 3), 128, np.uint8)
    audio = np.sin(np.arange(8000) / 16000 * 2 * np.pi * 180).astype(np.float32)
    videos = []
    for audio_scale, ref_scale in ((1.0, 1.0), (6.5, 2.0)):
        sampling = Sampling.from_config(cfg, audio_scale=audio_scale, ref_scale=ref_scale)
        assert sampling.nfe == nfe
        videos.append(gen.generate(image, audio, sampling)[0])
    assert not np.array_equal(*videos)


@pytest.mark.integration
def test_teacher_fada_adversarial_chain_gives_1_step_generators_whose_scales_act(
        ray_cluster, bucket, tmp_path, capsys):
    import distill
    import generate
    import make_sample

    from onestep.checkpoint import latest_checkpoint
    from onestep.prepare import prepare_synthtalk
    from onestep.storage import resolve

    sets = tiny_overrides(**{
        "data.uri": f"s3://{bucket}/synthtalk", "run.root": f"s3://{bucket}/runs",
        "run.name": "fada", "fada.solver_steps": 2, "fada.gt_tiers": "[moderate,low]",
        "synth.degraded_fraction": 0.5})
    prepare_synthtalk(load_config("tiny", sets).synth, resolve(f"s3://{bucket}/synthtalk"))
    distill.main(["--stage", "fada", "--teacher", str(TEACHER)]
                 + [a for kv in sets for a in ("--set", kv)])
    out = capsys.readouterr().out
    assert "# student: 6 steps in 4 windows [2, 1, 1, 2], guidance as an input (tokens" in out
    run = f"s3://{bucket}/runs/fada"
    state = json.loads(resolve(latest_checkpoint(run)).join("state.json").read_bytes())
    assert state["stage"] == "fada" and state["step"] == 2 and state["world_size"] == 2
    export = f"{run}/exports/6step"
    saved = yaml.safe_load(resolve(export).join("config.yaml").read_bytes())
    assert saved["model"]["guidance_input"] == "tokens"
    assert saved["sample"]["window_steps"] == [2, 1, 1, 2] and saved["sample"]["steps"] == 6

    _scales_act(export, nfe=6)  # once per step at any scales, and the scales change the video

    # TurboTalk's adversarial stage from the FADA student: a 1-step generator that keeps the
    # guidance input, its discriminator's trunk the teacher FADA distilled.
    adv = tiny_overrides(**{
        "data.uri": f"s3://{bucket}/synthtalk", "run.root": f"s3://{bucket}/runs",
        "run.name": "fada-adv", "adversarial.phases": "[1]", "adversarial.clips_per_phase": 8,
        "adversarial.disc_warmup_steps": 1, "adversarial.warmup_steps": 1})
    distill.main(["--stage", "adversarial", "--student", export]
                 + [a for kv in adv for a in ("--set", kv)])
    out = capsys.readouterr().out
    assert f"# discriminator trunk (teacher): {TEACHER}" in out
    assert "# the student takes guidance scales (tokens): trained at audio [1.0, 4.0]" in out
    one_step = f"s3://{bucket}/runs/fada-adv/exports/1step"
    saved = yaml.safe_load(resolve(one_step).join("config.yaml").read_bytes())
    assert saved["model"]["guidance_input"] == "tokens" and saved["sample"]["steps"] == 1
    assert saved["sample"]["window_steps"] == [] and saved["sample"]["audio_scale"] == 2.0
    _scales_act(one_step, nfe=1)

    make_sample.main(["--out-dir", str(tmp_path), "--set", "synth.clip_seconds=1.2"])
    generate.main(["--checkpoint", export, "--image", str(tmp_path / "face.png"), "--audio",
                   str(tmp_path / "speech.wav"), "--audio-scale", "3", "--ref-scale", "1.5",
                   "--out", str(tmp_path / "fada.mp4")])
    assert "6 NFE per chunk" in capsys.readouterr().out
    assert (tmp_path / "fada.mp4").stat().st_size > 1000
