"""Checkpoints are verified before use: a damaged export is one line naming the file, a damaged
or half-written training checkpoint is passed over for the previous one, and folders Ray Train
never registered are cleaned up. No Ray here: the folders are written as the loop writes them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import torch

from onestep import integrity
from onestep.checkpoint import (
    CheckpointError,
    check_export,
    fetched,
    load_generator,
    resume_point,
    save_export,
    training_checkpoint,
)
from onestep.model import build_model
from onestep.storage import resolve
from onestep.train.ray_job import _remove_orphans

from conftest import ROOT, png_bytes, wav_bytes


@pytest.fixture
def export(tmp_path, tiny_config) -> Path:
    cfg = tiny_config()
    torch.manual_seed(0)
    where = tmp_path / "export"
    save_export(where, build_model(cfg).state_dict(), cfg, {"stage": "teacher", "step": 3})
    return where


def _flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_intact_export_loads_and_each_kind_of_damage_is_named(export, tiny_config):
    load_generator(str(export))
    weights = export / "model.safetensors"
    original = weights.read_bytes()

    _flip_byte(weights)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256 differs"):
        load_generator(str(export))
    weights.write_bytes(original[:-10])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ bytes, \d+ when written"):
        load_generator(str(export))

    # Damage that the checksums cannot see (re-recorded after the change): the file itself.
    def rerecorded():
        integrity.record(export, ["model.safetensors", "config.yaml", "state.json"],
                         integrity.EXPORT_SUMS)

    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!}")
    rerecorded()
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_generator(str(export))
    other = tiny_config(**{"model.dim": 64})
    from safetensors.torch import save_file
    save_file(build_model(other).state_dict(), str(weights))
    rerecorded()
    with pytest.raises(CheckpointError, match=r"does not fit the model in its config\.yaml \(.*; "
                                              r"\S+ is \(64,\), the config's model has \(48,\)\)$"):
        check_export(str(export))
    weights.write_bytes(original)
    (export / "config.yaml").write_text("model: [1, 2")
    rerecorded()
    with pytest.raises(CheckpointError, match=r"config\.yaml: not a valid onestep config"):
        load_generator(str(export))


def test_generate_job_says_one_line_for_a_tampered_export(export, tmp_path):
    _flip_byte(export / "model.safetensors")
    (tmp_path / "face.png").write_bytes(png_bytes((64, 64)))
    (tmp_path / "speech.wav").write_bytes(wav_bytes(0.5))
    run = subprocess.run([sys.executable, str(ROOT / "jobs" / "generate.py"), "--checkpoint",
                          str(export), "--image", str(tmp_path / "face.png"), "--audio",
                          str(tmp_path / "speech.wav"), "--out", str(tmp_path / "o.mp4")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {export}/model.safetensors: SHA-256 differs from checksums.json (the file "
        "changed after it was written)")


def test_an_export_fetched_from_s3_is_verified_and_its_download_removed(export, bucket,
                                                                        s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for f in export.iterdir():
        s3.upload_file(str(f), bucket, f"export/{f.name}")
    with fetched(f"s3://{bucket}/export") as local:
        assert (local / "model.safetensors").is_file()
    assert not local.exists()
    damaged = bytearray((export / "model.safetensors").read_bytes())
    damaged[-1] ^= 1
    s3.put_object(Bucket=bucket, Key="export/model.safetensors", Body=bytes(damaged))
    with pytest.raises(CheckpointError, match=f"^s3://{bucket}/export/model.safetensors: "
                                              "SHA-256 differs"):
        load_generator(f"s3://{bucket}/export")


def _training_checkpoint(run: Path, name: str, export: Path, step: int, world: int = 2) -> Path:
    """A checkpoint folder as two ranks write it: the export and each rank's resume files."""
    folder = run / name
    shutil.copytree(export, folder)
    (folder / "state.json").write_text(json.dumps({"stage": "teacher", "step": step,
                                                   "world_size": world}))
    integrity.record(folder, ["model.safetensors", "config.yaml", "state.json"],
                     integrity.EXPORT_SUMS)
    for rank in range(world):
        shard = folder / "engines" / "generator" / "state" / f"rank{rank}_optim.pt"
        shard.parent.mkdir(parents=True, exist_ok=True)
        shard.write_bytes(bytes([step, rank]) * 500)
        integrity.record(folder, [shard.relative_to(folder).as_posix()],
                         integrity.rank_sums(rank))
    return folder


def test_resume_passes_over_damaged_and_half_written_checkpoints(export, tmp_path):
    run = tmp_path / "run"
    names = [f"checkpoint_2026-12-02_10-00-0{i}.000000" for i in range(4)]
    for i, name in enumerate(names):
        _training_checkpoint(run, name, export, step=2 * (i + 1))
    _flip_byte(run / names[3] / "engines" / "generator" / "state" / "rank1_optim.pt")
    (run / names[2] / "checksums-rank1.json").unlink()  # rank 1's upload never finished
    pick, passed_over = resume_point(resolve(str(run)))
    assert pick == names[1]
    assert list(passed_over) == [names[3], names[2]]
    assert "rank1_optim.pt: SHA-256 differs" in passed_over[names[3]][0]
    assert "checksums-rank1.json: missing" in passed_over[names[2]][0]
    with pytest.raises(CheckpointError, match="cannot be continued: .*rank1_optim.pt"):
        training_checkpoint(str(run / names[3]), "teacher")
    assert training_checkpoint(str(run / names[1]), "teacher") == str(run / names[1])


def test_unregistered_checkpoint_folders_are_removed_once_superseded(export, tmp_path):
    run = tmp_path / "run"
    names = [f"checkpoint_2026-12-02_10-00-0{i}.000000" for i in range(4)]
    for i, name in enumerate(names):
        _training_checkpoint(run, name, export, step=i + 1)
    # Ray registered the first two; the third was written after the driver was interrupted
    # (complete), the fourth was cut short when it was killed.
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": [{"path": str(run / n)} for n in names[:2]]}))
    (run / names[3] / "checksums.json").unlink()
    loc = resolve(str(run))

    _remove_orphans(loc)  # after a run: nothing newer than Ray's latest may be the only copy
    assert sorted(p.name for p in run.glob("checkpoint_2*")) == names
    assert resume_point(loc)[0] == names[2]
    _remove_orphans(loc, keep=names[2])  # resuming from the third: the cut-short fourth goes
    assert sorted(p.name for p in run.glob("checkpoint_2*")) == names[:3]
    # The resumed run registers a newer checkpoint: the third is superseded and goes too.
    _training_checkpoint(run, "checkpoint_2026-12-02_11-00-00.000000", export, step=5)
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": [{"path": str(run / n)} for n in
                                [*names[:2], "checkpoint_2026-12-02_11-00-00.000000"]]}))
    _remove_orphans(loc)
    assert sorted(p.name for p in run.glob("checkpoint_2*")) == [
        *names[:2], "checkpoint_2026-12-02_11-00-00.000000"]
