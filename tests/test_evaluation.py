"""The evaluation's bounds: ground truth scores near-perfect sync, shuffled audio near zero."""

import numpy as np
import pytest

from onestep.config import SynthConfig
from onestep.evaluation import metrics as M
from onestep.evaluation.mouth_reader import load_or_train
from onestep.evaluation.run import load_eval_clips
from onestep.shards import clip_row, rows_to_parquet, shard_name, write_manifest
from onestep.storage import resolve
from onestep.synth import make_clip

CFG = SynthConfig(resolution=32, clip_seconds=2.4)


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    path = tmp_path_factory.mktemp("reader") / "reader.safetensors"
    model, ceiling = load_or_train(str(path), CFG, clips=48, epochs=3)
    reloaded, saved_ceiling = load_or_train(str(path), CFG)  # reused, not retrained
    assert saved_ceiling == pytest.approx(ceiling)
    return reloaded, ceiling


def test_ground_truth_video_has_near_perfect_sync_and_shuffled_has_none(reader):
    model, ceiling = reader
    assert ceiling > 0.85
    clips = [make_clip(i, CFG) for i in range(500, 508)]
    true_sync, shuffled = [], []
    for i, clip in enumerate(clips):
        read, _ = model.read(clip.clean_frames)
        true_sync.append(M.correlation(read, clip.labels["mouth_open"]))
        shuffled.append(M.correlation(read, clips[(i + 1) % len(clips)].labels["mouth_open"]))
        assert M.best_offset(read, clip.labels["mouth_open"])[0] == 0
    assert np.mean(true_sync) > 0.85
    assert abs(np.mean(shuffled)) < 0.2


def test_offset_is_recovered():
    rng = np.random.default_rng(0)
    truth = np.convolve(rng.standard_normal(200), np.ones(3) / 3, mode="same")
    lagged = np.concatenate([np.zeros(3), truth[:-3]])  # video 3 frames late
    assert M.best_offset(lagged, truth)[0] == 3


def test_image_metric_bounds():
    rng = np.random.default_rng(0)
    a = (rng.random((4, 32, 32, 3)) * 255).astype(np.uint8)
    assert M.ssim(a, a) == pytest.approx(1.0)
    assert M.psnr(a, a) > 90
    smooth = np.broadcast_to(np.linspace(40, 200, 32)[None, None, :, None],
                             (4, 32, 32, 3)).astype(np.uint8)
    noisy = np.clip(smooth + rng.integers(-40, 40, smooth.shape), 0, 255).astype(np.uint8)
    assert M.psnr(smooth, noisy) < 25 and M.ssim(smooth, noisy) < 0.5
    assert M.flicker(np.repeat(a[:1], 5, axis=0)) == 0
    assert M.identity_similarity(a[:1], a[0]) == pytest.approx(1.0)


def test_image_metrics_agree_with_torchmetrics_published_definitions():
    """SSIM, PSNR and the Fréchet distance are the numbers papers report (torchmetrics)."""
    import torch
    from torchmetrics.functional.image import (peak_signal_noise_ratio,
                                               structural_similarity_index_measure)
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(1)
    a = (rng.random((3, 48, 40, 3)) * 255).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    ta, tb = (torch.from_numpy(x).permute(0, 3, 1, 2).double() for x in (a, b))
    # Computed apart from onestep's helper: the Gaussian window (11, σ 1.5) is the default.
    expected = structural_similarity_index_measure(ta, tb, data_range=255.0, kernel_size=11,
                                                   sigma=1.5, gaussian_kernel=True)
    assert M.ssim(a, b) == pytest.approx(float(expected), abs=1e-9)
    assert 0.3 < M.ssim(a, b) < 0.99
    assert M.psnr(a, b) == pytest.approx(float(peak_signal_noise_ratio(ta, tb, data_range=255.0)),
                                         abs=1e-6)
    f1, f2 = rng.standard_normal((200, 6)), rng.standard_normal((150, 6)) * 1.3 + 0.4
    theirs = _compute_fid(torch.from_numpy(f1.mean(0)), torch.from_numpy(np.cov(f1, rowvar=False)),
                          torch.from_numpy(f2.mean(0)), torch.from_numpy(np.cov(f2, rowvar=False)))
    assert M.frechet_distance(f1, f2) == pytest.approx(float(theirs), rel=1e-6)


def test_frechet_distance_is_zero_for_equal_sets_and_grows_with_shift():
    f = np.random.default_rng(0).standard_normal((500, 8))
    assert M.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(f, f + 1.0) == pytest.approx(8.0, rel=1e-3)


def test_clips_with_an_audio_video_offset_are_not_evaluated(tmp_path):
    """Their labels describe the video, not the shifted audio a generator follows."""
    cfg = SynthConfig(resolution=32, clip_seconds=0.4, degraded_fraction=1.0, clips_per_shard=64,
                      num_clips=64, test_identity_fraction=1.0)
    clips = [make_clip(i, cfg) for i in range(cfg.num_clips)]
    offset = {c.clip_id for c in clips if "offset" in c.degradations}
    assert 0 < len(offset) < len(clips)
    root = resolve(str(tmp_path))
    root.join(shard_name(0)).write_bytes(rows_to_parquet([clip_row(c, cfg.fps, cfg.sample_rate)
                                                          for c in clips]))
    write_manifest(root, [{"name": shard_name(0), "rows": len(clips)}], {})

    loaded = {c.clip_id for c in load_eval_clips(str(tmp_path), limit=len(clips))}
    assert loaded == {c.clip_id for c in clips} - offset


def test_the_table_judges_each_model_against_the_first():
    from onestep.evaluation.run import TABLE, markdown_table

    row = {k: 1.0 for k, _ in TABLE}
    table = markdown_table({"teacher": {**row, "sync": 0.5, "compute_s_per_video_s": 2.0},
                            "1-step": {**row, "sync": 0.4, "compute_s_per_video_s": 0.05}})
    header, _, teacher, student = table.splitlines()
    assert header.endswith("| lip-sync ÷ teacher's | speed-up vs teacher |")
    assert teacher.endswith("| 1.00× | 1.0× |") and student.endswith("| 0.80× | 40.0× |")
    assert "speed-up" not in markdown_table({"alone": row})


def test_boundary_jump_sees_where_chunks_hand_over():
    starts = [8, 14, 20]  # 8-frame chunks overlapping by 2
    ramp = np.arange(26, dtype=np.float64)[:, None, None, None] * np.ones((26, 4, 4, 3))
    assert M.boundary_jump(ramp, starts) == pytest.approx(1.0)  # smooth motion: no seam
    assert M.boundary_jump(ramp, starts, order=2) == 1.0  # no acceleration anywhere
    jumpy = ramp.copy()
    for start in starts:
        jumpy[start:] += 5.0  # each chunk starts 5 levels off where the last one ended
    assert M.boundary_jump(jumpy, starts) == pytest.approx(6.0)  # 1 + 5 across, 1 inside
    # Motion: a jittering ramp (second differences ±1 everywhere); the seams add ±5 to the
    # two second differences that span each of them.
    jitter = ramp + 0.5 * (np.arange(26) % 2)[:, None, None, None]
    assert M.boundary_jump(jitter, starts, order=2) == pytest.approx(1.0)
    for start in starts:
        jitter[start:] += 5.0
    assert M.boundary_jump(jitter, starts, order=2) == pytest.approx(4.0)  # |±1 ∓ 5| over 1
