"""diffusers' Wan names → the original release's, for tests: a tiny diffusers model saved the way
Wan's authors ship theirs. Each test checks that diffusers' own converter maps the result back
key for key, so these inverses cannot drift from it unnoticed."""

from __future__ import annotations

import re

import torch

# Applied in order; norm2/norm3 swap through a placeholder (the original's norm3 is the
# cross-attention norm, diffusers' norm2).
_DIT_RENAMES = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("norm2", "norm_swap"), ("norm3", "norm2"), ("norm_swap", "norm3"),
]


def dit_to_original(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for a, b in _DIT_RENAMES:
            key = key.replace(a, b)
        if key == "scale_shift_table":
            key = "head.modulation"
        key = key.replace("scale_shift_table", "modulation").replace("proj_out", "head.head")
        out[prefix + key] = value.clone()
    return out


_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2",
           "norm2.gamma": "residual.3.gamma", "conv2": "residual.6", "conv_shortcut": "shortcut"}


def _resnet_part(part: str) -> str:
    for a, b in _RESNET.items():
        if part.startswith(a):
            return b + part[len(a):]
    return part


def vae_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """For Wan2.1's VAE layout (2 residual blocks per level: the decoder's flat list holds 3
    residual blocks and an upsampler per level)."""
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(post_)?quant_conv\.(.+)", key):
            key = f"conv{2 if m.group(1) else 1}.{m.group(2)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_in\.(.+)", key):
            key = f"{m.group(1)}.conv1.{m.group(2)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(.+)", key):
            key = f"{m.group(1)}.head.0.{m.group(2)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_out\.(.+)", key):
            key = f"{m.group(1)}.head.2.{m.group(2)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            key = f"{m.group(1)}.middle.{2 * int(m.group(2))}.{_resnet_part(m.group(3))}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            key = f"{m.group(1)}.middle.1.{m.group(2)}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
            key = f"encoder.downsamples.{m.group(1)}.{_resnet_part(m.group(2))}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.+)", key):
            key = (f"decoder.upsamples.{4 * int(m.group(1)) + int(m.group(2))}."
                   f"{_resnet_part(m.group(3))}")
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.+)", key):
            key = f"decoder.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
        out[key] = value.clone()
    return out
