"""Ray Data pipeline: decoding in Ray tasks, windows, corrupt rows (skipped or fatal)."""

import pytest
import torch

from onestep.config import SynthConfig
from onestep.data import DataError, build_dataset, readable_shards
from onestep.shards import clip_row, rows_to_parquet, shard_name, write_manifest
from onestep.storage import resolve
from onestep.synth import make_clip


def _write_shard_with_a_corrupt_row(root_dir, cfg):
    synth = SynthConfig(**{**cfg.synth.__dict__, "test_identity_fraction": 0.0})
    rows = [clip_row(make_clip(i, synth), synth.fps, synth.sample_rate) for i in range(4)]
    rows[1]["mp4"] = b"\x00\x00\x00\x18ftypmp42 then garbage"
    rows[2]["audio_pcm16"] = rows[2]["audio_pcm16"][:-1]  # PCM16 one byte short
    root = resolve(str(root_dir))
    root.join(shard_name(0)).write_bytes(rows_to_parquet(rows))
    write_manifest(root, [{"name": shard_name(0), "rows": 4}], {"kind": "test"})
    return rows[1]["clip_id"]


def test_windows_have_the_training_shapes(ray_cluster, tmp_path, tiny_config):
    cfg = tiny_config(**{"data.uri": str(tmp_path)})
    _write_shard_with_a_corrupt_row(tmp_path, cfg)
    per_pass = 2 * cfg.data.windows_per_clip  # both corrupt clips are skipped
    # One pipeline for the whole run: the windows asked for, plus a pass (see pass_plan).
    batches = list(build_dataset(cfg, per_pass).iter_torch_batches(batch_size=2))
    windows = sum(len(b["video"]) for b in batches)
    assert windows == 2 * per_pass
    # Each pass cuts fresh windows from the same clips.
    videos = torch.cat([b["video"] for b in batches])
    assert len({v.sum().item() for v in videos}) > per_pass
    b = batches[0]
    assert tuple(b["video"].shape[1:]) == (3, 8, 32, 32)
    assert tuple(b["ref"].shape[1:]) == (3, 32, 32)
    assert tuple(b["audio"].shape[1:]) == (16, 40)  # 2 audio features per frame
    assert -1.0 <= b["video"].min() and b["video"].max() <= 1.0


def test_corrupt_clip_is_fatal_when_configured(ray_cluster, tmp_path, tiny_config):
    cfg = tiny_config(**{"data.uri": str(tmp_path), "data.on_corrupt": "fail"})
    bad_id = _write_shard_with_a_corrupt_row(tmp_path, cfg)
    with pytest.raises(Exception, match=rf"clip {bad_id}: .*\(shard \S*{shard_name(0)}\)"):
        list(build_dataset(cfg, 1).iter_torch_batches(batch_size=2))



def test_a_truncated_or_miscounted_shard_is_skipped_by_name_or_fatal(tmp_path, tiny_config,
                                                                    caplog):
    cfg = tiny_config(**{"data.uri": str(tmp_path)})
    synth = SynthConfig(**{**cfg.synth.__dict__, "test_identity_fraction": 0.0})
    rows = [clip_row(make_clip(i, synth), synth.fps, synth.sample_rate) for i in range(2)]
    root = resolve(str(tmp_path))
    data = rows_to_parquet(rows)
    for i in range(3):
        root.join(shard_name(i)).write_bytes(data)
    (tmp_path / shard_name(1)).write_bytes(data[: len(data) // 2])  # an upload cut short
    manifest = {"shards": [{"name": shard_name(0), "rows": 2}, {"name": shard_name(1), "rows": 2},
                           {"name": shard_name(2), "rows": 3}]}  # shard 2 is not what was listed
    assert readable_shards(root, manifest, "skip") == {root.join(shard_name(0)).path: 2}
    assert f"skipping shard {root.join(shard_name(1)).uri}: not a readable Parquet file" \
        in caplog.text
    assert f"skipping shard {root.join(shard_name(2)).uri}: 2 rows, the manifest says 3" \
        in caplog.text
    with pytest.raises(DataError, match=f"^{root.join(shard_name(1)).uri}: not a readable"):
        readable_shards(root, manifest, "fail")
    with pytest.raises(DataError, match="none of its 2 shards is readable"):
        readable_shards(root, {"shards": manifest["shards"][1:]}, "skip")
