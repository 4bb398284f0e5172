"""FID on the Inception papers use, from a local file: the plumbing on a randomly initialised
network of that architecture (the released weights cannot be downloaded here).

The released file is a PyTorch pickle; jobs/convert_weights.py reads it tensors-only and writes
safetensors, and onestep's FID on those equals torchmetrics' FrechetInceptionDistance given the
original file.
"""

import pickle

import numpy as np
import pytest
import torch

from onestep.evaluation import metrics as M
from onestep.evaluation.fid import FidWeightsError, InceptionFeatures, inception_network


def random_inception(folder) -> tuple:
    """(the .pth as released, its conversion): a randomly initialised FID Inception."""
    import convert_weights

    torch.manual_seed(0)
    released, converted = folder / "pt_inception.pth", folder / "inception.safetensors"
    torch.save(inception_network().state_dict(), released)
    convert_weights.main(["inception", str(released), str(converted)])
    return released, converted


def test_fid_equals_torchmetrics_with_the_same_weights(tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    released, converted = random_inception(tmp_path)
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-60, 60, real.shape), 0, 255).astype(np.uint8)
    features = InceptionFeatures.load(str(converted))
    ours = M.frechet_distance(features(fake), features(real))
    theirs = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(released))
    for frames, is_real in ((real, True), (fake, False)):
        theirs.update(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), real=is_real)
    assert ours > 0 and ours == pytest.approx(float(theirs.compute()), rel=1e-3)
    # Every second frame: half the network evaluations, the same statistic of fewer samples.
    assert InceptionFeatures.load(str(converted), stride=2)(real).shape == (12, 2048)


def test_other_files_are_refused_by_name(tmp_path):
    import convert_weights

    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(pickle.dumps({"weight": torch.zeros(2), "run": print}))
    with pytest.raises(SystemExit, match="hostile.pth: not a file of tensors torch can load"):
        convert_weights.main(["inception", str(hostile), str(tmp_path / "x.safetensors")])
    other = tmp_path / "resnet.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), other)
    with pytest.raises(SystemExit, match="resnet.pth: not weights of FID's Inception .*472 keys "
                                         "missing"):
        convert_weights.main(["inception", str(other), str(tmp_path / "y.safetensors")])
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(FidWeightsError, match="text.safetensors: not a safetensors file"):
        InceptionFeatures.load(str(tmp_path / "text.safetensors"))
