"""The lip-sync expert: SyncNet's scoring protocol, the released syncnet_v2 architecture behind a
one-time safe conversion, onestep's own expert trained as a Ray job, and the shipped expert
finding shifted sound tracks on held-out SynthTalk clips."""

from pathlib import Path

import numpy as np
import pytest
import torch

from onestep.config import SyncConfig
from onestep.sync.score import (SyncExpertError, SyncScorer, convert_syncnet, lse, load_scorer,
                                offset_distances)

SHIPPED = Path(__file__).resolve().parents[1] / "reports" / "pretrained" / "sync_expert"


def _held_out(n: int):
    from onestep.config import load_config
    from onestep.synth import make_clip

    cfg, clips, i = load_config("tiny").synth, [], 10_000
    while len(clips) < n:
        clip = make_clip(i, cfg)
        if clip.split == "test" and not clip.degradations:
            clips.append(clip)
        i += 1
    return clips


def test_offset_search_finds_the_shift_of_matching_embeddings():
    g = torch.Generator().manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
    for delay in (-4, 0, 3):  # the voice comes `delay` windows late
        audio = torch.roll(video, delay, dims=0)
        result = lse(offset_distances(video, audio, 6), 6)
        assert result.offset == -delay  # SyncNet's sign: a late voice reads negative
        assert result.confidence > 0.5 and result.distance < 0.5


def test_mfcc_features_are_syncnets(tmp_path):
    from python_speech_features import mfcc

    from onestep.audio_features import MfccEncoder
    from onestep.config import AudioConfig

    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    ours = MfccEncoder(AudioConfig(encoder="mfcc", feature_rate=100))(audio)
    theirs = mfcc(audio.astype(np.float64) * 32767, 16000)
    assert ours.shape == (100, 13)  # one row per 10 ms, the last partial window padded
    assert np.allclose(ours[:len(theirs)], theirs, atol=1e-3)


def test_syncnet_v2_weights_convert_once_and_score_as_the_released_model(tmp_path):
    from onestep.sync.model import SyncNetV2

    torch.manual_seed(0)
    released = SyncNetV2().eval()
    state = {k: v for k, v in released.state_dict().items()
             if not k.endswith("num_batches_tracked")}  # the 2017 file predates them
    torch.save(state, tmp_path / "syncnet_v2.model")
    assert convert_syncnet(tmp_path / "syncnet_v2.model", tmp_path / "syncnet_v2.safetensors") \
        == len(state)
    scorer = load_scorer(SyncConfig(kind="syncnet_v2",
                                    weights=str(tmp_path / "syncnet_v2.safetensors")))
    clip = _held_out(1)[0]
    frames = clip.clean_frames[:12]
    with torch.no_grad():  # the released model on the released input: BGR, 224×224, 0–255
        video, _ = scorer.embed(frames, clip.audio[:12 * 640])
        bgr = torch.from_numpy(frames[:5, :, :, ::-1].copy()).permute(3, 0, 1, 2).float()
        resized = torch.nn.functional.interpolate(bgr.transpose(0, 1), size=(224, 224),
                                                  mode="bilinear", antialias=True)
        assert torch.allclose(video[0], released.video(resized.transpose(0, 1)[None])[0],
                              atol=1e-4)
    result = scorer.score(clip.clean_frames, clip.audio)
    assert np.isfinite([result.confidence, result.distance]).all()

    import argparse  # any class: what an unsafe unpickle would construct

    torch.save({"netcnnaud.0.weight": argparse.Namespace()}, tmp_path / "hostile.model")
    with pytest.raises(SyncExpertError, match="hostile.model: not a file of tensors torch can "
                                              "load safely"):
        convert_syncnet(tmp_path / "hostile.model", tmp_path / "x.safetensors")
    torch.save({**state, "netfcaud.3.weight": torch.zeros(512, 512)}, tmp_path / "v1.model")
    with pytest.raises(SyncExpertError, match=r"v1.model: not weights of a SyncNetV2 \(shapes "
                                              r"differ: netfcaud.3.weight is \(512, 512\)"):
        convert_syncnet(tmp_path / "v1.model", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(SyncExpertError, match="syncnet_v2.model: not a safetensors file .* "
                                              "convert the released weights"):
        load_scorer(SyncConfig(kind="syncnet_v2", weights=str(tmp_path / "syncnet_v2.model")))
    with pytest.raises(SyncExpertError, match="sync.weights: empty"):
        load_scorer(SyncConfig())


def test_shipped_expert_finds_shifted_audio_and_tells_own_from_shuffled():
    """reports/pretrained/sync_expert: onestep's expert trained briefly on SynthTalk by
    jobs/train_sync.py (its command in reports/pretrained/README.md), on clips it never saw."""
    scorer = load_scorer(SyncConfig(weights=str(SHIPPED)))
    clips = _held_out(10)
    found = [scorer.score(c.clean_frames, np.roll(c.audio, shift * 640)).offset == -shift
             for c in clips for shift in (-5, 5)]
    assert sum(found) >= 0.9 * len(found)
    own = [scorer.score(c.clean_frames, c.audio).confidence for c in clips]
    other = [scorer.score(c.clean_frames, clips[(i + 1) % 10].audio).confidence
             for i, c in enumerate(clips)]
    assert np.mean(own) > 2 * np.mean(other) and sum(a > b for a, b in zip(own, other)) >= 9
    with pytest.raises(ValueError, match="too short to score lip-sync"):
        scorer.score(clips[0].clean_frames[:4], clips[0].audio)


def test_sync_stage_trains_as_a_ray_job_and_its_export_scores(ray_cluster, tmp_path, capsys):
    import train_sync

    from conftest import tiny_overrides
    from onestep.config import load_config
    from onestep.prepare import prepare_synthtalk
    from onestep.storage import resolve

    sets = tiny_overrides(**{"data.uri": str(tmp_path / "data"),
                             "run.root": str(tmp_path / "runs")})
    prepare_synthtalk(load_config("tiny", sets).synth, resolve(str(tmp_path / "data")))
    train_sync.main([a for kv in sets for a in ("--set", kv)])
    out = capsys.readouterr().out
    assert "stage sync" in out and "| sync_expert |" in out  # the memory plan of the expert
    export = tmp_path / "runs" / "sync-tiny" / "exports" / "sync"
    scorer = load_scorer(SyncConfig(weights=str(export)))
    assert isinstance(scorer, SyncScorer) and scorer.cfg.size == 32
    clip = _held_out(1)[0]
    assert np.isfinite(scorer.score(clip.clean_frames, clip.audio).confidence)
    with pytest.raises(SystemExit, match=r"data.frames: expected ≥ 5 \+ 2 × sync.train_shift"):
        train_sync.main(["--set", "data.frames=12"])
