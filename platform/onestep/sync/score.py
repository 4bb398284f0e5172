"""A video's lip-sync scored by an expert the way SyncNet scores it, and the experts' weights.

For every 5-frame window of the video and every offset within ±`max_offset` frames, the distance
between the window's embedding and the embedding of the MFCCs the same 0.2 s later or earlier
(audio embeddings past either end are zeros, as in syncnet_python); the distances are averaged
over the windows per offset. Then, as in the literature's LSE metrics:

  distance    (LSE-D) the smallest mean distance: low when the mouth follows the sound
  confidence  (LSE-C) the median mean distance minus the smallest: how clearly one offset wins
  offset      SyncNet's AV offset at the smallest, in frames: positive when the sound leads the
              picture (a voice that comes d frames late gives −d)

With `kind: syncnet_v2` and the released weights these are the numbers papers report (on whole
face crops at 224×224). `kind: onestep` scores with onestep's own expert, trained on the data at
hand (jobs/train_sync.py); its numbers rank videos of one data set, not papers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from onestep.audio_features import MfccEncoder
from onestep.checkpoint import CONFIG, WEIGHTS, fetched
from onestep.config import SYNC_FRAMES, AudioConfig, SyncConfig, from_dict, read_yaml
from onestep.sync.model import SyncExpert, SyncNetV2
from onestep.tensor_files import check_state, read_safetensors, read_torch_tensors, write_tensors

MFCC_PER_FRAME = 4  # 100 Hz MFCCs against 25 fps video
SYNCNET_SIZE = 224


class SyncExpertError(ValueError):
    """Expert weights that cannot be used; the message names the file and the mismatch."""


@dataclass
class SyncScore:
    confidence: float
    distance: float
    offset: int


def mouth_region(x: torch.Tensor, region: list[float], size: int) -> torch.Tensor:
    """(n, 3, H, W) face crops → (n, 3, size, size): the `region` ([top, bottom, left, right]
    fractions) of each, resized. Training and scoring cut the mouth the same way."""
    h, w = x.shape[-2:]
    top, bottom, left, right = region
    x = x[..., int(top * h):max(int(top * h) + 1, int(bottom * h)),
          int(left * w):max(int(left * w) + 1, int(right * w))]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def _syncnet_frames(frames: np.ndarray) -> torch.Tensor:
    """Whole face crops as SyncNet was trained on them: 224×224, BGR, 0–255."""
    x = torch.from_numpy(np.ascontiguousarray(frames[..., ::-1])).permute(0, 3, 1, 2).float()
    return F.interpolate(x, size=(SYNCNET_SIZE, SYNCNET_SIZE), mode="bilinear",
                         align_corners=False, antialias=True)


def offset_distances(video: torch.Tensor, audio: torch.Tensor, max_offset: int) -> torch.Tensor:
    """(2K+1,) mean distance per offset; index K + d pairs video window i with audio i + d."""
    pad = F.pad(audio, (0, 0, max_offset, max_offset))
    rows = [F.pairwise_distance(video, pad[k:k + len(video)]) for k in range(2 * max_offset + 1)]
    return torch.stack(rows).mean(dim=1)


def lse(distances: torch.Tensor, max_offset: int) -> SyncScore:
    best = int(torch.argmin(distances))
    return SyncScore(confidence=float(distances.median() - distances[best]),
                     distance=float(distances[best]), offset=max_offset - best)


class SyncScorer:
    """An expert and how to feed it."""

    def __init__(self, model: SyncExpert | SyncNetV2, cfg: SyncConfig):
        self.model, self.cfg = model.eval(), cfg
        self.mfcc = MfccEncoder(AudioConfig(encoder="mfcc", feature_rate=100))

    def video_input(self, frames: np.ndarray) -> torch.Tensor:
        if isinstance(self.model, SyncNetV2):
            return _syncnet_frames(frames)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        return mouth_region(x / 127.5 - 1, self.cfg.mouth_region, self.cfg.size)

    @torch.no_grad()
    def embed(self, frames: np.ndarray, audio: np.ndarray, batch: int = 64
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of every 5-frame window and its 0.2 s of sound: (m, D) each, m windows as
        syncnet_python counts them (the shorter of picture and sound, less 5 frames)."""
        mfcc = torch.from_numpy(self.mfcc(audio))  # (T, 13)
        m = min(len(frames), len(mfcc) // MFCC_PER_FRAME) - SYNC_FRAMES
        if m < 1:
            raise ValueError(f"{len(frames)} frames and {len(audio)} samples: too short to score "
                             f"lip-sync (more than {SYNC_FRAMES} frames of both are needed)")
        pictures = self.video_input(frames[:m + SYNC_FRAMES - 1])  # (n, 3, s, s)
        video, sound = [], []
        for i in range(0, m, batch):
            idx = range(i, min(m, i + batch))
            clips = torch.stack([pictures[j:j + SYNC_FRAMES].transpose(0, 1) for j in idx])
            windows = torch.stack([mfcc[MFCC_PER_FRAME * j:MFCC_PER_FRAME * j + 20].T[None]
                                   for j in idx])
            video.append(self.model.video(clips))
            sound.append(self.model.audio(windows))
        return torch.cat(video), torch.cat(sound)

    def score(self, frames: np.ndarray, audio: np.ndarray) -> SyncScore:
        """(n, H, W, 3) uint8 frames at 25 fps and their mono 16 kHz audio."""
        video, sound = self.embed(frames, audio)
        return lse(offset_distances(video, sound, self.cfg.max_offset), self.cfg.max_offset)


def convert_syncnet(src: Path, dest: Path) -> int:
    """The released syncnet_v2 weights (a PyTorch file) → safetensors, once and explicitly:
    read tensors-only (`weights_only`), checked key by key against SyncNetV2, written
    atomically. Scoring then never unpickles anything. Returns the tensor count."""
    state = read_torch_tensors(src, SyncExpertError)
    check_state(state, SyncNetV2(), str(src), SyncExpertError)
    return write_tensors(state, dest, "syncnet_v2")


def load_scorer(cfg: SyncConfig, endpoint_url: str = "") -> SyncScorer:
    """The expert `cfg` names: converted syncnet_v2 weights (a .safetensors file), or an
    export of jobs/train_sync.py, whose own sync settings (crop, size, width) it is built with."""
    if not cfg.weights:
        raise SyncExpertError("sync.weights: empty; give an export of jobs/train_sync.py or "
                              "syncnet_v2 weights converted by jobs/convert_weights.py syncnet")
    if cfg.kind == "syncnet_v2":
        state = read_safetensors(cfg.weights, endpoint_url, SyncExpertError,
                                 "jobs/convert_weights.py syncnet")
        model = SyncNetV2()
        check_state(state, model, cfg.weights, SyncExpertError)
        model.load_state_dict(state, strict=False)
        return SyncScorer(model, cfg)
    with fetched(cfg.weights, endpoint_url) as path:
        trained = from_dict(read_yaml((path / CONFIG).read_text())).sync
        state = load_file(str(path / WEIGHTS))
    model = build_expert(trained)
    check_state(state, model, cfg.weights, SyncExpertError)
    model.load_state_dict(state)
    settings = copy.copy(trained)
    settings.max_offset, settings.weights = cfg.max_offset, cfg.weights
    return SyncScorer(model, settings)


def build_expert(cfg: SyncConfig) -> SyncExpert:
    return SyncExpert(cfg.size, cfg.width, cfg.embed_dim)

