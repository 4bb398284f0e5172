"""FID's feature network, from a local file: the Inception papers compute FID with.

FID is only comparable across papers when the features come from the 2015 TensorFlow Inception
graph; torch-fidelity ports it exactly (torchmetrics' FID uses the same port), and its weights
file is `pt_inception-2015-12-05-6726825d.pth`. Nothing is downloaded here, and nothing is
unpickled at run time: `jobs/convert_weights.py inception` turns that file into safetensors once
(read tensors-only), and this module builds torch-fidelity's network and loads the tensors.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from onestep.tensor_files import check_state, read_safetensors, read_torch_tensors, write_tensors

FEATURES = "2048"  # the pool features FID is defined on


class FidWeightsError(ValueError):
    """A weights file that is not FID's Inception; the message names it and the mismatch."""


class _Inception(FeatureExtractorInceptionV3):
    """torch-fidelity's network without its loader (a download, or an unpickling torch.load):
    it is built around an empty state of our own making, then given checked tensors."""

    _building = False

    def __init__(self):
        with tempfile.NamedTemporaryFile(suffix=".pt") as empty:
            torch.save({}, empty.name)
            _Inception._building = True
            try:
                super().__init__("onestep-inception", [FEATURES],
                                 feature_extractor_weights_path=empty.name)
            finally:
                _Inception._building = False

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if _Inception._building:  # the constructor's load of the empty state
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def inception_network(state: dict[str, torch.Tensor] | None = None,
                      name: str = "weights") -> torch.nn.Module:
    """FID's Inception with `state` (None: randomly initialised, for tests of the plumbing)."""
    model = _Inception()
    if state is not None:
        check_state(state, model, name, FidWeightsError,
                    "FID's Inception (torch-fidelity's pt_inception-2015-12-05)")
        model.load_state_dict(state, strict=False)
    return model.eval()


def convert_inception(src: Path, dest: Path) -> int:
    """pt_inception-2015-12-05-6726825d.pth → safetensors, checked against the network."""
    state = read_torch_tensors(src, FidWeightsError)
    inception_network(state, str(src))
    return write_tensors(state, dest, "fid_inception")


class InceptionFeatures:
    """uint8 (N, H, W, 3) frames → (N, 2048) pool features of FID's Inception, of every
    `stride`-th frame (FID over a video set is a statistic of its frames; neighbours add little
    but time). A clip's ground-truth features are computed once per evaluation run."""

    def __init__(self, model: torch.nn.Module, stride: int = 1, batch: int = 32):
        self.model, self.stride, self.batch = model, stride, batch
        self._real: dict[str, np.ndarray] = {}

    def real(self, clip_id: str, frames: np.ndarray) -> np.ndarray:
        if clip_id not in self._real:
            self._real[clip_id] = self(frames)
        return self._real[clip_id]

    @classmethod
    def load(cls, uri: str, endpoint_url: str = "", stride: int = 1) -> InceptionFeatures:
        state = read_safetensors(uri, endpoint_url, FidWeightsError,
                                 "jobs/convert_weights.py inception")
        return cls(inception_network(state, uri), stride)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frames[::self.stride])).permute(0, 3, 1, 2)
        return torch.cat([self.model(x[i:i + self.batch])[0]
                          for i in range(0, len(x), self.batch)]).double().numpy()
