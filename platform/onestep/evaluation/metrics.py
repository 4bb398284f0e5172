"""Video metrics on uint8 (N, H, W, 3) frames: sync, image quality, distribution, identity, flicker."""

from __future__ import annotations

import numpy as np


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def best_offset(read: np.ndarray, truth: np.ndarray, max_lag: int = 5) -> tuple[int, float]:
    """The lag (frames) maximising correlation; positive = video lags the audio (Sync offset)."""
    best = (0, -2.0)
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            c = correlation(read[lag:], truth[:len(truth) - lag])
        else:
            c = correlation(read[:lag], truth[-lag:])
        if c > best[1]:
            best = (lag, c)
    return best


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM as published (Wang et al. 2004) and as papers report it: an 11×11 Gaussian
    window of σ 1.5 per colour channel, data range 255 (torchmetrics' implementation, so the
    number means what it means elsewhere; onestep's earlier 7×7 box window matched no paper)."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    def planar(x):
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).double()

    return float(structural_similarity_index_measure(planar(a), planar(b), data_range=255.0))


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (as FID)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def _thumb(frames: np.ndarray, size: int = 8) -> np.ndarray:
    n, h, w, c = frames.shape
    t = frames.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))
    t = t.reshape(n, -1)
    return t - t.mean(axis=1, keepdims=True)


def identity_similarity(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean cosine similarity of 8×8 colour thumbnails to the reference (identity proxy)."""
    g, r = _thumb(frames), _thumb(reference[None])[0]
    return float(np.mean(g @ r / (np.linalg.norm(g, axis=1) * np.linalg.norm(r) + 1e-9)))


def flicker(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames (0–255 scale)."""
    if len(frames) < 2:
        return 0.0
    return float(np.abs(np.diff(frames.astype(np.float64), axis=0)).mean())


def boundary_jump(frames: np.ndarray, starts: list[int], order: int = 1) -> float:
    """How much more a video changes where one generated chunk hands over to the next than
    inside a chunk (1: seamless; OSA-LCM's chunk-boundary problem shows as > 1).

    `starts`: the first frame of every chunk after the first. Order 1 compares frame
    differences (appearance: a seam in colour or position); order 2 compares the changes of
    the frame differences (motion: a head that moves, stops and moves again). A difference of
    order n spans n + 1 frames, so the ones that span a hand-over are "at" it and the ratio is
    the mean absolute difference at hand-overs over the mean of all the others."""
    if len(frames) < order + 1:
        return 1.0
    change = np.abs(np.diff(frames.astype(np.float64), n=order, axis=0)).mean(axis=tuple(
        range(1, frames.ndim)))  # change[i] spans frames i … i + order
    at = np.unique([i for s in starts for i in range(s - order, s)
                    if 0 <= i < len(change)]).astype(int)
    inside = np.setdiff1d(np.arange(len(change)), at)
    if not len(at) or not len(inside) or change[inside].mean() == 0:
        return 1.0
    return float(change[at].mean() / change[inside].mean())
