"""Identity similarity by ArcFace, from a local ONNX file (insightface's export, e.g.
w600k_r50.onnx): the cosine similarity of each generated frame's face embedding to the
reference portrait's, as talking-head papers report identity preservation (CSIM).

ONNX runs the network as a graph (onnxruntime); nothing is unpickled. ArcFace expects faces
aligned to five landmarks; onestep's frames are already face crops (SynthTalk renders, ingest's
tracked square crops), which are resized whole to the network's input instead — close to, not
the same as, the aligned crops of published numbers, so compare ArcFace scores within a table.
Without a file, `metrics.identity_similarity` (colour thumbnails) stands in and the report says so.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from onestep.storage import resolve


class ArcFaceError(ValueError):
    """An ONNX file that is not an ArcFace embedder; the message names it and what is wrong."""


class ArcFace:
    """uint8 (N, H, W, 3) RGB faces → L2-normalised embeddings, insightface's preprocessing:
    (x − 127.5) / 127.5 at the model's square input size, NCHW, RGB."""

    def __init__(self, model_bytes: bytes, name: str, batch: int = 32):
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(model_bytes,
                                                        providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own errors for a damaged or foreign file
            raise ArcFaceError(f"{name}: not an ONNX model onnxruntime can load "
                               f"({str(e).splitlines()[0][:200]})") from None
        (inp,), outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inp.shape
        if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or not isinstance(shape[2],
                                                                                      int):
            raise ArcFaceError(f"{name}: input {inp.name} has shape {shape}; ArcFace takes "
                               "(N, 3, S, S) faces, e.g. (N, 3, 112, 112)")
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            raise ArcFaceError(f"{name}: expected one (N, D) embedding output, got "
                               f"{[o.shape for o in outputs]}")
        self.input, self.size, self.batch = inp.name, shape[2], batch

    @classmethod
    def load(cls, uri: str, endpoint_url: str = "") -> ArcFace:
        loc = resolve(uri, endpoint_url)
        if not loc.exists():
            raise ArcFaceError(f"{uri}: no such file")
        return cls(loc.read_bytes(), uri)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                          align_corners=False)
        x = ((x - 127.5) / 127.5).numpy()
        out = np.concatenate([self.session.run(None, {self.input: x[i:i + self.batch]})[0]
                              for i in range(0, len(x), self.batch)])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def similarity(self, frames: np.ndarray, reference: np.ndarray) -> float:
        """Mean cosine similarity of the frames' embeddings to the reference's."""
        return float((self.embed(frames) @ self.embed(reference[None])[0]).mean())
