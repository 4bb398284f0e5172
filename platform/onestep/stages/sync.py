"""Stage `sync`: onestep's lip-sync expert (onestep.sync), trained contrastively on any shard set.

A training window is `data.frames` frames with their MFCCs (audio.encoder mfcc). Its middle 5
frames are embedded once and the audio of the same 5 frames is embedded at every shift of up to
`sync.train_shift` frames. InfoNCE over cosine similarities: the aligned audio must win against
the shifted audio of the same clip (the hard negatives that teach timing) and against every audio
window of the other clips in the micro-batch (which teach content). Shifts of one frame are left
out of the negatives: 40 ms of co-articulation make them nearly right. `offset_acc` is how often
the aligned shift wins within its own clip, what an offset search relies on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onestep.config import SYNC_FRAMES, Config
from onestep.stages.base import Stage
from onestep.sync.score import MFCC_PER_FRAME, build_expert, mouth_region
from onestep.train.engine import update


class SyncStage(Stage):
    name = "sync"
    trained = ("sync_expert",)
    export = "sync_expert"
    headline = ("loss", "offset_acc")

    def build_networks(self) -> dict[str, torch.nn.Module]:
        return {"sync_expert": build_expert(self.cfg.sync)}

    @staticmethod
    def plan_network(cfg: Config, name: str) -> torch.nn.Module:
        return build_expert(cfg.sync)

    @staticmethod
    def plan_inputs(cfg: Config, model: torch.nn.Module, batch: int) -> tuple:
        s = cfg.sync
        shifts = 2 * s.train_shift + 1
        return (torch.empty(batch, 3, SYNC_FRAMES, s.size, s.size),
                torch.empty(batch * shifts, 1, 13, SYNC_FRAMES * MFCC_PER_FRAME))

    def windows(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 5, s, s) middle mouth frames; (B·(2K+1), 1, 13, 20) their audio at each shift
        −K … K (clip-major)."""
        s, k = self.cfg.sync, self.cfg.sync.train_shift
        if "video" not in batch:
            raise ValueError(f"data.uri={self.cfg.data.uri}: latent shards; the sync expert "
                             "sees pixels: train it on clip shards (jobs/prepare_data.py)")
        video, audio = batch["video"].float(), batch["audio"].float()  # (B,3,F,H,W), (B,F·4,13)
        b, _, frames = video.shape[:3]
        first = (frames - SYNC_FRAMES) // 2
        clip = video[:, :, first:first + SYNC_FRAMES].transpose(1, 2).flatten(0, 1)
        mouths = mouth_region(clip, s.mouth_region, s.size)
        mouths = mouths.unflatten(0, (b, SYNC_FRAMES)).transpose(1, 2)
        span = SYNC_FRAMES * MFCC_PER_FRAME
        sound = torch.stack([audio[:, (first + d) * MFCC_PER_FRAME:(first + d) * MFCC_PER_FRAME
                                   + span] for d in range(-k, k + 1)], dim=1)  # (B, 2K+1, 20, 13)
        return mouths, sound.transpose(2, 3).flatten(0, 1)[:, None]

    def train_step(self, batch: dict, engines: dict, rng: torch.Generator,
                   step: int) -> dict:
        engine, k = engines["sync_expert"], self.cfg.sync.train_shift
        mouths, sound = self.windows(batch)
        video, audio = engine(mouths, sound)  # (B, D), (B·(2K+1), D), unit length
        b, shifts = len(video), 2 * k + 1
        logits = video @ audio.T / self.cfg.sync.temperature  # (B, B·(2K+1))
        own = (torch.arange(b, device=video.device)[:, None] * shifts
               + torch.arange(shifts, device=video.device))  # each clip's shifts
        near = own[:, [k - 1, k + 1]] if k else own[:, :0]
        logits = logits.scatter(1, near, float("-inf"))
        target = own[:, k]
        loss = F.cross_entropy(logits, target)
        grad_norm = update(engine, loss)
        with torch.no_grad():
            offset_acc = (logits.gather(1, own).argmax(1) == k).float().mean()
        return {"loss": float(loss), "offset_acc": float(offset_acc), "grad_norm": grad_norm}

