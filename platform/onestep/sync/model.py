"""Lip-sync experts: a video tower and an audio tower whose embeddings are close when the mouth
and the sound belong together. Pure PyTorch.

Both see 5 video frames (0.2 s) against the 20 MFCC frames (13 coefficients, 100 Hz) of the same
0.2 s, SyncNet's pairing:
- `SyncNetV2` is SyncNet (Chung & Zisserman, 2016) as released in syncnet_v2: 224×224 face crops
  in BGR 0–255, 1024-wide embeddings compared by Euclidean distance; the LSE-C / LSE-D numbers of
  the talking-head literature are its scores. Layer for layer the released layout, so its weights
  load by name (onestep.sync.score.convert_syncnet).
- `SyncExpert` is onestep's own, small enough to train on a CPU: mouth crops in [-1, 1], unit
  embeddings, trained contrastively on any shard set (onestep.stages.sync).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MFCC_SCALE = 20.0  # MFCCs (log energy first) are tens; the expert's input is ~unit range


def _tower(spec: list[tuple], dims: int) -> nn.Sequential:
    """conv + batch norm + ReLU per entry, each followed by its pooling if it names one."""
    conv, norm, pool = ((nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if dims == 2
                        else (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d))
    layers: list[nn.Module] = []
    for c_in, c_out, kernel, stride, padding, pooling in spec:
        layers += [conv(c_in, c_out, kernel, stride, padding), norm(c_out), nn.ReLU()]
        if pooling is not None:
            layers.append(pool(*pooling))
    return nn.Sequential(*layers)


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNetV2(nn.Module):
    """Released SyncNet: `video` (B, 3, 5, 224, 224) BGR 0–255, `audio` (B, 1, 13, 20) MFCCs."""

    normalized = False

    def __init__(self, dim: int = 1024):
        super().__init__()
        # (in, out, kernel, stride, padding, (pool kernel, pool stride[, pool padding]) or None)
        self.netcnnaud = _tower([
            (1, 64, 3, 1, 1, ((1, 1), (1, 1))), (64, 192, 3, 1, 1, ((3, 3), (1, 2))),
            (192, 384, 3, 1, 1, None), (384, 256, 3, 1, 1, None),
            (256, 256, 3, 1, 1, ((3, 3), (2, 2))), (256, 512, (5, 4), 1, 0, None)], 2)
        self.netfcaud = _head(dim)
        self.netfclip = _head(dim)
        flat = (1, 3, 3)
        self.netcnnlip = _tower([
            (3, 96, (5, 7, 7), (1, 2, 2), 0, (flat, (1, 2, 2))),
            (96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1), (flat, (1, 2, 2), (0, 1, 1))),
            (256, 256, flat, 1, (0, 1, 1), None), (256, 256, flat, 1, (0, 1, 1), None),
            (256, 256, flat, 1, (0, 1, 1), (flat, (1, 2, 2))),
            (256, 512, (1, 6, 6), 1, 0, None)], 3)

    def video(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))

    def audio(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))


def _block(c_in: int, c_out: int, stride) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU()]


class SyncExpert(nn.Module):
    """onestep's expert: `video` (B, 3, 5, size, size) mouth crops in [-1, 1], `audio`
    (B, 1, 13, 20) MFCCs; unit-length embeddings. Group norms, not batch norms: a window is
    scored alone as well as in a batch."""

    normalized = True

    def __init__(self, size: int = 32, width: int = 32, dim: int = 128):
        super().__init__()
        w = width
        # The 5 frames are fused first (what moves between them is the signal), then the mouth.
        self.frames = nn.Sequential(nn.Conv3d(3, w, (5, 3, 3), padding=(0, 1, 1)),
                                    nn.GroupNorm(min(8, w), w), nn.SiLU())
        self.mouth = nn.Sequential(*_block(w, 2 * w, 2), *_block(2 * w, 4 * w, 2),
                                   *_block(4 * w, 4 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(4 * w, dim))
        self.sound = nn.Sequential(*_block(1, w, 1), *_block(w, 2 * w, (1, 2)),
                                   *_block(2 * w, 4 * w, 2), *_block(4 * w, 4 * w, 2),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, dim))
        self.size = size

    def video(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mouth(self.frames(x).squeeze(2)), dim=-1)

    def audio(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.sound(x / MFCC_SCALE), dim=-1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of (B, 3, 5, s, s) mouth windows and (N, 1, 13, 20) audio windows."""
        return self.video(video), self.audio(audio)
