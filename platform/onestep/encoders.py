"""Wan's two context encoders, each run once per input rather than per training step: umT5 embeds
the avatar's fixed prompt (the text cross-attention context, computed once per run), and CLIP's
vision tower embeds a reference frame (Wan I2V's image context, computed with the latents or once
per generated video).

Both are transformers models in a local folder or s3:// (fetched once into `$ONESTEP_CACHE`): a
Wan pipeline folder (its `text_encoder/` + `tokenizer/`, `image_encoder/` + `image_processor/`)
or the model's own folder. Weights load with safetensors only. Each computes what diffusers' Wan
pipelines compute (`_get_t5_prompt_embeds`, `encode_image`; tested against them).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save

from onestep import original_wan
from onestep.config import Config
from onestep.pretrained import PretrainedError, local_folder, model_folder
from onestep.storage import resolve

PROMPT_FILE = "prompt.safetensors"

# Per part: its subfolder in a Wan pipeline folder and the file that marks it.
PARTS = {"text_encoder": "config.json", "tokenizer": "tokenizer_config.json",
         "image_encoder": "config.json", "image_processor": "preprocessor_config.json"}


def _part(uri: str, endpoint_url: str, part: str) -> Path:
    if resolve(uri, endpoint_url).join(original_wan.VAE_FILE).exists():
        raise PretrainedError(
            f"{uri}: Wan's original release, whose umT5 and CLIP are in Wan's own format "
            "(models_t5_*.pth, models_clip_*.pth) that transformers cannot read; for "
            "model.text_encoder and model.image_encoder give the Diffusers release's folder "
            "(text_encoder/ + tokenizer/, image_encoder/ + image_processor/)")
    return local_folder(model_folder(uri, endpoint_url, part, f"transformers {part}",
                                     PARTS[part]))


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: broken Unicode repaired (ftfy), HTML entities, runs of spaces."""
    import ftfy

    return re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text))).strip()).strip()


@torch.no_grad()
def embed_prompt(uri: str, prompt: str, tokens: int, endpoint_url: str = "") -> torch.Tensor:
    """(1, tokens, width) umT5 hidden states of `prompt`, zero past its last token (as Wan's
    pipelines pad the text context)."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(str(_part(uri, endpoint_url, "tokenizer")),
                                              local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(str(_part(uri, endpoint_url, "text_encoder")),
                                               local_files_only=True, use_safetensors=True).eval()
    inputs = tokenizer([clean_prompt(prompt)], padding="max_length", max_length=tokens,
                       truncation=True, add_special_tokens=True, return_attention_mask=True,
                       return_tensors="pt")
    hidden = encoder(inputs.input_ids, inputs.attention_mask).last_hidden_state.float()
    used = int(inputs.attention_mask.sum())
    out = torch.zeros_like(hidden)
    out[:, :used] = hidden[:, :used]
    return out


def store_prompt(cfg: Config) -> str:
    """Embed `model.prompt` with `model.text_encoder` once (on the driver, before launch) into
    the run's folder, and point `model.prompt_embedding` at it. Returns a line for the user."""
    m, endpoint = cfg.model, cfg.run.s3_endpoint_url
    embedding = embed_prompt(m.text_encoder, m.prompt, m.prompt_tokens, endpoint)
    if embedding.shape[-1] != m.text_dim:
        raise PretrainedError(f"model.text_encoder={m.text_encoder!r}: {embedding.shape[-1]}-wide "
                              f"embeddings, the model's text context is {m.text_dim} wide")
    loc = resolve(cfg.run.root, endpoint).join(cfg.run.name, PROMPT_FILE)
    loc.write_bytes(save({"prompt": embedding.contiguous()},
                         metadata={"prompt": m.prompt, "text_encoder": m.text_encoder}))
    m.prompt_embedding = loc.uri
    return f"prompt: {m.prompt!r}, embedded by {m.text_encoder} → {loc.uri}"


def load_prompt(uri: str, endpoint_url: str = "") -> torch.Tensor:
    return load(resolve(uri, endpoint_url).read_bytes())["prompt"]


class ImageEncoder:
    """CLIP image tokens of reference frames: the vision tower's penultimate hidden states."""

    def __init__(self, uri: str, endpoint_url: str = ""):
        from transformers import CLIPImageProcessor, CLIPVisionModel

        self.processor = CLIPImageProcessor.from_pretrained(
            str(_part(uri, endpoint_url, "image_processor")), local_files_only=True)
        self.model = CLIPVisionModel.from_pretrained(
            str(_part(uri, endpoint_url, "image_encoder")), local_files_only=True,
            use_safetensors=True).eval()
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """(K, H, W, 3) uint8 → (K, tokens, dim) float32."""
        inputs = self.processor(images=list(frames), return_tensors="pt")
        hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-2]
        return hidden.float()


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8, what an image encoder reads."""
    pixels = ((frames.float() + 1) * 127.5).round().clamp(0, 255).byte()
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
