"""onestep's Wan DiT against diffusers' WanTransformer3DModel: same weights, same velocity; and
the way back to diffusers' layout. Tiny random models built here (no download)."""

import json

import boto3
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from onestep.model.dit import Conditions
from onestep.pretrained import INDEX, WEIGHTS, PretrainedError, load_wan, save_diffusers

AUDIO = dict(audio_feature_dim=10, audio_per_frame=4, audio_context=1, audio_tokens=2,
             audio_dim=16, prompt_tokens=512)
TEXT_TOKENS = 512  # diffusers' Wan I2V attention splits image from text tokens at 512


def _diffusers_wan(i2v: bool, seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    kw = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
              in_channels=36 if i2v else 16, out_channels=16, text_dim=32, freq_dim=256,
              ffn_dim=40, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
              rope_max_seq_len=32)
    if i2v:
        kw.update(image_dim=8, added_kv_proj_dim=24)
    return WanTransformer3DModel(**kw).eval()


def _inputs(channels: int, i2v: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, 3, 8, 8, generator=g)
    t = torch.tensor([0.3, 0.9])
    text = torch.randn(2, TEXT_TOKENS, 32, generator=g)
    image = torch.randn(2, 5, 8, generator=g) if i2v else None
    audio = torch.randn(2, 3 * AUDIO["audio_per_frame"], AUDIO["audio_feature_dim"], generator=g)
    return x, t, text, image, audio


def _i2v_batch() -> tuple[torch.Tensor, Conditions]:
    """A noisy latent and the conditions of an I2V chunk (reference, audio, CLIP tokens), no
    motion frames."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 8, 8, generator=g)
    cond = Conditions(ref=torch.randn(2, 16, 8, 8, generator=g),
                      audio=torch.randn(2, 12, 10, generator=g),
                      motion=torch.zeros(2, 16, 3, 8, 8), motion_mask=torch.zeros(2, 1, 3, 8, 8),
                      image=torch.randn(2, 5, 8, generator=g))
    return x, cond


def _ours(model, x, t, text, image, audio):
    with torch.no_grad():
        return model.wan_forward(x, t, model.audio_adapter(audio), image=image, prompt=text)


def _theirs(ref, x, t, text, image):
    with torch.no_grad():
        return ref(x, t * 1000, text, encoder_hidden_states_image=image, return_dict=False)[0]


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_converted_wan_gives_diffusers_velocity_with_audio_present(tmp_path, i2v):
    ref = _diffusers_wan(i2v)
    ref.save_pretrained(tmp_path / "wan")
    model = load_wan(str(tmp_path / "wan"), AUDIO, i2v=i2v).eval()
    x, t, text, image, audio = _inputs(ref.config.in_channels, i2v)
    expected = _theirs(ref, x, t, text, image)
    got = _ours(model, x, t, text, image, audio)
    assert expected.abs().mean() > 0.1  # a real output, not two zeros
    assert (got - expected).abs().max() <= 1e-5
    # The audio branch is wired: once its gate opens, the velocity follows the audio.
    with torch.no_grad():
        for blk in model.blocks:
            blk.audio_gate.bias.fill_(0.5)
    assert (_ours(model, x, t, text, image, audio) - expected).abs().max() > 1e-2


def test_t2v_checkpoint_loads_into_the_i2v_layout_unchanged(tmp_path):
    ref = _diffusers_wan(i2v=False)
    ref.save_pretrained(tmp_path / "wan")
    model = load_wan(str(tmp_path / "wan"), AUDIO, i2v=True).eval()
    assert model.i2v and model.patch_embedding.weight.shape[1] == 36
    x, t, text, _, audio = _inputs(16, i2v=False)
    condition = torch.randn(2, 20, 3, 8, 8)  # mask + condition latent: zero weights so far
    got = _ours(model, torch.cat([x, condition], 1), t, text, None, audio)
    assert (got - _theirs(ref, x, t, text, None)).abs().max() <= 1e-5


def test_round_trip_to_diffusers_and_back(tmp_path):
    model = load_wan(_saved(tmp_path, i2v=True), AUDIO).eval()
    with torch.no_grad():  # a trained model's audio modules differ from a fresh one's
        for blk in model.blocks:
            blk.audio_gate.weight.normal_()
        model.prompt.normal_()
    save_diffusers(model, AUDIO, tmp_path / "exported")
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors", "onestep_modules.safetensors"]
    # diffusers' own loader reads it, and computes what onestep's Wan part computes.
    theirs = WanTransformer3DModel.from_pretrained(tmp_path / "exported").eval()
    x, t, text, image, audio = _inputs(36, i2v=True)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for blk in model.blocks:
            blk.audio_gate.weight.zero_()
    assert (_theirs(theirs, x, t, text, image) - _ours(model, x, t, text, image, audio)
            ).abs().max() <= 1e-5
    back = load_wan(str(tmp_path / "exported"), {})  # audio arguments from the side file
    assert set(back.state_dict()) == set(original)
    assert all(torch.equal(v, original[k]) for k, v in back.state_dict().items())
    with pytest.raises(PretrainedError, match="already exists"):
        save_diffusers(model, AUDIO, tmp_path / "exported")


@pytest.mark.parametrize("kind", ["scalar", "layer", "tokens"])
def test_a_wan_fada_student_takes_guidance_scales_and_starts_as_its_teacher(tmp_path, kind):
    """FADA §3.3 on Wan: the teacher's weights load into a student with a guidance input that
    adds nothing at first; once trained, the scales change its velocity; diffusers' layout
    keeps it (its modules in the side file) and the error without scales names the input."""
    from onestep.model.wan import WanDiT

    teacher = load_wan(_saved(tmp_path, i2v=True), AUDIO).eval()
    student = WanDiT(teacher.arch, guidance_input=kind, **AUDIO).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all("guidance" in k for k in missing)
    x, cond = _i2v_batch()
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        for a, b in zip(teacher.blocks, student.blocks):  # trained audio, equal in both
            b.audio_gate.weight.copy_(a.audio_gate.weight.normal_())
        plain = teacher(x, t, cond)
        at = lambda a, r: student(x, t, Conditions(  # noqa: E731
            **{**vars(cond), "guidance": torch.tensor([[a, r], [a, r]])}))
        assert (at(2.0, 1.0) - plain).abs().max() <= 1e-5  # adds nothing yet
        for name, p in student.named_parameters():  # as if trained
            if "guidance" in name:
                p.normal_(0, 0.2)
        assert (at(2.0, 1.0) - at(5.0, 1.5)).abs().max() > 1e-3
    with pytest.raises(ValueError, match=f"model.guidance_input={kind}\\): sample it with "
                                         "audio and reference scales"):
        student(x, t, cond)
    save_diffusers(student, AUDIO, tmp_path / "student")
    back = load_wan(str(tmp_path / "student"), {})
    assert back.guidance is not None and back.guidance.kind == kind
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in back.state_dict().items())


def test_original_release_folder_and_single_file_load_as_diffusers_does(tmp_path):
    """Wan's own release (a WanModel config.json, its own parameter names) and a single
    original-layout .safetensors (no config: architecture from shapes, heads of 128) give the
    same velocity as diffusers' model they were made from."""
    from original_layout import dit_to_original

    from onestep.original_wan import transformer_to_diffusers
    from onestep.pretrained import read_pretrained_arch

    ref = _diffusers_wan(i2v=False)
    original = dit_to_original(ref.state_dict())
    assert "head.modulation" in original and "blocks.0.self_attn.q.weight" in original
    back = transformer_to_diffusers(original)  # the inverse is exact: diffusers maps it back
    assert set(back) == set(ref.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())
    folder = tmp_path / "Wan2.1-T2V"
    folder.mkdir()
    save_file(original, str(folder / WEIGHTS))
    c = ref.config
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": "t2v", "dim": 24, "num_heads": 2,
        "in_dim": 16, "out_dim": 16, "ffn_dim": c.ffn_dim, "freq_dim": 256, "text_dim": 32,
        "num_layers": 2, "eps": 1e-6, "text_len": 512}))
    model = load_wan(str(folder), AUDIO, i2v=False).eval()
    x, t, text, _, audio = _inputs(16, i2v=False)
    assert (_ours(model, x, t, text, None, audio) - _theirs(ref, x, t, text, None)).abs().max() \
        <= 1e-5

    # One I2V file in the ComfyUI style (model.diffusion_model. prefix), 128-wide heads.
    torch.manual_seed(3)
    i2v = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2,
                                attention_head_dim=128, in_channels=36, out_channels=16,
                                text_dim=32, ffn_dim=40, num_layers=2, image_dim=8,
                                added_kv_proj_dim=256).eval()
    single = tmp_path / "wan2.1_i2v.safetensors"
    save_file(dit_to_original(i2v.state_dict(), "model.diffusion_model."), str(single))
    arch = read_pretrained_arch(str(single))
    assert (arch.num_attention_heads, arch.attention_head_dim, arch.in_channels, arch.image_dim,
            arch.ffn_dim, arch.num_layers, arch.text_dim) == (2, 128, 36, 8, 40, 2, 32)
    model = load_wan(str(single), AUDIO).eval()
    x, t, text, image, audio = _inputs(36, i2v=True)
    assert (_ours(model, x, t, text, image, audio) - _theirs(i2v, x, t, text, image)
            ).abs().max() <= 1e-5


def test_bad_original_checkpoints_are_named(tmp_path):
    from original_layout import dit_to_original

    ref = _diffusers_wan(i2v=False)
    save_file(ref.state_dict(), str(tmp_path / "diffusers.safetensors"))
    with pytest.raises(PretrainedError, match="not in Wan's original layout .* pass its folder "
                                              "with config.json"):
        load_wan(str(tmp_path / "diffusers.safetensors"), AUDIO)
    save_file(dit_to_original(ref.state_dict()), str(tmp_path / "narrow.safetensors"))
    with pytest.raises(PretrainedError, match="width 24 is not a multiple of Wan2.1's 128-wide "
                                              "heads; put its WanModel config.json beside it"):
        load_wan(str(tmp_path / "narrow.safetensors"), AUDIO)
    with pytest.raises(PretrainedError, match="missing.safetensors: no such file"):
        load_wan(str(tmp_path / "missing.safetensors"), AUDIO)
    (tmp_path / "wan").mkdir()
    (tmp_path / "wan" / "config.json").write_text(json.dumps({"_class_name": "WanModel",
                                                             "dim": 24, "num_heads": 2}))
    with pytest.raises(PretrainedError, match="config.json: no 'in_dim': a WanModel config has"):
        load_wan(str(tmp_path / "wan"), AUDIO)
    (tmp_path / "wan" / "config.json").write_text(json.dumps({"_class_name": "WanModel",
                                                             "model_type": "flf2v"}))
    with pytest.raises(PretrainedError, match="model_type 'flf2v': onestep supports"):
        load_wan(str(tmp_path / "wan"), AUDIO)


def test_conditions_drive_the_i2v_input_reference_motion_and_image():
    from onestep.model.wan import WanArch, WanDiT

    arch = WanArch(num_attention_heads=2, attention_head_dim=12, in_channels=36, text_dim=32,
                   ffn_dim=40, num_layers=1, image_dim=8, added_kv_proj_dim=24)
    model = WanDiT(arch, **{**AUDIO, "prompt_tokens": 4}).eval()
    x, cond = _i2v_batch()
    inp = model._inputs(x, cond)
    # No motion: the reference is the first latent frame's condition, as Wan I2V's first frame.
    assert torch.equal(inp[:, 20:, 0], cond.ref) and (inp[:, 16:20, 0] == 1).all()
    assert (inp[:, 16:, 1:] == 0).all()
    cond.motion[:, :, :2], cond.motion_mask[:, :, :2] = 1.5, 1.0
    inp = model._inputs(x, cond)  # motion frames take the first frames' place
    assert (inp[:, 20:, :2] == 1.5).all() and (inp[:, 16:20, :2] == 1).all()
    with torch.no_grad():
        v = model(x, torch.tensor([0.5, 0.5]), cond)
        dropped = model(x, torch.tensor([0.5, 0.5]), Conditions(
            cond.ref, cond.audio, torch.zeros_like(cond.motion),
            torch.zeros_like(cond.motion_mask), drop_ref=torch.tensor([True, False]),
            image=cond.image))
    assert v.shape == x.shape
    assert (dropped[1] - v[1]).abs().max() > 0  # sample 1 lost its motion frames
    assert (dropped[0] - v[0]).abs().max() > 0


def _saved(tmp_path, i2v: bool = False) -> str:
    _diffusers_wan(i2v).save_pretrained(tmp_path / "wan")
    return str(tmp_path / "wan")


def test_bad_checkpoints_are_named(tmp_path):
    folder = tmp_path / "wan"
    with pytest.raises(PretrainedError, match="no config.json .*diffusers"):
        load_wan(str(folder), AUDIO)
    _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(PretrainedError, match="config.json: a 'UNet2DModel' config, expected "
                                              "'WanTransformer3DModel'"):
        load_wan(str(folder), AUDIO)
    (folder / "config.json").write_text(json.dumps({**config, "ffn_dim": 48}))
    with pytest.raises(PretrainedError, match=r"shapes differ: blocks\.0\.ffn\.net\.0\.proj\.bias "
                                              r"is \(40,\), the model has \(48,\)"):
        load_wan(str(folder), AUDIO)
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(str(folder / WEIGHTS))
    del state["blocks.1.attn1.to_q.weight"]
    save_file({**state, "extra.weight": torch.zeros(1)}, str(folder / WEIGHTS))
    with pytest.raises(PretrainedError, match=r"keys missing: blocks\.1\.attn1\.to_q\.weight"):
        load_wan(str(folder), AUDIO)
    (folder / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(PretrainedError, match="model.safetensors: not a readable safetensors"):
        load_wan(str(folder), AUDIO)
    (folder / WEIGHTS).unlink()
    (folder / INDEX).write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors"}}))
    with pytest.raises(PretrainedError, match="shard shard-1.safetensors is missing"):
        load_wan(str(folder), AUDIO)


def test_sharded_pipeline_folder_loads_from_s3_through_the_cache(tmp_path, bucket, s3_endpoint,
                                                                 monkeypatch):
    monkeypatch.setenv("ONESTEP_CACHE", str(tmp_path / "cache"))
    ref = _diffusers_wan(i2v=False)
    ref.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="20KB")
    assert (tmp_path / "pipe" / "transformer" / INDEX).exists()  # sharded, as large models are
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for f in (tmp_path / "pipe").rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), bucket, f"wan/{f.relative_to(tmp_path / 'pipe')}")
    model = load_wan(f"s3://{bucket}/wan", AUDIO, i2v=False).eval()
    x, t, text, _, audio = _inputs(16, i2v=False)
    assert (_ours(model, x, t, text, None, audio) - _theirs(ref, x, t, text, None)).abs().max() \
        <= 1e-5
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached) > 1
    # Another checkpoint uploaded under the same names (same sizes): fetched again, not served
    # stale from the cache.
    other = _diffusers_wan(i2v=False, seed=5)
    other.save_pretrained(tmp_path / "other", max_shard_size="20KB")
    for f in (tmp_path / "other").iterdir():
        s3.upload_file(str(f), bucket, f"wan/transformer/{f.name}")
    model = load_wan(f"s3://{bucket}/wan", AUDIO, i2v=False).eval()
    assert (_ours(model, x, t, text, None, audio) - _theirs(other, x, t, text, None)).abs().max() \
        <= 1e-5
    s3.delete_object(Bucket=bucket, Key="wan/transformer/" + cached[0])  # the cache is not
    with pytest.raises(PretrainedError, match=f"shard {cached[0]} is missing"):  # trusted blindly
        load_wan(f"s3://{bucket}/wan", AUDIO, i2v=False)


def test_discriminator_on_a_wan_trunk_drops_the_velocity_head():
    from onestep.model import Discriminator
    from onestep.model.wan import WanArch, WanDiT

    arch = WanArch(num_attention_heads=2, attention_head_dim=12, in_channels=36, text_dim=32,
                   ffn_dim=40, num_layers=1)
    disc = Discriminator(WanDiT(arch, **{**AUDIO, "prompt_tokens": 4}))
    names = [n for n, _ in disc.named_parameters()]
    assert not any(n.startswith(("trunk.proj_out", "trunk.scale_shift_table")) for n in names)
    cond = Conditions(ref=torch.randn(2, 16, 8, 8), audio=torch.randn(2, 12, 10),
                      motion=torch.zeros(2, 16, 3, 8, 8), motion_mask=torch.zeros(2, 1, 3, 8, 8))
    assert disc(torch.randn(2, 16, 3, 8, 8), torch.tensor([0.2, 0.7]), cond).shape == (2,)


def test_wan_teacher_fine_tunes_diffusers_weights_as_a_ray_job(ray_cluster, tmp_path, capsys):
    """`--set model.kind=wan --set model.pretrained=<diffusers folder>`: the architecture comes
    from its config.json, 2 ZeRO-3 workers start from its weights, the export generates."""
    import distill
    import generate
    import make_sample

    from conftest import tiny_overrides
    from onestep.checkpoint import read_config
    from onestep.config import load_config
    from onestep.prepare import prepare_synthtalk
    from onestep.storage import resolve

    torch.manual_seed(0)  # a T2V Wan for the tiny pixel codec's 12 latent channels
    pretrained = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2,
                                       attention_head_dim=12, in_channels=12, out_channels=12,
                                       text_dim=16, ffn_dim=40, num_layers=2)
    pretrained.save_pretrained(tmp_path / "wan")
    sets = tiny_overrides(**{"data.uri": str(tmp_path / "data"), "run.root": str(tmp_path / "runs"),
                             "run.name": "wan", "model.kind": "wan",
                             "model.pretrained": str(tmp_path / "wan"), "model.prompt_tokens": 4,
                             "validation.every_clips": 0})
    prepare_synthtalk(load_config("tiny", sets).synth, resolve(str(tmp_path / "data")))
    distill.main(["--stage", "teacher", *(a for kv in sets for a in ("--set", kv))])
    out = capsys.readouterr().out
    assert f"# model: Wan from {tmp_path / 'wan'} (width 24, 2 blocks, 2 heads)" in out
    export = tmp_path / "runs" / "wan" / "exports" / "teacher"
    saved = read_config(str(export)).model
    assert (saved.kind, saved.dim, saved.depth, saved.ffn_dim, saved.text_dim) == (
        "wan", 24, 2, 40, 16)
    # Two small steps from the pretrained weights: the export (an EMA) is still close to them,
    # where a fresh initialisation would be nowhere near.
    weights = load_file(str(export / "model.safetensors"))
    for key, value in pretrained.state_dict().items():
        if key != "patch_embedding.weight":  # widened to the I2V input
            assert (weights[key] - value).abs().max() < 0.01, key
    make_sample.main(["--out-dir", str(tmp_path), "--set", "synth.clip_seconds=1.2"])
    generate.main(["--checkpoint", str(export), "--image", str(tmp_path / "face.png"), "--audio",
                   str(tmp_path / "speech.wav"), "--out", str(tmp_path / "wan.mp4")])
    assert (tmp_path / "wan.mp4").stat().st_size > 1000

    # FADA from that Wan teacher: the student takes the guidance scales through its own layer.
    fada = [f"{k}={v}" for k, v in (kv.split("=", 1) for kv in sets) if k != "run.name"]
    distill.main(["--stage", "fada", "--teacher", str(export), "--set", "run.name=wan-fada",
                  "--set", "fada.solver_steps=1", *(a for kv in fada for a in ("--set", kv))])
    student = tmp_path / "runs" / "wan-fada" / "exports" / "6step"
    assert read_config(str(student)).model.guidance_input == "tokens"
    learnt = load_file(str(student / "model.safetensors"))
    assert learnt["blocks.0.guidance_attn.out.weight"].abs().max() > 0  # it trained from zero

    # OSA-LCM from it: the avatar discriminator's heads read the Wan teacher's blocks.
    distill.main(["--stage", "osa_lcm", "--teacher", str(export), "--set", "run.name=wan-osa",
                  "--set", "osa_lcm.disc_layers=[0, 1]", "--set", "osa_lcm.discretisation_steps=4",
                  "--set", "osa_lcm.skip=1", *(a for kv in fada for a in ("--set", kv))])
    consistency = tmp_path / "runs" / "wan-osa" / "exports" / "1step"
    assert read_config(str(consistency)).model.kind == "wan"


def test_avatar_discriminator_reads_a_wan_teachers_blocks():
    """OSA-LCM's discriminator on a Wan teacher: the tokens it reads after the last block are the
    trunk's own, only its heads train, and its logits reach the generator's sample."""
    from onestep.model.avatar_discriminator import AvatarDiscriminator
    from onestep.model.wan import WanArch, WanDiT

    arch = WanArch(num_attention_heads=2, attention_head_dim=12, in_channels=36, text_dim=32,
                   ffn_dim=40, num_layers=2, image_dim=8, added_kv_proj_dim=24)
    torch.manual_seed(0)
    teacher = WanDiT(arch, **{**AUDIO, "prompt_tokens": 4}).eval()
    x, cond = _i2v_batch()
    t = torch.tensor([0.1, 0.2])
    with torch.no_grad():
        last, *_ = teacher.features(x, t, cond)
        (kept,), _, grid = teacher.block_outputs(x, t, cond, (1,))
    assert torch.equal(kept, last) and grid == (3, 4, 4)

    disc = AvatarDiscriminator(teacher, (0, 1), width=8)
    assert {n.split(".")[0] for n, p in disc.named_parameters() if p.requires_grad} == {"heads"}
    x.requires_grad_(True)
    assert torch.equal(disc(x, t, cond), torch.zeros(2))  # zero-initialised heads
    for head in disc.heads:
        torch.nn.init.normal_(head.out.weight, std=0.1)
    disc(x, t, cond).sum().backward()
    assert float(x.grad.abs().sum()) > 0
