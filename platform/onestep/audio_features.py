"""Audio encoders: waveform → feature vectors at `feature_rate` per second (50 Hz = 2 per frame).

Three implementations behind one call signature:
- `LogMelEncoder`: no weights; the tiny default.
- `MfccEncoder`: 13 MFCCs at 100 Hz exactly as SyncNet computes them (python_speech_features on
  16-bit-scaled samples), what the lip-sync expert (onestep.sync) hears.
- `Wav2Vec2Encoder`: a `transformers` Wav2Vec2 loaded from a local directory (no hub access);
  TurboTalk's choice. Its native rate is 50 Hz, so both encoders align with video frames the same way.
Features are computed in Ray Data tasks (training) and in the generator (inference) by the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from onestep.config import AudioConfig

MFCC_COEFFICIENTS = 13


def num_features(num_samples: int, cfg: AudioConfig) -> int:
    return int(round(num_samples * cfg.feature_rate / cfg.sample_rate))


def _mel_filterbank(n_mels: int, n_fft: int, sr: int) -> torch.Tensor:
    hz_to_mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    mel_to_hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(sr / 2), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1 / sr)
    fb = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        lo, mid, hi = edges[i:i + 3]
        fb[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return torch.tensor(fb, dtype=torch.float32)


class LogMelEncoder:
    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self.hop = cfg.sample_rate // cfg.feature_rate
        self.n_fft = 2 * self.hop
        self.fb = _mel_filterbank(cfg.n_mels, self.n_fft, cfg.sample_rate)
        self.window = torch.hann_window(self.n_fft)
        self.dim = cfg.n_mels

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """(S,) float32 → (T, n_mels) with T = num_features(S); scaled to roughly unit range."""
        x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True,
                          return_complex=True).abs().pow(2)  # (n_fft/2+1, T+1)
        mel = torch.log(self.fb @ spec + 1e-6)
        out = ((mel + 6.0) / 4.0).T[: num_features(len(x), self.cfg)]
        return out.numpy().astype(np.float32)


class MfccEncoder:
    """SyncNet's audio input: python_speech_features' MFCCs (25 ms windows every 10 ms, 13
    coefficients, log energy first) of the waveform at 16-bit scale, as syncnet_python reads a
    WAV file; so a SyncNet checkpoint scores onestep's audio as it scored its own."""

    dim = MFCC_COEFFICIENTS

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        from python_speech_features import mfcc

        t = num_features(len(audio), self.cfg)
        samples = np.asarray(audio, dtype=np.float64) * 32767
        if len(samples) < int(0.025 * self.cfg.sample_rate):
            return np.zeros((t, self.dim), np.float32)
        out = mfcc(samples, self.cfg.sample_rate, winstep=1 / self.cfg.feature_rate,
                   numcep=self.dim)
        # The last partial window is dropped: pad to one row per 10 ms, as the other encoders.
        out = np.pad(out, ((0, max(0, t - len(out))), (0, 0)), mode="edge")[:t]
        return out.astype(np.float32)


class Wav2Vec2Encoder:
    def __init__(self, cfg: AudioConfig):
        from transformers import Wav2Vec2Model

        path = Path(cfg.wav2vec2_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"audio.wav2vec2_path={cfg.wav2vec2_path!r}: expected a local "
                                    "transformers Wav2Vec2 directory with config.json")
        self.cfg = cfg
        self.model = Wav2Vec2Model.from_pretrained(str(path), local_files_only=True,
                                                   use_safetensors=True).eval()
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        x = (x - x.mean()) / (x.std() + 1e-7)  # what Wav2Vec2FeatureExtractor does
        hidden = self.model(x[None]).last_hidden_state  # (1, T', D) at ~50 Hz
        t = num_features(len(x), self.cfg)
        # Wav2Vec2's conv stack drops a partial frame at the end; resample to exactly T.
        out = torch.nn.functional.interpolate(hidden.transpose(1, 2), size=t, mode="linear",
                                              align_corners=False)
        return out[0].T.numpy().astype(np.float32)


def build_audio_encoder(cfg: AudioConfig):
    return {"wav2vec2": Wav2Vec2Encoder, "mfcc": MfccEncoder}.get(cfg.encoder,
                                                                  LogMelEncoder)(cfg)


def feature_dim(cfg: AudioConfig) -> int:
    """Feature width without loading weights (the model is built before any audio is seen)."""
    if cfg.encoder == "wav2vec2":
        config = Path(cfg.wav2vec2_path) / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"audio.wav2vec2_path={cfg.wav2vec2_path!r}: no config.json")
        return int(json.loads(config.read_text())["hidden_size"])
    return MFCC_COEFFICIENTS if cfg.encoder == "mfcc" else cfg.n_mels
