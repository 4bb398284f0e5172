"""How much does a generator use the audio? A one-minute look at why lip-sync is weak.

    python benchmarks/audio_reliance.py --data DATA --model teacher=RUN_OR_CKPT \\
        [--model NAME=CKPT ...] --out reports/audio_reliance

Lip-sync from jobs/evaluate.py needs full chunked sampling (minutes per checkpoint) and is noisy
on a handful of clips. This measures the two things behind it directly:

1. What the data allows: a ridge regression from the audio window a model sees (log-mel
   features ±audio_context around each frame) to the labelled mouth opening, fitted on training
   clips and scored on held-out ones. High here and low lip-sync means the network, not the
   data, is the bottleneck.
2. What each network uses: its velocity-matching error at fixed noise levels t on one batch of
   held-out windows, with the true audio, with another clip's audio (shuffled) and with the null
   audio token, over the whole frame and over the mouth region. The mouth region is found from
   the labels: pixels whose brightness follows the mouth opening. Reliance
   = (shuffled − true) / shuffled in the mouth region: the share of the mouth error the audio
   removes. Near 0 means the network draws the mouth without listening.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _report import header, save

from onestep.audio_features import build_audio_encoder
from onestep.checkpoint import load_generator, resolve_checkpoint
from onestep.conditioning import make_conditions
from onestep.config import Config
from onestep.data import to_unit
from onestep.evaluation.run import EvalClip, load_eval_clips
from onestep.flow import add_noise
from onestep.model import build_codec
from onestep.model.audio_adapter import audio_context_window
from onestep.model.dit import Conditions


def audio_windows(clip: EvalClip, cfg: Config, encoder) -> tuple[np.ndarray, np.ndarray]:
    """(frames, (2k+1)·per_frame·D) audio windows and the (frames,) mouth labels they explain."""
    per_frame = cfg.audio.feature_rate // cfg.synth.fps
    feats = torch.from_numpy(encoder(clip.audio))[None]
    windows = audio_context_window(feats, cfg.model.audio_context)[0].numpy()
    n = min(len(clip.mouth_open), len(windows) // per_frame)
    return windows[:n * per_frame].reshape(n, -1), clip.mouth_open[:n]


def audio_ceiling(train: list[EvalClip], test: list[EvalClip], cfg: Config, encoder,
                  ridge: float = 10.0) -> dict:
    """Held-out correlation of a ridge regression audio window → mouth opening."""
    def stack(clips):
        xs, ys = zip(*(audio_windows(c, cfg, encoder) for c in clips))
        return np.concatenate(xs), np.concatenate(ys)

    (xtr, ytr), (xte, yte) = stack(train), stack(test)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    design = lambda x: np.c_[(x - mu) / sd, np.ones(len(x))]
    a = design(xtr)
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ ytr)
    return {"train_frames": len(ytr), "test_frames": len(yte),
            "ridge_train_corr": float(np.corrcoef(a @ w, ytr)[0, 1]),
            "ridge_test_corr": float(np.corrcoef(design(xte) @ w, yte)[0, 1])}


def mouth_mask(clips: list[EvalClip], threshold: float = 0.3) -> np.ndarray:
    """(H, W) bool: pixels whose brightness correlates with the mouth opening within clips."""
    num = den_x = den_y = 0.0
    for c in clips:
        n = min(len(c.clean_frames), len(c.mouth_open))
        x = c.clean_frames[:n].astype(np.float32).mean(-1)
        x = x - x.mean(0)
        y = c.mouth_open[:n] - c.mouth_open[:n].mean()
        num = num + np.tensordot(y, x, axes=(0, 0))
        den_x, den_y = den_x + (x ** 2).sum(0), den_y + (y ** 2).sum()
    corr = num / np.sqrt(den_x * den_y + 1e-12)
    return np.abs(corr) > threshold


def held_out_batch(clips: list[EvalClip], cfg: Config, encoder, codec, seed: int
                   ) -> tuple[torch.Tensor, Conditions]:
    """One window per clip (no motion frames, first frame as reference) → (x0, conditions)."""
    rng = np.random.default_rng(seed)
    per_frame, f_len = cfg.audio.feature_rate // cfg.synth.fps, cfg.data.frames
    videos, refs, audios = [], [], []
    for c in clips:
        feats = encoder(c.audio)
        n = min(len(c.clean_frames), len(feats) // per_frame)
        start = int(rng.integers(0, n - f_len + 1))
        videos.append(to_unit(c.clean_frames[start:start + f_len]))
        refs.append(to_unit(c.reference))
        audios.append(feats[start * per_frame:(start + f_len) * per_frame])
    x0 = codec.encode(torch.from_numpy(np.stack(videos)))
    cond = make_conditions(codec, torch.from_numpy(np.stack(refs)),
                           torch.from_numpy(np.stack(audios)), f_len, cfg.data.motion_frames)
    return x0, cond


def errors_by_audio(model, x0: torch.Tensor, cond: Conditions, t: float, mask: torch.Tensor,
                    seed: int) -> dict:
    """Velocity MSE (whole frame, mouth region) with true, shuffled and null audio at noise t."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    tt = torch.full((b,), t)
    xt, target = add_noise(x0, noise, tt), noise - x0
    keep, drop = torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)
    other = torch.roll(torch.arange(b), 1)  # each window gets its neighbour's audio
    variants = {"true": (cond.audio, keep), "shuffled": (cond.audio[other], keep),
                "null": (cond.audio, drop)}
    out = {}
    for name, (audio, drop_audio) in variants.items():
        c = Conditions(cond.ref, audio, cond.motion, cond.motion_mask, drop_audio, keep)
        with torch.no_grad():
            err = (model(xt, tt, c).float() - target) ** 2
        out[name] = float(err.mean())
        out[f"{name}_mouth"] = float((err * mask).sum() / (mask.sum() * err.shape[1] * err.shape[2]
                                                            * b))
    out["reliance_mouth"] = (out["shuffled_mouth"] - out["true_mouth"]) / out["shuffled_mouth"]
    out["reliance_frame"] = (out["shuffled"] - out["true"]) / out["shuffled"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="SynthTalk shards (local folder or s3://)")
    p.add_argument("--endpoint", default="", help="S3 endpoint override")
    p.add_argument("--model", action="append", required=True, metavar="NAME=CKPT")
    p.add_argument("--t", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--train-clips", type=int, default=96, help="clips the ridge is fitted on")
    p.add_argument("--test-clips", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/audio_reliance")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    models = []
    for spec in args.model:
        name, _, uri = spec.partition("=")
        model, cfg = load_generator(resolve_checkpoint(uri))
        models.append((name, model.eval(), cfg))
    cfg = models[0][2]
    encoder, codec = build_audio_encoder(cfg.audio), build_codec(cfg)
    test = load_eval_clips(args.data, args.endpoint, "test", args.test_clips)
    train = load_eval_clips(args.data, args.endpoint, "train", args.train_clips)
    ceiling = audio_ceiling(train, test, cfg, encoder)
    pixels = mouth_mask(test)
    f = cfg.codec.factor  # a latent position is in the mouth if any of its pixels is
    mask = F.max_pool2d(torch.from_numpy(pixels).float()[None, None], f)[0, 0]
    x0, cond = held_out_batch(test, cfg, encoder, codec, args.seed)

    rows = []
    for name, model, _ in models:
        for t in args.t:
            rows.append({"model": name, "t": t,
                         **errors_by_audio(model, x0, cond, t, mask, args.seed)})
            r = rows[-1]
            print(f"{name} t={t:g}: mouth error true {r['true_mouth']:.4f} shuffled "
                  f"{r['shuffled_mouth']:.4f} → reliance {r['reliance_mouth']:.3f}", flush=True)

    meta, lines = header("Audio reliance: what the data allows and what the network uses",
                         "audio_reliance.py", "CPU")
    ridge = (f"Data: `{args.data}`. Audio window → mouth opening, ridge regression fitted on "
             f"{len(train)} training clips ({ceiling['train_frames']} frames), scored on "
             f"{len(test)} held-out clips ({ceiling['test_frames']} frames): correlation "
             f"**{ceiling['ridge_test_corr']:.3f}** (train {ceiling['ridge_train_corr']:.3f}).")
    network = (f"Network error on one window from each of the {len(test)} held-out clips; mouth "
               f"region = {int(pixels.sum())} of {pixels.size} pixels. Reliance = (shuffled − "
               "true) / shuffled.")
    lines += [ridge, "", network, "",
              ("| model | t | MSE true | MSE shuffled | MSE null audio | mouth MSE true | "
               "mouth MSE shuffled | mouth MSE null | reliance (mouth) | reliance (frame) |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['t']:g} | {r['true']:.4f} | {r['shuffled']:.4f} | "
                     f"{r['null']:.4f} | {r['true_mouth']:.4f} | {r['shuffled_mouth']:.4f} | "
                     f"{r['null_mouth']:.4f} | {r['reliance_mouth']:.3f} | "
                     f"{r['reliance_frame']:.3f} |")
    save(Path(args.out), {**meta, "ceiling": ceiling, "mouth_pixels": int(pixels.sum())}, rows,
         lines)


if __name__ == "__main__":
    main()
