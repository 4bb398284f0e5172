"""A small CNN that reads mouth opening/width from a frame: our lip-sync "expert".

Trained once on SynthTalk frames of training identities against their ground-truth labels, saved
as safetensors and reused; its correlation with the truth on held-out identities is the ceiling
every lip-sync number is read against. Its penultimate features are also the fixed feature space
of our Fréchet distance (the FID analogue).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from safetensors.torch import load, save
from torch import nn

from onestep.config import SynthConfig
from onestep.storage import resolve
from onestep.synth import make_clip

log = logging.getLogger(__name__)


class MouthReader(nn.Module):
    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(32 * (resolution // 4) ** 2, 64), nn.SiLU())
        self.head = nn.Linear(64, 2)  # (mouth_open, mouth_width)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] → predictions (N, 2), features (N, 64)."""
        f = self.features(frames)
        return self.head(f), f

    @torch.no_grad()
    def read(self, frames: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, 3) → mouth opening (N,) and features (N, 64)."""
        x = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 127.5 - 1
        outs = [self(x[i:i + batch]) for i in range(0, len(x), batch)]
        return (torch.cat([o[0][:, 0] for o in outs]).numpy(),
                torch.cat([o[1] for o in outs]).numpy())


def train_mouth_reader(cfg: SynthConfig, clips: int = 160, epochs: int = 4, seed: int = 0
                       ) -> tuple[MouthReader, float]:
    """Train on clean renders of training identities; return (reader, held-out correlation).

    Clips are drawn from indices beyond the data set (a disjoint seed range), train split only
    for fitting and test split for the reported correlation.
    """
    torch.manual_seed(seed)
    pool = [make_clip(i, cfg) for i in range(10**6, 10**6 + clips)]
    train = [c for c in pool if c.split == "train"]
    test = [c for c in pool if c.split == "test"]
    stack = lambda cs: (np.concatenate([c.clean_frames for c in cs]),  # noqa: E731
                        np.concatenate([np.stack([c.labels["mouth_open"],
                                                  c.labels["mouth_width"]], 1) for c in cs]))
    x_np, y_np = stack(train)
    x = torch.from_numpy(x_np).float().permute(0, 3, 1, 2) / 127.5 - 1
    y = torch.from_numpy(y_np).float()
    model = MouthReader(cfg.resolution)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.mse_loss(model(x[idx])[0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        log.info("mouth reader epoch %d/%d: loss %.4f", epoch + 1, epochs, loss.item())
    model.eval()
    tx, ty = stack(test)
    pred, _ = model.read(tx)
    return model, float(np.corrcoef(pred, ty[:, 0])[0, 1])


def load_or_train(uri: str, cfg: SynthConfig, clips: int = 160, epochs: int = 4,
                  endpoint_url: str = "") -> tuple[MouthReader, float]:
    """Reuse a saved reader (safetensors, local or s3://) or train and save one.

    Training workers on other nodes load it by URI, so a cluster keeps it in shared storage."""
    loc = resolve(uri, endpoint_url)
    model = MouthReader(cfg.resolution)
    if loc.exists():
        state = load(loc.read_bytes())
        ceiling = float(state.pop("_heldout_correlation").item())
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{uri}: not a mouth reader for {cfg.resolution}×{cfg.resolution} "
                             f"frames ({str(e).splitlines()[0]})") from None
        return model.eval(), ceiling
    log.info("training the mouth reader (once; saved to %s)", uri)
    model, ceiling = train_mouth_reader(cfg, clips, epochs)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["_heldout_correlation"] = torch.tensor(ceiling)
    loc.write_bytes(save(state))
    return model, ceiling
