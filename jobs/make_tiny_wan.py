"""Write a random Wan2.1 model folder in diffusers' format, so the Wan path runs without a
download: `vae/` (AutoencoderKLWan) and `transformer/` (WanTransformer3DModel, text-to-video
layout; onestep widens it to image-to-video when it loads it).

    python jobs/make_tiny_wan.py --out models/tiny-wan
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


def transformer(channels: int, dim: int, depth: int, heads: int, text_dim: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads,
                                 attention_head_dim=dim // heads, in_channels=channels,
                                 out_channels=channels, text_dim=text_dim, ffn_dim=2 * dim,
                                 num_layers=depth)


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
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} already exists; choose a new folder")
    torch.manual_seed(args.seed)
    vae = tiny_vae() if args.vae == "tiny" else full_vae()
    dit = transformer(vae.config.z_dim, args.dim, args.depth, args.heads, args.text_dim)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}-", dir=args.out.parent))
    try:
        vae.save_pretrained(tmp / "vae")
        dit.save_pretrained(tmp / "transformer")
        tmp.rename(args.out)  # complete or absent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}: vae/ ({_millions(vae):.2f}M parameters, {args.vae}), "
          f"transformer/ ({_millions(dit):.2f}M parameters, width {args.dim}, {args.depth} "
          "blocks); random weights")


if __name__ == "__main__":
    main()
