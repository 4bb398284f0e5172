import dataclasses

import numpy as np
import pytest
import torch

from onestep.audio_features import build_audio_encoder, feature_dim, num_features
from onestep.config import AudioConfig, load_config
from onestep.model import build_model


def test_logmel_is_aligned_two_per_frame():
    cfg = AudioConfig()
    audio = np.zeros(16000 * 2, np.float32)
    audio[16000:16640] = 0.5 * np.sin(np.arange(640) * 0.3)  # one 25 fps frame of sound at 1 s
    feats = build_audio_encoder(cfg)(audio)
    assert feats.shape == (num_features(len(audio), cfg), 40) == (100, 40)
    energy = feats.mean(axis=1)
    assert set(np.argsort(energy)[-2:]) <= {49, 50, 51, 52}  # features 50, 51 ↔ frame 25


@pytest.fixture
def tiny_wav2vec2(tmp_path):
    """A randomly initialised, tiny Wav2Vec2 saved like a real one (no download possible)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(32, 32, 32, 32, 32, 32, 32),
                            num_feat_extract_layers=7, vocab_size=16)
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def test_wav2vec2_loads_from_a_local_directory(tiny_wav2vec2):
    cfg = AudioConfig(encoder="wav2vec2", wav2vec2_path=str(tiny_wav2vec2))
    assert feature_dim(cfg) == 32
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    feats = build_audio_encoder(cfg)(audio)
    assert feats.shape == (50, 32) and np.isfinite(feats).all()
    model_cfg = load_config("tiny")
    model_cfg = dataclasses.replace(model_cfg, audio=cfg)
    assert build_model(model_cfg).audio_adapter.mlp[0].in_features == 2 * 5 * 32


def test_wav2vec2_missing_directory_is_a_clear_error(tmp_path):
    cfg = AudioConfig(encoder="wav2vec2", wav2vec2_path=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="wav2vec2_path"):
        build_audio_encoder(cfg)
