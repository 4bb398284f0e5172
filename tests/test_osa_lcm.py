"""OSA-LCM (stage `osa_lcm`): rolling sampling on a small network, and the chain as a user runs
it — the shipped teacher distilled by Adv-LCM, then the editing fine-tune, each a 2-worker
ZeRO-3 job reading SynthTalk from a real S3 API server — whose export generates a long video
with combined rolling sampling at one evaluation per chunk. The objectives' maths is tested in
test_consistency.py."""

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, tiny_overrides
from onestep.config import ConfigError, load_config
from onestep.generate import AvatarGenerator, Sampling
from onestep.model import build_model

TEACHER = ROOT / "reports" / "pretrained" / "teacher"


def _generator(**sets) -> AvatarGenerator:
    cfg = load_config("tiny", tiny_overrides(**{"sample.steps": 1, "sample.audio_scale": 1.0,
                                                **sets}))
    torch.manual_seed(0)
    model = build_model(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return AvatarGenerator(model, cfg)


def test_rolling_sampling_starts_like_plain_sampling_then_edits_the_previous_chunk():
    gen = _generator()
    image = np.full((32, 32, 3), 100, np.uint8)
    audio = np.sin(np.arange(40000) / 16000 * 2 * np.pi * 150).astype(np.float32)  # 2.5 s
    plain, _ = gen.generate(image, audio, Sampling.from_config(gen.cfg))
    rolling, stats = gen.generate(image, audio, Sampling.from_config(gen.cfg, rolling_noise=0.7))
    assert len(plain) == len(rolling) == 63 and stats.nfe_per_chunk == 1  # the audio's length
    chunk = gen.cfg.data.frames
    assert np.array_equal(plain[:chunk], rolling[:chunk])  # the first chunk: from Gaussian
    assert not np.array_equal(plain[chunk:], rolling[chunk:])  # later ones: from the past


def test_plain_rolling_sampling_starts_from_the_portrait():
    """`rolling_first_chunk=reference` (the paper's plain rolling sampling): the first chunk too
    is an edit, of the portrait held still; barely noised, the edit is the portrait itself."""
    gen = _generator()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    audio = np.zeros(16000, np.float32)
    combined, _ = gen.generate(image, audio, Sampling.from_config(gen.cfg, rolling_noise=0.7))
    plain, _ = gen.generate(image, audio, Sampling.from_config(
        gen.cfg, rolling_noise=0.7, rolling_first_chunk="reference"))
    chunk = gen.cfg.data.frames
    assert not np.array_equal(combined[:chunk], plain[:chunk])
    still, _ = gen.generate(image, audio, Sampling.from_config(
        gen.cfg, rolling_noise=1e-4, rolling_first_chunk="reference"))
    assert np.abs(still.astype(int) - image).max() <= 2  # every chunk: the portrait, rolled on
    with pytest.raises(ConfigError, match="sample.rolling_first_chunk: expected gaussian or "
                                          "reference"):
        load_config("tiny", ["sample.rolling_first_chunk=first"])
    with pytest.raises(ValueError, match=r"rolling noise must be in \[0, 1\] \(0: off\), got 2"):
        Sampling.from_config(gen.cfg, rolling_noise=2.0)  # a request's or command line's


def test_long_generations_are_measured_at_their_chunk_hand_overs():
    from onestep.evaluation.run import EvalClip, long_video_metrics
    from onestep.generate import chunk_starts

    gen = _generator()
    rng = np.random.default_rng(0)
    clips = [EvalClip(f"c{i}", rng.integers(0, 256, (32, 32, 3)).astype(np.uint8),
                      rng.normal(0, 0.1, 16000).astype(np.float32), np.zeros((25, 32, 32, 3)),
                      None) for i in range(2)]
    out = long_video_metrics(gen, Sampling.from_config(gen.cfg), clips, seconds=3.0, count=1)
    # 3 s of audio (the first clip's second, then the first again): 75 frames in chunks.
    frames, motion = gen.cfg.data.frames, gen.cfg.data.motion_frames
    assert out["long_chunks"] == len(chunk_starts(75, frames, motion)) > 3
    assert out["long_seconds"] == 3.0
    assert all(np.isfinite(out[k]) and out[k] > 0 for k in ("boundary_jump", "motion_jump"))


def test_the_avatar_discriminator_trains_its_heads_only_and_passes_gradients_through():
    from onestep.model.avatar_discriminator import AvatarDiscriminator
    from onestep.model.dit import Conditions

    cfg = load_config("tiny", tiny_overrides())
    torch.manual_seed(0)
    disc = AvatarDiscriminator(build_model(cfg), (0, 1), width=8)
    trained = {n.split(".")[0] for n, p in disc.named_parameters() if p.requires_grad}
    assert trained == {"heads"}  # the teacher's blocks stay as they are
    g = torch.Generator().manual_seed(0)
    cond = Conditions(ref=torch.randn(2, 12, 16, 16, generator=g),
                      audio=torch.randn(2, 16, 40, generator=g),
                      motion=torch.zeros(2, 12, 8, 16, 16), motion_mask=torch.zeros(2, 1, 8, 16, 16))
    x = torch.randn(2, 12, 8, 16, 16, generator=g, requires_grad=True)
    t = torch.tensor([0.1, 0.2])
    assert torch.equal(disc(x, t, cond), torch.zeros(2))  # zero-initialised heads: constant
    for head in disc.heads:
        torch.nn.init.normal_(head.out.weight, std=0.1)
    disc(x, t, cond).sum().backward()
    assert float(x.grad.abs().sum()) > 0  # the generator's adversarial loss reaches its sample
    with pytest.raises(ValueError, match=r"osa_lcm.disc_layers: expected block indices in "
                                         r"\[0, 2\), got \[2\]"):
        AvatarDiscriminator(build_model(cfg), (2,))


def test_eft_windows_without_a_past_start_from_the_reference_held_still():
    from onestep.stages.osa_lcm import OSALCMStage

    cfg = load_config("tiny", ["train.stage=osa_lcm", "osa_lcm.phase=eft", "osa_lcm.student=x",
                               "data.frames=14", "osa_lcm.eft_reference_prob=0.5"])
    stage = OSALCMStage(cfg)
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.rand(8, 3, 14, 32, 32, generator=g) * 2 - 1,
             "ref": torch.rand(8, 3, 32, 32, generator=g) * 2 - 1,
             "audio": torch.randn(8, 14 * 2, 8, generator=g),  # 2 features per frame
             "use_motion": torch.ones(8, dtype=torch.bool)}
    x_prev, x_next, cond = stage._fragments(batch, torch.Generator().manual_seed(1))
    x, _ = stage.prepare(batch)
    held = (x_prev == cond.ref[:, :, None]).flatten(1).all(1)  # the reference in every frame
    past = (x_prev == x[:, :, :8]).flatten(1).all(1)  # the window's first fragment
    assert 0 < int(held.sum()) < 8 and bool((held ^ past).all())
    assert torch.equal(x_next, x[:, :, 6:14])
    has_motion = cond.motion_mask.flatten(1).amax(1) > 0  # a start of video has no past frames
    assert torch.equal(has_motion, past)


def test_eft_windows_must_hold_two_chunks():
    from onestep.stages.osa_lcm import OSALCMStage

    with pytest.raises(ConfigError, match=r"data.frames: expected 2 × osa_lcm.fragment_frames "
                                          r"− data.motion_frames = 14 for phase eft"):
        OSALCMStage.resolve_sources(load_config("tiny", [
            "train.stage=osa_lcm", "osa_lcm.phase=eft", "osa_lcm.student=x"]))
    for phase in ("eft", "ft"):  # the editing fine-tune and its plain baseline
        with pytest.raises(ConfigError, match=f"osa_lcm.student: expected the Adv-LCM export "
                                              f"that phase {phase} fine-tunes"):
            load_config("tiny", ["train.stage=osa_lcm", f"osa_lcm.phase={phase}",
                                 "data.frames=14"])


@pytest.mark.integration
def test_teacher_adv_lcm_eft_chain_generates_a_long_video_rolling(ray_cluster, bucket, capsys):
    import distill

    from onestep.checkpoint import latest_checkpoint, load_generator
    from onestep.prepare import prepare_synthtalk
    from onestep.storage import resolve

    where = {"data.uri": f"s3://{bucket}/synthtalk", "run.root": f"s3://{bucket}/runs",
             "osa_lcm.discretisation_steps": 10, "osa_lcm.skip": 2,
             "osa_lcm.disc_noise_iterations": 2}
    sets = tiny_overrides(**where, **{"run.name": "adv-lcm"})
    prepare_synthtalk(load_config("tiny", sets).synth, resolve(f"s3://{bucket}/synthtalk"))
    distill.main(["--stage", "osa_lcm", "--teacher", str(TEACHER)]
                 + [a for kv in sets for a in ("--set", kv)])
    adv_lcm = f"s3://{bucket}/runs/adv-lcm/exports/1step"
    state = json.loads(resolve(latest_checkpoint(f"s3://{bucket}/runs/adv-lcm"))
                       .join("state.json").read_bytes())
    assert state["step"] == 2 and state["world_size"] == 2
    # The target network's average is part of the training state, beside the export's.
    ema = resolve(latest_checkpoint(f"s3://{bucket}/runs/adv-lcm")).join("ema").listdir()
    assert {"generator-rank0.safetensors", "target-rank1.safetensors"} <= set(ema)

    eft = tiny_overrides(**where, **{"run.name": "eft", "osa_lcm.phase": "eft",
                                     "data.frames": 14})
    distill.main(["--stage", "osa_lcm", "--teacher", str(TEACHER), "--set",
                  f"osa_lcm.student={adv_lcm}"] + [a for kv in eft for a in ("--set", kv)])
    out = capsys.readouterr().out
    assert f"# editing fine-tune of: {adv_lcm}" in out
    # It learns from the data alone: neither the teacher nor a target network is built.
    plan = out[out.rindex("memory plan per rank"):]
    assert "| generator |" in plan and "(frozen)" not in plan
    ema = resolve(latest_checkpoint(f"s3://{bucket}/runs/eft")).join("ema").listdir()
    assert not any(name.startswith("target") for name in ema)
    export = f"s3://{bucket}/runs/eft/exports/1step"
    saved = yaml.safe_load(resolve(export).join("config.yaml").read_bytes())
    assert saved["data"]["frames"] == 8 and saved["sample"]["rolling_noise"] == 0.7
    model, cfg = load_generator(export)
    frames, stats = AvatarGenerator(model, cfg).generate(
        np.full((cfg.resolution, cfg.resolution, 3), 128, np.uint8),
        np.zeros(16000 * 4, np.float32), Sampling.from_config(cfg))
    assert len(frames) == 100 and stats.nfe_per_chunk == 1 and stats.chunks == 17
