"""Wan2.1 as its authors released it (github.com/Wan-Video/Wan2.1), beside diffusers' layout.

The original release names parameters its own way (`blocks.0.self_attn.q`, `head.modulation`, …),
describes the DiT with a `WanModel` config.json (`dim`, `num_heads`, `in_dim`, `model_type`, …)
and ships the VAE as a PyTorch file, `Wan2.1_VAE.pth`. Community single files (one
`.safetensors` holding the whole DiT, often under a `model.diffusion_model.` prefix) carry no
config at all. diffusers' own single-file converters rename both to its layout; onestep uses
them rather than keeping a second copy of the mapping, and derives the architecture itself:
from the original config when there is one, else from the tensors' shapes.

The .pth is read with `torch.load(weights_only=True)`: tensors only, never arbitrary pickles.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import torch

from onestep.model.wan import WanArch

ORIGINAL_CLASS = "WanModel"  # the _class_name of the original release's config.json
VAE_FILE = "Wan2.1_VAE.pth"
PREFIX = "model.diffusion_model."  # ComfyUI-style single files
# Every Wan2.1 DiT (1.3B: 12 × 128, 14B: 40 × 128) has 128-wide heads, and nothing in the
# weights records the head count (q/k RMSNorm spans all heads), so a file without a config
# is read with these.
HEAD_DIM = 128
CLIP_DIM = 1280  # the I2V models' image embedder input: CLIP ViT-H/14's width


class PretrainedError(ValueError):
    """A pretrained checkpoint that cannot be used; the message names the file and why.
    (Defined here, the lower of the two modules that raise it; onestep.pretrained exports it.)"""


def is_original_layout(keys) -> bool:
    """Original parameter names (with or without the single-file prefix), not diffusers'."""
    return any(k.removeprefix(PREFIX) == "head.modulation" for k in keys)


def arch_from_config(config: dict, where: str) -> WanArch:
    """The architecture a `WanModel` config.json describes."""
    kind = config.get("model_type", "t2v")
    if kind not in ("t2v", "i2v"):
        raise PretrainedError(f"{where}: model_type {kind!r}: onestep supports Wan2.1's 't2v' "
                               "and 'i2v' models")
    try:
        dim, heads = config["dim"], config["num_heads"]
        i2v = kind == "i2v"
        return WanArch(
            patch_size=tuple(config.get("patch_size", (1, 2, 2))), num_attention_heads=heads,
            attention_head_dim=dim // heads, in_channels=config["in_dim"],
            out_channels=config["out_dim"], text_dim=config.get("text_dim", 4096),
            freq_dim=config.get("freq_dim", 256), ffn_dim=config["ffn_dim"],
            num_layers=config["num_layers"], cross_attn_norm=config.get("cross_attn_norm", True),
            eps=config.get("eps", 1e-6), image_dim=CLIP_DIM if i2v else None,
            added_kv_proj_dim=dim if i2v else None)
    except KeyError as e:
        raise PretrainedError(f"{where}: no {e.args[0]!r}: a {ORIGINAL_CLASS} config has dim, "
                               "num_heads, in_dim, out_dim, ffn_dim and num_layers") from None


def arch_from_shapes(shapes: dict[str, tuple[int, ...]], where: str) -> WanArch:
    """The architecture of a single file in the original layout, read off its tensors' shapes
    (heads of HEAD_DIM: see there)."""
    shapes = {k.removeprefix(PREFIX): v for k, v in shapes.items()}
    needed = ("patch_embedding.weight", "head.head.weight", "blocks.0.ffn.0.weight",
              "text_embedding.0.weight", "time_embedding.0.weight")
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise PretrainedError(f"{where}: no {missing[0]}: not a Wan2.1 DiT in its original "
                               "layout")
    dim, in_channels, *patch = shapes["patch_embedding.weight"]
    if dim % HEAD_DIM:
        raise PretrainedError(f"{where}: width {dim} is not a multiple of Wan2.1's "
                               f"{HEAD_DIM}-wide heads; put its {ORIGINAL_CLASS} config.json "
                               "beside it and pass the folder")
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
    image = shapes.get("img_emb.proj.0.weight")
    return WanArch(
        patch_size=tuple(patch), num_attention_heads=dim // HEAD_DIM, attention_head_dim=HEAD_DIM,
        in_channels=in_channels, out_channels=shapes["head.head.weight"][0] // math.prod(patch),
        text_dim=shapes["text_embedding.0.weight"][1],
        freq_dim=shapes["time_embedding.0.weight"][1],
        ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_layers=max(blocks) + 1,
        # The original's norm3 is the cross-attention norm, the only affine one of a block.
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
        image_dim=image[0] if image else None, added_kv_proj_dim=dim if image else None)


def transformer_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original DiT state dict under diffusers' names (diffusers' converter)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state))


def read_vae(path: Path, where: str) -> tuple[dict[str, torch.Tensor], dict]:
    """An original VAE file's weights under diffusers' names, and the AutoencoderKLWan config
    that fits them: Wan2.1's, at the widths the weights have (the release has one VAE)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a pickle of anything but tensors, or a damaged file
        raise PretrainedError(f"{where}: not a file of tensors torch can load safely "
                               f"({str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or "encoder.conv1.weight" not in state:
        raise PretrainedError(f"{where}: no encoder.conv1.weight: not a Wan2.1 VAE in its "
                               "original layout")
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters.values()
    config = {p.name: p.default for p in defaults if p.default is not inspect.Parameter.empty}
    config.update(_class_name="AutoencoderKLWan", base_dim=state["encoder.conv1.weight"].shape[0],
                  z_dim=state["conv2.weight"].shape[0])
    return convert_wan_vae_to_diffusers(state), config
