"""ArcFace identity from a local ONNX file. No ArcFace weights can be downloaded here, so the
tests build small ONNX networks with ArcFace's interface ((N, 3, S, S) faces in, (N, D)
embeddings out) — not its ResNet — to check the preprocessing, the similarity and the refusals."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onestep.evaluation.identity import ArcFace, ArcFaceError


def onnx_model(path, side: int = 112, width: int = None, embed: int = 512, conv: bool = True):
    """An ONNX graph (N, 3, side, width) → (N, embed): a strided conv and a dense layer with
    random weights, or (conv=False) just the flattened input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = width or side
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if conv:
        k = side // 14
        inits += [numpy_helper.from_array(rng.standard_normal((16, 3, k, k)).astype(np.float32),
                                          "w1"),
                  numpy_helper.from_array(rng.standard_normal((16 * 14 * 14, embed))
                                          .astype(np.float32) / 50, "w2")]
        nodes += [helper.make_node("Conv", ["input.1", "w1"], ["c"], strides=[k, k]),
                  helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("Flatten", ["r"], ["f"]),
                  helper.make_node("MatMul", ["f", "w2"], ["683"])]
        out_dim = embed
    else:
        nodes.append(helper.make_node("Flatten", ["input.1"], ["683"]))
        out_dim = 3 * side * width
    graph = helper.make_graph(
        nodes, "arcface-interface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, side, width])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", out_dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_insightface_preprocessing_and_cosine_similarity(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    # A network that returns its input: the embedding is the preprocessed face itself.
    plain = ArcFace.load(str(onnx_model(tmp_path / "plain.onnx", side=8, conv=False)))
    x = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(8, 8),
                      mode="bilinear", antialias=True, align_corners=False)
    expected = ((x - 127.5) / 127.5).flatten(1).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(plain.embed(frames), expected, atol=1e-6)

    arcface = ArcFace.load(str(onnx_model(tmp_path / "arcface.onnx")))
    face = frames[0]
    assert arcface.similarity(np.repeat(face[None], 3, 0), face) == pytest.approx(1.0, abs=1e-5)
    assert arcface.similarity(frames[1:], face) < 0.999


def test_files_that_are_not_arcface_are_refused_by_name(tmp_path):
    (tmp_path / "notes.onnx").write_text("not a model")
    with pytest.raises(ArcFaceError, match="notes.onnx: not an ONNX model onnxruntime can load"):
        ArcFace.load(str(tmp_path / "notes.onnx"))
    wrong = onnx_model(tmp_path / "wide.onnx", side=8, width=6, conv=False)
    with pytest.raises(ArcFaceError, match=r"wide.onnx: input input.1 has shape .* ArcFace takes "
                                           r"\(N, 3, S, S\) faces"):
        ArcFace.load(str(wrong))
    with pytest.raises(ArcFaceError, match="missing.onnx: no such file"):
        ArcFace.load(str(tmp_path / "missing.onnx"))
