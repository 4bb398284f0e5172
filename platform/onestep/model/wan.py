"""Wan2.1's video DiT with onestep's audio cross-attention. Pure PyTorch.

Why not diffusers' `WanTransformer3DModel` itself: onestep's networks are plain modules that
ZeRO-3 shards and that stages call as `model(x, t, cond)`; diffusers' class brings attention
dispatch, caching and loader mixins that neither needs. The parameter names and shapes are
diffusers' own, so a diffusers checkpoint loads by name, and a trained model is written back in
that layout (`onestep.pretrained`).

Where Wan differs from onestep's `VideoDiT`, this follows Wan: q/k RMSNorm across all heads (not
per head); timestep modulation from one shared projection (SiLU → Linear → 6·dim) added to a
learned table per block; an explicit FFN width; interleaved RoPE pairs; cross-attention over a
text context (a fixed prompt's umT5 embedding, kept in the model as `prompt`) plus, for I2V, CLIP
tokens of the reference; the I2V input [noisy latent, 4-channel mask, condition latent].

onestep adds, in every block after the cross-attention, audio cross-attention per latent frame
(TurboTalk Eq. 1–2) behind a timestep gate that starts at zero: at step 0 the model is exactly the
pretrained Wan. A FADA student (`guidance_input`) also takes the guidance scales (FADA §3.3,
onestep.model.guidance): a guidance cross-attention after the audio one, or an offset of the
timestep embedding, each starting at zero, so it starts as the network it was made from.
Time is onestep's t ∈ [0, 1] (1 = noise); Wan's timestep is 1000·t, and both predict the
velocity ε − x₀.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from onestep.model.audio_adapter import AudioAdapter
from onestep.model.dit import Attention, Block, Conditions, timestep_embedding
from onestep.model.guidance import GuidanceEmbedding, guidance_context
from onestep.model.rope import apply_rope_interleaved, rope_angles

# A latent frame's 4 video frames: Wan's I2V mask has one channel for each.
MASK_CHANNELS = 4


@dataclass
class WanArch:
    """The architecture of a diffusers `WanTransformer3DModel` (its config.json fields)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    in_channels: int = 36
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None  # CLIP width (1280) for I2V, which adds image cross-attention
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def to_dict(self) -> dict:
        return {**asdict(self), "patch_size": list(self.patch_size)}


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activations' dtype (as Wan keeps it under bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class _GeluProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, approximate: str):
        super().__init__()
        self.proj, self.approximate = nn.Linear(dim_in, dim_out), approximate

    def forward(self, x):
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """Linear → GELU → Linear, named as diffusers' FeedForward (net.0.proj, net.2; the dropout
    slot in between has no weights)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, approximate: str):
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim_in, hidden, approximate), nn.Identity(),
                                  nn.Linear(hidden, dim_out)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class WanAttention(nn.Module):
    """Self- or cross-attention with q/k RMSNorm over all heads; with `image_dim`, a second
    key/value set over image tokens whose result is added (Wan I2V)."""

    def __init__(self, dim: int, heads: int, eps: float, image_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        if image_dim is not None:
            self.add_k_proj, self.add_v_proj = nn.Linear(image_dim, dim), nn.Linear(image_dim, dim)
            self.norm_added_k = nn.RMSNorm(dim, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, H, N, d)

    def forward(self, x, context=None, angles=None, image=None):
        ctx = x if context is None else context
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(ctx)))
        v = self._heads(self.to_v(ctx))
        if angles is not None:
            q, k = apply_rope_interleaved(q, angles), apply_rope_interleaved(k, angles)
        out = F.scaled_dot_product_attention(q, k, v)
        if image is not None:
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))
            v_img = self._heads(self.add_v_proj(image))
            out = out + F.scaled_dot_product_attention(q, k_img, v_img)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class WanBlock(Block):
    def __init__(self, arch: WanArch, guidance_attn: bool = False):
        super().__init__()
        dim, heads, eps = arch.dim, arch.num_attention_heads, arch.eps
        self.norm1 = LayerNorm32(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, heads, eps)
        self.attn2 = WanAttention(dim, heads, eps, arch.added_kv_proj_dim)
        self.norm2 = (LayerNorm32(dim, eps, elementwise_affine=True) if arch.cross_attn_norm
                      else nn.Identity())
        self.ffn = FeedForward(dim, arch.ffn_dim, dim, "tanh")
        self.norm3 = LayerNorm32(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        # onestep's audio branch. Its gate reads the timestep (as VideoDiT's: loud onsets must
        # not swamp the timestep signal) and starts at zero, so the block starts as Wan's.
        self.audio_norm = nn.LayerNorm(dim, eps=eps)
        self.audio_attn = Attention(dim, heads)
        self.audio_gate = nn.Linear(dim, dim)
        nn.init.zeros_(self.audio_gate.weight)
        nn.init.zeros_(self.audio_gate.bias)
        if guidance_attn:  # FADA §3.3's guidance layer, adding nothing until it has learnt to
            self.guidance_norm = nn.LayerNorm(dim, eps=eps)
            self.guidance_attn = Attention(dim, heads)
            nn.init.zeros_(self.guidance_attn.out.weight)
            nn.init.zeros_(self.guidance_attn.out.bias)

    def forward(self, x, t_emb, modulation, text, image, audio_tokens, angles, frames: int,
                guidance_tokens=None):
        shift, scale, gate, c_shift, c_scale, c_gate = (
            self.scale_shift_table + modulation.float()).chunk(6, dim=1)
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.attn1(h, angles=angles) * gate).type_as(x)
        x = x + self.attn2(self.norm2(x.float()).type_as(x), text, image=image)
        b, n, d = x.shape
        per_frame = self.audio_norm(x).reshape(b * frames, n // frames, d)
        heard = self.audio_attn(per_frame, audio_tokens.reshape(b * frames, -1, d))
        x = x + self.audio_gate(F.silu(t_emb))[:, None] * heard.reshape(b, n, d)
        if guidance_tokens is not None:
            x = x + self.guidance_attn(self.guidance_norm(x), guidance_tokens)
        h = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x)


class _TwoLinear(nn.Module):
    """linear_1 → activation → linear_2 (diffusers' TimestepEmbedding / text projection)."""

    def __init__(self, dim_in: int, dim: int, act: nn.Module):
        super().__init__()
        self.linear_1, self.act, self.linear_2 = nn.Linear(dim_in, dim), act, nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class _ImageEmbedder(nn.Module):
    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.norm1 = LayerNorm32(image_dim)
        self.ff = FeedForward(image_dim, image_dim, dim, "none")
        self.norm2 = LayerNorm32(dim)

    def forward(self, x):
        return self.norm2(self.ff(self.norm1(x)))


class _ConditionEmbedder(nn.Module):
    def __init__(self, arch: WanArch):
        super().__init__()
        dim = arch.dim
        self.time_embedder = _TwoLinear(arch.freq_dim, dim, nn.SiLU())
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = _TwoLinear(arch.text_dim, dim, nn.GELU(approximate="tanh"))
        if arch.image_dim is not None:
            self.image_embedder = _ImageEmbedder(arch.image_dim, dim)


class WanDiT(nn.Module):
    """`model(x, t, cond)` → velocity, as `VideoDiT`; `wan_forward` is the Wan network itself."""

    def __init__(self, arch: WanArch, audio_feature_dim: int, audio_per_frame: int,
                 audio_context: int = 2, audio_tokens: int = 4, audio_dim: int = 128,
                 prompt_tokens: int = 512, guidance_input: str = ""):
        super().__init__()
        if arch.pos_embed_seq_len is not None:
            raise ValueError("Wan FLF2V (pos_embed_seq_len) is not supported: onestep "
                             "conditions on one reference frame")
        if arch.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"qk_norm {arch.qk_norm!r}: onestep supports Wan2.1's "
                             "'rms_norm_across_heads'")
        self.arch, self.c = arch, arch.out_channels
        self.dim, self.heads, self.patch = arch.dim, arch.num_attention_heads, arch.patch_size
        self.i2v = arch.in_channels == 2 * arch.out_channels + MASK_CHANNELS
        if not self.i2v and arch.in_channels != arch.out_channels:
            raise ValueError(f"in_channels {arch.in_channels}: expected {arch.out_channels} "
                             f"(T2V) or {2 * arch.out_channels + MASK_CHANNELS} (I2V)")
        self.patch_embedding = nn.Conv3d(arch.in_channels, self.dim, kernel_size=self.patch,
                                         stride=self.patch)
        self.condition_embedder = _ConditionEmbedder(arch)
        self.guidance = GuidanceEmbedding(guidance_input, self.dim) if guidance_input else None
        attends = self.guidance is not None and self.guidance.attends
        self.blocks = nn.ModuleList(WanBlock(arch, attends) for _ in range(arch.num_layers))
        self.norm_out = LayerNorm32(self.dim, arch.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(self.dim, arch.out_channels * math.prod(self.patch))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, self.dim) / self.dim ** 0.5)
        self.audio_adapter = AudioAdapter(audio_feature_dim, audio_context,
                                          audio_per_frame * self.patch[0], audio_dim, self.dim,
                                          audio_tokens)
        self.null_audio = nn.Parameter(torch.randn(1, 1, audio_tokens, self.dim) * 0.02)
        # The avatar's fixed prompt as the text encoder embeds it (see onestep.pretrained).
        self.register_buffer("prompt", torch.zeros(1, prompt_tokens, arch.text_dim))

    def head_modules(self) -> list[str]:
        """The velocity head's attributes; a discriminator built on this trunk drops them."""
        return ["norm_out", "proj_out", "scale_shift_table"]

    def _inputs(self, x: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Wan I2V's input: the noisy latent, a mask of given frames (4 channels per latent
        frame) and the condition latent: motion latents where given and, in a first latent frame
        without one, the reference (Wan's first-frame condition). T2V: the noisy latent only."""
        if not self.i2v:
            return x
        b = x.shape[0]
        keep_ref = (~cond.drop_ref).float() if cond.drop_ref is not None else x.new_ones(b)
        mask = cond.motion_mask.clone()
        given = cond.motion * mask
        first_free = (mask[:, :, 0] == 0).float()  # (B, 1, h, w)
        given[:, :, 0] += first_free * cond.ref * keep_ref[:, None, None, None]
        mask[:, :, 0] += first_free * keep_ref[:, None, None, None]
        return torch.cat([x, mask.expand(-1, MASK_CHANNELS, -1, -1, -1), given], dim=1)

    def _audio_tokens(self, cond: Conditions) -> torch.Tensor:
        audio = self.audio_adapter(cond.audio)  # (B, F', tokens, D)
        if cond.drop_audio is not None:
            audio = torch.where(cond.drop_audio[:, None, None, None],
                                self.null_audio.expand_as(audio), audio)
        return audio

    def trunk(self, inp: torch.Tensor, t: torch.Tensor, audio_tokens: torch.Tensor,
              image: torch.Tensor | None = None, prompt: torch.Tensor | None = None,
              guidance: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        """Tokens after the last block, the time embedding and the token grid, from an
        assembled input (B, in_channels, F, H, W); `guidance` (B, 2): the scales, for a network
        that takes them."""
        tokens, t_emb, grid, _ = self._run_blocks(inp, t, audio_tokens, image, prompt, guidance)
        return tokens, t_emb, grid

    def _run_blocks(self, inp: torch.Tensor, t: torch.Tensor, audio_tokens: torch.Tensor,
                    image: torch.Tensor | None, prompt: torch.Tensor | None,
                    guidance: torch.Tensor | None, layers: tuple[int, ...] = ()):
        """`trunk`'s (tokens, time embedding, grid) and the tokens after each block of
        `layers`; with `layers`, the blocks after the last of them are skipped."""
        b, _, n_frames, h, w = inp.shape
        pf, ph, pw = self.patch
        grid = (n_frames // pf, h // ph, w // pw)
        if grid[0] * pf != n_frames or grid[1] * ph != h or grid[2] * pw != w:
            raise ValueError(f"latent of {n_frames}×{h}×{w} does not divide into patches "
                             f"{self.patch}")
        tokens = self.patch_embedding(inp).flatten(2).transpose(1, 2)
        emb = self.condition_embedder
        t_emb = emb.time_embedder(timestep_embedding(t, self.arch.freq_dim))
        t_emb, guidance_tokens = guidance_context(self.guidance, guidance, t_emb)
        modulation = emb.time_proj(F.silu(t_emb)).unflatten(1, (6, -1))
        prompt = self.prompt.expand(b, -1, -1) if prompt is None else prompt
        text = emb.text_embedder(prompt.to(tokens.dtype))
        if image is not None:
            image = emb.image_embedder(image.to(tokens.dtype))
        angles = rope_angles(grid, self.dim // self.heads).to(inp.device)
        kept = []
        for i, blk in enumerate(self.blocks[:max(layers) + 1] if layers else self.blocks):
            tokens = blk(tokens, t_emb, modulation, text, image, audio_tokens, angles, grid[0],
                         guidance_tokens)
            if i in layers:
                kept.append(tokens)
        return tokens, t_emb, grid, kept

    def head(self, tokens: torch.Tensor, t_emb: torch.Tensor, grid: tuple[int, int, int]
             ) -> torch.Tensor:
        b = tokens.shape[0]
        shift, scale = (self.scale_shift_table + t_emb[:, None]).chunk(2, dim=1)
        out = self.proj_out((self.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens))
        pf, ph, pw = self.patch
        out = out.view(b, *grid, pf, ph, pw, self.c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, self.c, grid[0] * pf, grid[1] * ph, grid[2] * pw)

    def wan_forward(self, inp: torch.Tensor, t: torch.Tensor, audio_tokens: torch.Tensor,
                    image: torch.Tensor | None = None, prompt: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Wan's forward on an assembled input (diffusers' `hidden_states`; its `timestep` is
        1000·t), with the audio tokens of each latent frame."""
        return self.head(*self.trunk(inp, t, audio_tokens, image, prompt))

    def _image(self, cond: Conditions) -> torch.Tensor | None:
        """The CLIP image tokens, zeroed where the reference is dropped."""
        if cond.image is not None and cond.drop_ref is not None:
            return cond.image * (~cond.drop_ref).float()[:, None, None]
        return cond.image

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions):
        return self.trunk(self._inputs(x, cond), t, self._audio_tokens(cond), self._image(cond),
                          guidance=cond.guidance)

    def block_outputs(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions,
                      layers: tuple[int, ...]
                      ) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int, int]]:
        """The tokens (B, N, D) after each block in `layers`, the audio tokens (B, F', T, D)
        and the token grid, as `VideoDiT.block_outputs`: what OSA-LCM's discriminator heads
        read."""
        audio = self._audio_tokens(cond)
        *_, grid, kept = self._run_blocks(self._inputs(x, cond), t, audio, self._image(cond),
                                          None, cond.guidance, layers)
        return kept, audio, grid

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Velocity. x (B, C, F, h, w) latent, t (B,) in [0, 1] (1 = pure noise)."""
        return self.head(*self.features(x, t, cond))
