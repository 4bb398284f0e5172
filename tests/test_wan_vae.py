"""Wan2.1's causal VAE as a codec: 4× time and 8× space, normalised latents, and decoding in
pieces with the causal cache carried across them equal to decoding at once. A tiny random
diffusers AutoencoderKLWan built here (no download)."""

import json

import pytest
import torch
from diffusers import AutoencoderKLWan

from onestep.model.wan_vae import WanVAECodec
from onestep.pretrained import PretrainedError, load_wan_vae

MEAN, STD = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]


def _vae(seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=MEAN,
                            latents_std=STD).eval()


def _video(frames: int = 17, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, 32, 32, generator=g) * 2 - 1


def test_latents_are_4x_shorter_8x_smaller_and_normalised_with_the_vaes_statistics():
    vae = _vae()
    codec = WanVAECodec(vae)
    video = _video()
    z = codec.encode(video)
    assert z.shape == (1, 4, 5, 4, 4) and codec.latent_frames(17) == 5
    raw = vae.encode(video).latent_dist.mode()
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1, 1)
    assert torch.allclose(z, (raw - mean) / std)
    assert torch.allclose(codec.decode(z), vae.decode(raw).sample, atol=1e-5)
    with pytest.raises(ValueError, match="16 frames: the Wan VAE encodes 1 \\+ 4k frames"):
        codec.encode(_video(16))


def test_decoding_in_pieces_carries_the_causal_cache_and_equals_decoding_at_once():
    codec = WanVAECodec(_vae())
    z = codec.encode(_video(25))  # 7 latent frames
    whole = codec.decode(z)
    stream = codec.stream()
    pieces = [stream.push(z[:, :, :3]), stream.push(z[:, :, 3:4]), stream.push(z[:, :, 4:])]
    assert [p.shape[2] for p in pieces] == [9, 4, 12]  # 1 + 4·2, then 4 per latent frame
    assert torch.equal(torch.cat(pieces, dim=2), whole)
    # Without the cache (each piece decoded on its own) the pieces would not join up.
    alone = codec.decode(z[:, :, 3:4])
    assert (alone[:, :, -1] - pieces[1][:, :, -1]).abs().max() > 1e-3


def test_vae_folder_loads_and_bad_folders_are_named(tmp_path):
    vae = _vae()
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    codec = load_wan_vae(str(tmp_path / "pipe"))  # a pipeline folder: its vae/
    video = _video(9)
    assert torch.equal(codec.encode(video), WanVAECodec(vae).encode(video))
    config = tmp_path / "pipe" / "vae" / "config.json"
    original = json.loads(config.read_text())
    config.write_text(json.dumps({**original, "_class_name": "AutoencoderKL"}))
    with pytest.raises(PretrainedError, match="a 'AutoencoderKL' config, expected "
                                              "'AutoencoderKLWan'"):
        load_wan_vae(str(tmp_path / "pipe"))
    config.write_text(json.dumps({**original, "base_dim": 16}))
    with pytest.raises(PretrainedError, match="shapes differ: decoder"):
        load_wan_vae(str(tmp_path / "pipe" / "vae"))
    with pytest.raises(PretrainedError, match="no config.json"):
        load_wan_vae(str(tmp_path / "nowhere"))


def test_original_wan_vae_pth_loads_safely_as_diffusers_does(tmp_path):
    """Wan2.1_VAE.pth as released (Wan's own names, a PyTorch file): read tensors-only, renamed
    by diffusers' converter, configured from its widths; refused by name if it holds anything
    else."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from original_layout import vae_to_original

    from onestep.pretrained import read_vae_config, vae_fingerprint

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16).eval()  # Wan2.1's layout at a tiny width
    original = vae_to_original(vae.state_dict())
    assert "decoder.upsamples.4.shortcut.weight" in original
    back = convert_wan_vae_to_diffusers(original)  # the inverse is exact
    assert set(back) == set(vae.state_dict())
    (tmp_path / "Wan2.1-T2V").mkdir()
    torch.save(original, tmp_path / "Wan2.1-T2V" / "Wan2.1_VAE.pth")
    video = _video(9)
    expected = WanVAECodec(vae).encode(video)
    for uri in (tmp_path / "Wan2.1-T2V", tmp_path / "Wan2.1-T2V" / "Wan2.1_VAE.pth"):
        codec = load_wan_vae(str(uri))
        assert torch.equal(codec.encode(video), expected)
        assert read_vae_config(str(uri))["z_dim"] == 16
    assert vae_fingerprint(str(tmp_path / "Wan2.1-T2V")).startswith("sha256:")

    import argparse  # any class: what an unsafe unpickle would construct

    torch.save({"encoder.conv1.weight": argparse.Namespace(a=1)}, tmp_path / "hostile.pth")
    with pytest.raises(PretrainedError, match="hostile.pth: not a file of tensors torch can load "
                                              "safely"):
        load_wan_vae(str(tmp_path / "hostile.pth"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedError, match="other.pth: no encoder.conv1.weight: not a Wan2.1 "
                                              "VAE"):
        load_wan_vae(str(tmp_path / "other.pth"))


def _tiny_wan_vae_config(tmp_path, **extra):
    from conftest import tiny_overrides
    from onestep.config import load_config

    if not (tmp_path / "vae").exists():
        _vae().save_pretrained(tmp_path / "vae")
    sets = {"codec.kind": "wan_vae", "codec.pretrained": str(tmp_path / "vae"), "codec.factor": 8,
            "data.frames": 9, "data.motion_frames": 1, "model.kind": "wan",
            "model.prompt_tokens": 4, "model.text_dim": 16, **extra}
    return load_config("tiny", tiny_overrides(**sets)).validate()


@pytest.mark.parametrize("codec", ["wan_vae", "space_to_depth"])
def test_generated_video_is_exactly_as_long_as_the_audio(tmp_path, codec):
    import numpy as np

    from onestep.generate import AvatarGenerator, Sampling
    from onestep.model import build_model

    extra = {} if codec == "wan_vae" else {"codec.kind": "space_to_depth", "codec.factor": 2,
                                           "data.frames": 8, "data.motion_frames": 2}
    cfg = _tiny_wan_vae_config(tmp_path, **extra)
    torch.manual_seed(0)
    gen = AvatarGenerator(build_model(cfg), cfg)
    encodes = []
    encode = gen.codec.encode
    gen.codec.encode = lambda x: encodes.append(x.shape[2]) or encode(x)
    image = np.full((32, 32, 3), 128, np.uint8)
    for frames in (1, 9, 10, 23):
        audio = np.zeros(frames * cfg.audio.sample_rate // cfg.synth.fps, np.float32)
        out, stats = gen.generate(image, audio, Sampling.from_config(cfg, steps=1))
        assert out.shape == (frames, 32, 32, 3) and stats.frames == frames
    # Chunks hand their motion frames on as latents: the only encode is each render's reference.
    assert encodes == [1, 1, 1, 1]
    gen.codec.encode = encode


def test_data_frames_must_be_whole_latent_frames(tmp_path):
    from onestep.config import ConfigError

    with pytest.raises(ConfigError, match="data.frames: expected 1 \\+ 4k frames for codec.kind "
                                          "wan_vae"):
        _tiny_wan_vae_config(tmp_path, **{"data.frames": 8})
    with pytest.raises(ConfigError, match="data.motion_frames: expected 0 or 1 \\+ 4k"):
        _tiny_wan_vae_config(tmp_path, **{"data.motion_frames": 2})
    with pytest.raises(ConfigError, match="codec.pretrained: expected a Wan VAE folder"):
        _tiny_wan_vae_config(tmp_path, **{"codec.pretrained": ""})


def test_wan_chain_from_latents_in_s3_to_a_one_step_mp4_with_the_audios_length(
        ray_cluster, bucket, tmp_path, monkeypatch, capsys):
    """The README's Wan walkthrough: make_tiny_wan's I2V folder as the codec, the pretrained
    DiT, the umT5 prompt encoder and the CLIP image encoder; SynthTalk clips in the S3 server
    encoded once (VAE latents, audio features, CLIP tokens of the references) into latent shards
    there; teacher → DMD → adversarial 2→1 as 2-worker ZeRO-3 jobs on those latents; then the
    1-step export's MP4."""
    import av
    import distill
    import encode
    import generate
    import make_sample
    import make_tiny_wan

    from conftest import tiny_overrides
    from onestep.config import load_config
    from onestep.media import decode_video
    from onestep.prepare import prepare_synthtalk
    from safetensors.torch import load

    from onestep.encoders import embed_prompt
    from onestep.storage import resolve

    monkeypatch.setenv("ONESTEP_CACHE", str(tmp_path / "cache"))
    folder = str(tmp_path / "tiny-wan")
    make_tiny_wan.main(["--out", folder, "--dim", "24", "--i2v"])
    wan = {"codec.kind": "wan_vae", "codec.pretrained": folder, "codec.factor": 8,
           "data.frames": 9, "data.motion_frames": 1, "model.kind": "wan",
           "model.prompt_tokens": 4, "model.image_encoder": folder,
           "run.root": f"s3://{bucket}/runs", "validation.every_clips": 0}
    clips, latent_uri = f"s3://{bucket}/clips", f"s3://{bucket}/latents"
    prepare_synthtalk(load_config("tiny", tiny_overrides(**wan)).synth, resolve(clips))

    def args(**extra):
        return [a for kv in tiny_overrides(**wan, **extra) for a in ("--set", kv)]

    encode.main(["--clips", clips, "--out", latent_uri, *args()])
    manifest = json.loads(resolve(latent_uri).join("manifest.json").read_bytes())
    assert manifest["image_encoder"].startswith("sha256:")
    train = {"data.uri": latent_uri}
    distill.main(["--stage", "teacher", *args(**train, **{
        "model.pretrained": folder, "model.text_encoder": folder, "run.name": "teacher",
        "model.prompt": "a person is talking"})])
    out = capsys.readouterr().out
    assert "# model: Wan from" in out and "CLIP image tokens" in out and "done: 8 clips" in out
    assert "# prompt: 'a person is talking', embedded by" in out
    runs = f"s3://{bucket}/runs"
    # The prompt's umT5 embedding is in the model, so in every export after it.
    teacher = load(resolve(f"{runs}/teacher/exports/teacher").join("model.safetensors")
                   .read_bytes())
    assert torch.equal(teacher["prompt"], embed_prompt(folder, "a person is talking", 4))
    distill.main(["--stage", "dmd", "--teacher", f"{runs}/teacher",
                  *args(**train, **{"run.name": "dmd"})])
    distill.main(["--stage", "adversarial", "--student", f"{runs}/dmd/exports/4step",
                  *args(**train, **{"run.name": "adv", "adversarial.phases": "[2, 1]",
                                    "adversarial.clips_per_phase": 8,
                                    "adversarial.warmup_steps": 1,
                                    "adversarial.disc_warmup_steps": 1})])
    out = capsys.readouterr().out
    assert f"export: {runs}/adv/exports/1step" in out

    make_sample.main(["--out-dir", str(tmp_path), "--set", "synth.clip_seconds=1.0"])
    generate.main(["--checkpoint", f"{runs}/adv/exports/1step", "--image",
                   str(tmp_path / "face.png"), "--audio", str(tmp_path / "speech.wav"),
                   "--out", str(tmp_path / "wan.mp4")])
    assert ", 1 NFE per chunk," in capsys.readouterr().out
    frames, fps = decode_video((tmp_path / "wan.mp4").read_bytes())
    assert len(frames) == round(1.0 * fps)  # the audio's length, not a whole number of chunks
    with av.open(str(tmp_path / "wan.mp4")) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
