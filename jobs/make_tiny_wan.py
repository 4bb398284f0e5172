"""Write a random Wan2.1 pipeline folder in diffusers' format, so the Wan path runs without a
download: `vae/` (AutoencoderKLWan), `transformer/` (WanTransformer3DModel: text-to-video layout,
which onestep widens to image-to-video when it loads it; with `--i2v`, I2V-14B's layout with CLIP
image attention), `text_encoder/` + `tokenizer/` (umT5) and `image_encoder/` + `image_processor/`
(CLIP's vision tower).

    python jobs/make_tiny_wan.py --out models/tiny-wan
    python jobs/make_tiny_wan.py --out models/tiny-wan-i2v --i2v
    python jobs/make_tiny_wan.py --out models/wan-vae-size --vae full   # the VAE at Wan2.1's size

Then point a run at it (README, "Wan2.1 backbones"):

    python jobs/distill.py --stage teacher --set model.kind=wan \\
        --set model.pretrained=models/tiny-wan --set codec.kind=wan_vae \\
        --set codec.pretrained=models/tiny-wan --set codec.factor=8 \\
        --set data.frames=9 --set data.motion_frames=1

The weights are random: what runs is the real code path (loading, checks, the causal VAE, the Wan
blocks), not a trained model. `--vae full` builds the VAE with Wan2.1's own architecture (random
weights, ~127M parameters), which decodes at the real one's cost: what `benchmarks/speed.py`
needs to measure decoding.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch


def tiny_vae():
    from diffusers import AutoencoderKLWan

    # Wan2.1's layout (causal 3D convolutions, 4× time, 8× space, 16 latent channels), narrow.
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def full_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan()  # diffusers' defaults are Wan2.1's VAE


def transformer(channels: int, dim: int, depth: int, heads: int, text_dim: int,
                image_dim: int | None = None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads,
                                 attention_head_dim=dim // heads,
                                 in_channels=2 * channels + 4 if image_dim else channels,
                                 out_channels=channels, text_dim=text_dim, ffn_dim=2 * dim,
                                 num_layers=depth, image_dim=image_dim,
                                 added_kv_proj_dim=dim if image_dim else None)


WORDS = "a person is talking to the camera with clear speech and natural head motion".split()


def text_encoder(width: int, out: Path) -> int:
    """A umT5 encoder and a word-level tokenizer over a few words (umT5's own vocabulary is
    250k sentencepiece tokens: the tokenizer's kind does not change what onestep does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out / "tokenizer")
    model = UMT5EncoderModel(UMT5Config(vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=2 * width,
                                        num_layers=1, num_heads=2, relative_attention_num_buckets=8))
    model.save_pretrained(out / "text_encoder", safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def image_encoder(width: int, resolution: int, out: Path) -> int:
    """CLIP's vision tower (ViT-H/14 in Wan2.1 I2V) and its preprocessor, at `resolution`."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width,
                                             num_hidden_layers=2, num_attention_heads=2,
                                             image_size=resolution, patch_size=8))
    model.save_pretrained(out / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": resolution},
                       crop_size={"height": resolution, "width": resolution}
                       ).save_pretrained(out / "image_processor")
    return sum(p.numel() for p in model.parameters())


def _millions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--vae", choices=["tiny", "full"], default="tiny")
    p.add_argument("--dim", type=int, default=48)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--text-dim", type=int, default=32)
    p.add_argument("--i2v", action="store_true",
                   help="I2V-14B's layout: 36 input channels and CLIP image attention")
    p.add_argument("--image-dim", type=int, default=32, help="CLIP width")
    p.add_argument("--clip-resolution", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} already exists; choose a new folder")
    torch.manual_seed(args.seed)
    vae = tiny_vae() if args.vae == "tiny" else full_vae()
    dit = transformer(vae.config.z_dim, args.dim, args.depth, args.heads, args.text_dim,
                      args.image_dim if args.i2v else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}-", dir=args.out.parent))
    try:
        vae.save_pretrained(tmp / "vae")
        dit.save_pretrained(tmp / "transformer")
        text = text_encoder(args.text_dim, tmp)
        image = image_encoder(args.image_dim, args.clip_resolution, tmp)
        tmp.rename(args.out)  # complete or absent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}: vae/ ({_millions(vae):.2f}M parameters, {args.vae}), "
          f"transformer/ ({_millions(dit):.2f}M parameters, width {args.dim}, {args.depth} "
          f"blocks{', I2V with CLIP image attention' if args.i2v else ''}), text_encoder/ "
          f"(umT5, {text / 1e6:.2f}M), image_encoder/ (CLIP, {image / 1e6:.2f}M); random weights")


if __name__ == "__main__":
    main()
