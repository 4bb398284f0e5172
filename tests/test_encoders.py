"""Wan's context encoders on make_tiny_wan's random umT5 and CLIP: the prompt embedding and the
reference's image tokens equal what diffusers' Wan I2V pipeline computes, from a local folder and
from S3; a folder without them is named."""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    import make_tiny_wan

    folder = tmp_path_factory.mktemp("encoders") / "tiny-wan"
    make_tiny_wan.main(["--out", str(folder), "--i2v"])
    return folder


def _diffusers_pipeline(folder):
    from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler,
                           WanImageToVideoPipeline, WanTransformer3DModel)
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    return WanImageToVideoPipeline(
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(folder / "text_encoder"),
        vae=AutoencoderKLWan.from_pretrained(folder / "vae"),
        transformer=WanTransformer3DModel.from_pretrained(folder / "transformer"),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        image_encoder=CLIPVisionModel.from_pretrained(folder / "image_encoder"),
        image_processor=CLIPImageProcessor.from_pretrained(folder / "image_processor"))


def test_prompt_and_image_tokens_equal_diffusers_wan_pipeline(tiny_wan):
    from PIL import Image

    from onestep.encoders import ImageEncoder, embed_prompt

    pipe = _diffusers_pipeline(tiny_wan)
    prompt = "a  person is talking &amp; smiling"  # cleaned the same way: entities, spaces
    expected = pipe._get_t5_prompt_embeds(prompt, max_sequence_length=8, device="cpu")
    ours = embed_prompt(str(tiny_wan), prompt, 8)
    assert ours.shape == (1, 8, 32)
    assert (ours - expected).abs().max() < 1e-5
    assert ours[0, 6:].abs().max() == 0  # 6 words: the rest of the context is zero
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 40, 3), dtype=np.uint8)
    tokens = ImageEncoder(str(tiny_wan))(frames)
    assert tokens.shape == (2, 17, 32)  # (32 / 8)² patches + the class token
    for frame, ours_image in zip(frames, tokens):
        expected = pipe.encode_image(Image.fromarray(frame), device="cpu")[0]
        assert torch.equal(ours_image, expected)


def test_a_text_encoder_of_another_width_or_clip_without_image_attention_is_refused(
        tiny_wan, tmp_path, tiny_config):
    import make_tiny_wan

    from onestep.encoders import store_prompt
    from onestep.pretrained import PretrainedError, adopt_architecture

    cfg = tiny_config(**{"model.kind": "wan", "model.text_encoder": str(tiny_wan),
                         "model.text_dim": 64, "model.prompt_tokens": 4,
                         "run.root": str(tmp_path / "runs")})
    with pytest.raises(PretrainedError, match=r"32-wide embeddings, the model's text context "
                                              r"is 64 wide"):
        store_prompt(cfg)
    assert not (tmp_path / "runs").exists()  # nothing written
    make_tiny_wan.main(["--out", str(tmp_path / "t2v")])
    cfg = tiny_config(**{"model.kind": "wan", "model.pretrained": str(tmp_path / "t2v"),
                         "model.image_encoder": str(tiny_wan), "codec.kind": "wan_vae",
                         "codec.pretrained": str(tiny_wan), "codec.factor": 8,
                         "data.frames": 9, "data.motion_frames": 1})
    with pytest.raises(PretrainedError, match=r"a Wan without image attention .* "
                                              r"model.image_encoder=.* is set"):
        adopt_architecture(cfg)


def test_encoders_load_from_s3_and_a_folder_without_them_is_named(tiny_wan, tmp_path, bucket,
                                                                  monkeypatch):
    from onestep.encoders import ImageEncoder, embed_prompt
    from onestep.pretrained import PretrainedError
    from onestep.storage import resolve

    monkeypatch.setenv("ONESTEP_CACHE", str(tmp_path / "cache"))
    dest = resolve(f"s3://{bucket}/wan")
    for part in ("text_encoder", "tokenizer", "image_encoder", "image_processor"):
        for f in (tiny_wan / part).iterdir():
            dest.join(part, f.name).write_bytes(f.read_bytes())
    assert torch.equal(embed_prompt(dest.uri, "a person", 4), embed_prompt(str(tiny_wan),
                                                                          "a person", 4))
    frame = np.zeros((1, 32, 32, 3), np.uint8)
    assert torch.equal(ImageEncoder(dest.uri)(frame), ImageEncoder(str(tiny_wan))(frame))
    with pytest.raises(PretrainedError, match=rf"^{tmp_path}: no tokenizer_config.json \(nor "
                                              r"tokenizer/tokenizer_config.json\)"):
        embed_prompt(str(tmp_path), "a person", 4)
    release = tmp_path / "Wan2.1-I2V-14B-480P"  # the original release: umT5 in Wan's own format
    (release / "tokenizer").mkdir(parents=True)
    (release / "tokenizer" / "tokenizer_config.json").write_text("{}")
    (release / "config.json").write_text('{"_class_name": "WanModel"}')
    (release / "Wan2.1_VAE.pth").write_bytes(b"")
    with pytest.raises(PretrainedError, match="Wan's original release, whose umT5 and CLIP are "
                                              "in Wan's own format"):
        embed_prompt(str(release), "a person", 4)
    with pytest.raises(PretrainedError, match="Wan's original release"):
        ImageEncoder(str(release))
