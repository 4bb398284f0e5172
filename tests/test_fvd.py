"""FVD on Kinetics-400 I3D from a local file: the plumbing on a randomly initialised network of
that architecture (the released weights cannot be downloaded here), in pytorch-i3d's parameter
layout, converted once, tensors-only."""

import math
import pickle

import numpy as np
import pytest
import torch

from onestep.evaluation import metrics as M
from onestep.evaluation.fvd import FvdWeightsError, I3DFeatures, _same_pad, i3d_network


def random_i3d(folder) -> tuple:
    """(the .pt as pytorch-i3d ships it, its conversion): a randomly initialised I3D."""
    import convert_weights

    torch.manual_seed(0)
    released, converted = folder / "rgb_imagenet.pt", folder / "i3d.safetensors"
    torch.save(i3d_network().state_dict(), released)
    convert_weights.main(["i3d", str(released), str(converted)])
    return released, converted


def test_same_padding_is_tensorflows():
    for size in range(1, 40):
        for kernel in (1, 2, 3, 7):
            for stride in (1, 2):
                out = math.ceil(size / stride)
                total = max((out - 1) * stride + kernel - size, 0)  # TF's definition
                assert sum(_same_pad(size, kernel, stride)) == total
                front, back = _same_pad(size, kernel, stride)
                assert back - front in (0, 1)  # TF puts the odd pixel at the end


def test_fvd_of_windows_from_the_converted_network(tmp_path):
    released, converted = random_i3d(tmp_path)
    features = I3DFeatures.load(str(converted))
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    out = features(video)
    assert out.shape == (2, 400)  # two whole 16-frame windows; the 8 frames left are not one
    original = i3d_network(torch.load(released, weights_only=True))
    x = torch.nn.functional.interpolate(torch.from_numpy(video[:16]).permute(0, 3, 1, 2).float(),
                                        size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        direct = original((x / 127.5 - 1).permute(1, 0, 2, 3)[None])
    np.testing.assert_allclose(out[0], direct[0].double().numpy(), rtol=1e-5, atol=1e-5)
    real = [rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
    fake = [np.clip(v.astype(int) + 80, 0, 255).astype(np.uint8) for v in real]
    f_real = np.concatenate([features.real(f"clip{i}", v) for i, v in enumerate(real)])
    assert M.frechet_distance(f_real, f_real) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(np.concatenate([features(v) for v in fake]), f_real) > 0
    with pytest.raises(ValueError, match="FVD needs videos of at least 16 frames, got 10"):
        features(video[:10])


def test_other_files_are_refused_by_name(tmp_path):
    import convert_weights

    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps({"w": torch.zeros(1), "run": exec}))
    with pytest.raises(SystemExit, match="hostile.pt: not a file of tensors torch can load"):
        convert_weights.main(["i3d", str(hostile), str(tmp_path / "x.safetensors")])
    inception = tmp_path / "inception.pt"
    torch.save({"fc.weight": torch.zeros(4, 4)}, inception)
    with pytest.raises(SystemExit, match="inception.pt: not weights of Kinetics-400 I3D in "
                                         "pytorch-i3d's layout .*287 keys missing"):
        convert_weights.main(["i3d", str(inception), str(tmp_path / "y.safetensors")])
    with pytest.raises(FvdWeightsError, match="nothing.safetensors: no such file"):
        I3DFeatures.load(str(tmp_path / "nothing.safetensors"))
