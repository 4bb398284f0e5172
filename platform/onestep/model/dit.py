"""A Wan-style video DiT with audio cross-attention (TurboTalk §3.1). Pure PyTorch.

Conditioning, as in Wan image-to-video plus InfiniteTalk's motion frames:
- reference latent (broadcast over frames) and motion-frame latents + their mask are concatenated
  to the noisy latent on channels;
- identity cross-attention over reference-image tokens (the slot Wan uses for text/CLIP);
- audio cross-attention after it in every block, each frame attending only to its own audio tokens;
- adaLN-Zero timestep modulation; 3D RoPE in self-attention over all video tokens.
Dropping audio / reference (per sample) swaps in learned null tokens and zero latents, which is
what classifier-free guidance evaluates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from onestep.model.audio_adapter import AudioAdapter
from onestep.model.guidance import GuidanceEmbedding, guidance_context
from onestep.model.rope import apply_rope, rope_angles


@dataclass
class Conditions:
    """Everything a denoising step is conditioned on (latent space)."""

    ref: torch.Tensor  # (B, C, h, w) reference frame latent
    audio: torch.Tensor  # (B, F·r, D_a) audio features, r per video frame
    motion: torch.Tensor  # (B, C, F, h, w) motion-frame latents, zero where not given
    motion_mask: torch.Tensor  # (B, 1, F, h, w) 1 on motion frames
    drop_audio: torch.Tensor | None = None  # (B,) bool
    drop_ref: torch.Tensor | None = None  # (B,) bool
    image: torch.Tensor | None = None  # (B, tokens, D_clip) CLIP tokens of the reference (Wan I2V)
    # (B, 2) [audio_scale, ref_scale] for a network that takes guidance as an input (FADA §3.3)
    guidance: torch.Tensor | None = None

    def repeat(self, n: int, drop_audio: bool, drop_ref: bool) -> Conditions:
        """The batch repeated with fixed dropout flags (for batched CFG evaluation)."""
        b = self.ref.shape[0]
        flag = lambda v: torch.full((b * n,), v, dtype=torch.bool, device=self.ref.device)
        rep = lambda t: None if t is None else t.repeat(n, *([1] * (t.dim() - 1)))
        return Conditions(rep(self.ref), rep(self.audio), rep(self.motion), rep(self.motion_mask),
                          flag(drop_audio), flag(drop_ref), rep(self.image), rep(self.guidance))

    @staticmethod
    def cat(parts: list[Conditions]) -> Conditions:
        def c(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return Conditions(c("ref"), c("audio"), c("motion"), c("motion_mask"), c("drop_audio"),
                          c("drop_ref"), c("image"), c("guidance"))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t·1000 (t in [0, 1])."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads), nn.RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context=None, angles=None):
        """x (B, N, D), context (B, M, Dc) or None for self-attention."""
        b, n, d = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """A transformer block that can recompute its activations in backward instead of keeping
    them (`checkpointed`, set by `set_activation_checkpointing`): memory traded for compute."""

    checkpointed = False

    def __call__(self, *args):
        if self.checkpointed and torch.is_grad_enabled():
            # A block has no dropout: nothing random to replay, so no RNG state is kept.
            return checkpoint(super().__call__, *args, use_reentrant=False,
                              preserve_rng_state=False)
        return super().__call__(*args)


def set_activation_checkpointing(module: nn.Module, on: bool) -> None:
    for m in module.modules():
        if isinstance(m, Block):
            m.checkpointed = on


class DiTBlock(Block):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, guidance_attn: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.identity_attn = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.audio_attn = Attention(dim, heads)
        # FADA §3.3: a guidance layer after the audio layer, over the guidance embedding.
        if guidance_attn:
            self.norm_guidance = nn.LayerNorm(dim, eps=1e-6)
            self.guidance_attn = Attention(dim, heads)
        self.norm4 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        # adaLN-Zero (zero-initialised by the DiT): shift/scale/gate for self-attention and MLP,
        # plus a timestep gate on the audio branch (see forward).
        self.modulation = nn.Linear(dim, 7 * dim)

    def forward(self, x, t_emb, identity_tokens, audio_tokens, angles, frames: int,
                guidance_tokens=None):
        shift1, scale1, gate1, shift2, scale2, gate2, gate_audio = (
            self.modulation(t_emb)[:, None].chunk(7, -1))
        x = x + gate1 * self.self_attn(self.norm1(x) * (1 + scale1) + shift1, angles=angles)
        x = x + self.identity_attn(self.norm2(x), identity_tokens)
        # Per-frame audio cross-attention: the tokens of frame i only see frame i's audio tokens.
        # Its output is gated by the timestep: ungated, loud audio onsets swamped the timestep
        # signal and the sampler left those frames noisy (reports/teacher.md).
        b, n, d = x.shape
        per_frame = self.norm3(x).reshape(b * frames, n // frames, d)
        audio = audio_tokens.reshape(b * frames, -1, d)
        x = x + gate_audio * self.audio_attn(per_frame, audio).reshape(b, n, d)
        if guidance_tokens is not None:
            x = x + self.guidance_attn(self.norm_guidance(x), guidance_tokens)
        return x + gate2 * self.mlp(self.norm4(x) * (1 + scale2) + shift2)


class VideoDiT(nn.Module):
    def __init__(self, latent_channels: int, audio_feature_dim: int, audio_per_frame: int,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 patch: tuple[int, int, int] = (1, 2, 2), audio_context: int = 2,
                 audio_tokens: int = 4, audio_dim: int = 128, guidance_input: str = ""):
        super().__init__()
        self.c, self.patch, self.dim, self.heads = latent_channels, tuple(patch), dim, heads
        in_ch = 3 * latent_channels + 1  # noisy latent, reference, motion latents, motion mask
        self.patch_embed = nn.Conv3d(in_ch, dim, kernel_size=self.patch, stride=self.patch)
        self.ref_embed = nn.Conv2d(latent_channels, dim, kernel_size=self.patch[1:],
                                   stride=self.patch[1:])
        self.null_identity = nn.Parameter(torch.zeros(1, 1, dim))
        self.audio_adapter = AudioAdapter(audio_feature_dim, audio_context,
                                          audio_per_frame * self.patch[0], audio_dim, dim,
                                          audio_tokens)
        self.null_audio = nn.Parameter(torch.zeros(1, 1, audio_tokens, dim))
        self.t_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.guidance = GuidanceEmbedding(guidance_input, dim) if guidance_input else None
        attends = self.guidance is not None and self.guidance.attends
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio, attends)
                                    for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(dim, 2 * dim)
        self.final = nn.Linear(dim, latent_channels * math.prod(self.patch))
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.null_identity, std=0.02)
        nn.init.normal_(self.null_audio, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.modulation.weight)
            nn.init.zeros_(blk.modulation.bias)
            if hasattr(blk, "guidance_attn"):  # and adds nothing until it has learnt to
                nn.init.zeros_(blk.guidance_attn.out.weight)
        if self.guidance is not None:  # its own initialisation, which the loop above overwrote
            self.guidance.reset_parameters()
        for layer in (self.final_modulation, self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def head_modules(self) -> list[str]:
        """The velocity head's attributes; a discriminator built on this trunk drops them."""
        return ["final_modulation", "final"]

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        """The transformer trunk: tokens (B, N, D) after the last block, the timestep embedding
        and the token grid. The velocity head reads them; so does the discriminator's head."""
        tokens, t_emb, grid, _, _ = self._run_blocks(x, t, cond)
        return tokens, t_emb, grid

    def block_outputs(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions,
                      layers: tuple[int, ...]
                      ) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int, int]]:
        """The tokens (B, N, D) after each block in `layers`, the audio tokens (B, F', T, D)
        and the token grid: what OSA-LCM's discriminator heads read (blocks after the last
        one asked for are not run)."""
        _, _, grid, kept, audio = self._run_blocks(x, t, cond, layers)
        return kept, audio, grid

    def _run_blocks(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions,
              layers: tuple[int, ...] = ()):
        """(last tokens, timestep embedding, grid, tokens after each block of `layers`, audio
        tokens); with `layers`, the blocks after the last of them are skipped."""
        b, _, n_frames, h, w = x.shape
        pf, ph, pw = self.patch
        grid = (n_frames // pf, h // ph, w // pw)
        keep_ref = (~cond.drop_ref).float() if cond.drop_ref is not None else x.new_ones(b)
        ref = cond.ref * keep_ref[:, None, None, None]
        inp = torch.cat([x, ref[:, :, None].expand(-1, -1, n_frames, -1, -1), cond.motion,
                         cond.motion_mask], dim=1)
        tokens = self.patch_embed(inp).flatten(2).transpose(1, 2)  # (B, N, D)

        identity = self.ref_embed(ref).flatten(2).transpose(1, 2)  # (B, hw, D)
        identity = torch.where(keep_ref[:, None, None] > 0, identity,
                               self.null_identity.expand(b, identity.shape[1], -1))
        audio = self.audio_adapter(cond.audio)  # (B, F', tokens, D)
        if cond.drop_audio is not None:
            audio = torch.where(cond.drop_audio[:, None, None, None],
                                self.null_audio.expand_as(audio), audio)

        t_emb = self.t_embed(timestep_embedding(t, 256))
        t_emb, guidance = guidance_context(self.guidance, cond.guidance, t_emb)
        angles = rope_angles(grid, self.dim // self.heads).to(x.device)
        kept = []
        for i, blk in enumerate(self.blocks[:max(layers) + 1] if layers else self.blocks):
            tokens = blk(tokens, t_emb, identity, audio, angles, grid[0], guidance)
            if i in layers:
                kept.append(tokens)
        return tokens, t_emb, grid, kept, audio

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Velocity prediction. x (B, C, F, h, w), t (B,) in [0, 1] (1 = pure noise)."""
        b, _, n_frames, h, w = x.shape
        pf, ph, pw = self.patch
        tokens, t_emb, grid = self.features(x, t, cond)
        shift, scale = self.final_modulation(t_emb)[:, None].chunk(2, -1)
        out = self.final(self.final_norm(tokens) * (1 + scale) + shift)  # (B, N, p·C)
        out = out.view(b, *grid, pf, ph, pw, self.c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, self.c, n_frames, h, w)
