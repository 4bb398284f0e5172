"""Latent shards: jobs/encode.py encodes clip shards in S3 through a Ray Data actor pool, resumes
after losing a shard, and its windows feed the model exactly what the pixel path feeds it; a run
(or another encode) refuses latents of another codec, audio encoder or geometry by name."""

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_overrides
from onestep import latents
from onestep.audio_features import build_audio_encoder
from onestep.data import DataError, build_dataset, data_manifest, decoded_clip, to_unit
from onestep.encode import encode_latents
from onestep.model import build_codec
from onestep.prepare import prepare_synthtalk
from onestep.shards import MANIFEST, read_manifest, shard_name
from onestep.stages.batch import prepare_batch
from onestep.storage import StorageError, resolve


def _rows(uri: str, name: str) -> list[dict]:
    loc = resolve(uri).join(name)
    with loc.fs.open_input_file(loc.path) as f:
        return pq.read_table(f).to_pylist()


def test_encode_job_resumes_and_its_windows_equal_the_pixel_path(ray_cluster, bucket,
                                                                 tiny_config, caplog):
    import encode

    clips, out = f"s3://{bucket}/clips", f"s3://{bucket}/latents"
    sets = tiny_overrides(**{"data.uri": clips, "encode.dtype": "float32"})
    cfg = tiny_config(**{"data.uri": clips, "encode.dtype": "float32"})
    prepare_synthtalk(cfg.synth, resolve(clips))
    argv = ["--out", out, *(a for kv in sets for a in ("--set", kv))]
    encode.main(argv)
    manifest = read_manifest(resolve(out), formats=(latents.FORMAT,))
    assert manifest["num_clips"] == 16 and manifest["codec"] == "space_to_depth/factor=2"
    assert [s["rows"] for s in manifest["shards"]] == [8, 8]

    # Interrupted after one shard: the finished one is kept as it is, the other is encoded.
    kept = resolve(out).join(shard_name(0)).version()
    for name in (shard_name(1), MANIFEST):
        resolve(out).fs.delete_file(resolve(out).join(name).path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="onestep"):
        encode.main(argv)
    assert "8 clips encoded" in caplog.text and "1 of 2 shards were done already" in caplog.text
    assert resolve(out).join(shard_name(0)).version() == kept
    assert read_manifest(resolve(out), formats=(latents.FORMAT,))["num_clips"] == 16
    # Interrupted before its manifest, then run with another setting: nothing is kept.
    resolve(out).fs.delete_file(resolve(out).join(MANIFEST).path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="onestep"):
        encode.main(argv + ["--set", "encode.references=2"])
    assert "16 clips encoded" in caplog.text and "0 of 2 shards were done already" in caplog.text
    assert len(_rows(out, shard_name(0))[0]["ref_frames"]) == 2
    encode.main(argv)  # back to the shards the rest of this test reads

    # A latent row is the pixel clip encoded: the same x0, reference and audio per frame.
    row = _rows(out, shard_name(0))[0]
    clip = next(r for r in _rows(clips, shard_name(0)) if r["clip_id"] == row["clip_id"])
    frames, feats = decoded_clip(clip, cfg, build_audio_encoder(cfg.audio))
    f, s = cfg.data.frames, 3
    latent = torch.from_numpy(latents.tensor(row, "latent", np.float32).copy())
    refs = torch.from_numpy(latents.tensor(row, "refs", np.float32).copy())
    audio = torch.from_numpy(latents.tensor(row, "audio", np.float32).copy())
    r = len(feats) // len(frames)
    pixel = {"video": torch.from_numpy(to_unit(frames[s:s + f]))[None],
             "ref": torch.from_numpy(to_unit(frames[row["ref_frames"][1]]))[None],
             "audio": torch.from_numpy(feats[s * r:(s + f) * r])[None],
             "use_motion": torch.tensor([True])}
    latent_batch = {"latent": latent[None, :, s:s + f], "ref_latent": refs[1][None],
                    "audio": audio[None, s * r:(s + f) * r], "use_motion": torch.tensor([True])}
    codec = build_codec(cfg)
    x_pixel, cond_pixel = prepare_batch(pixel, codec, cfg)
    x_latent, cond_latent = prepare_batch(latent_batch, codec, cfg)
    assert torch.equal(x_pixel, x_latent)
    for name in ("ref", "audio", "motion", "motion_mask"):
        assert torch.equal(getattr(cond_pixel, name), getattr(cond_latent, name)), name

    # A row whose bytes do not fill its recorded shape is a corrupt clip, named.
    from onestep.data import CorruptClip, latent_windows

    with pytest.raises(CorruptClip, match=rf"clip {row['clip_id']}: its stored tensors do not "
                                          "match their shapes"):
        latent_windows({**row, "latent_shape": [99, *row["latent_shape"][1:]]}, cfg,
                       np.dtype(np.float32), np.random.default_rng(0))

    # Training reads them: latent windows of the training shapes, no decoding.
    train = tiny_config(**{"data.uri": out, "encode.dtype": "float32"})
    batch = next(iter(build_dataset(train, 1).iter_torch_batches(batch_size=2)))
    assert set(batch) == {"latent", "ref_latent", "audio", "use_motion", "tier"}
    assert tuple(batch["latent"].shape[1:]) == (12, 8, 16, 16)
    assert tuple(batch["ref_latent"].shape[1:]) == (12, 16, 16)
    assert tuple(batch["audio"].shape[1:]) == (16, 40)


def test_latents_of_another_codec_or_audio_encoder_are_refused_by_name(tmp_path, tiny_config):
    made_by = tiny_config(**{"data.uri": str(tmp_path)})
    root = resolve(str(tmp_path))
    latents.write_manifest(root, [], made_by, latents.compatibility(made_by), {"uri": "clips"})
    assert data_manifest(made_by)[1]["format"] == latents.FORMAT
    where = root.join(MANIFEST).uri
    with pytest.raises(DataError, match=rf"^{where}: latents made by codec "
                                        r"space_to_depth/factor=2, but this run's codec "
                                        r"\(codec.kind='space_to_depth'.*is space_to_depth/factor=4"):
        data_manifest(tiny_config(**{"data.uri": str(tmp_path), "codec.factor": 4}))
    with pytest.raises(DataError, match=r"latents made with audio=.*'n_mels': 40.*this run has "
                                        r".*'n_mels': 20"):
        data_manifest(tiny_config(**{"data.uri": str(tmp_path), "audio.n_mels": 20}))
    with pytest.raises(DataError, match=r"latents made with resolution=32, this run has 64"):
        data_manifest(tiny_config(**{"data.uri": str(tmp_path), "synth.resolution": 64}))
    # A clip shard cut short is named before any encoding (or skipped, data.on_corrupt=skip).
    broken = tiny_config(**{"data.uri": str(tmp_path / "broken"), "data.on_corrupt": "fail"})
    prepare_synthtalk(broken.synth, resolve(str(tmp_path / "broken")))
    shard = tmp_path / "broken" / shard_name(1)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"{shard_name(1)}: not a readable Parquet file"):
        encode_latents(broken, resolve(str(tmp_path / "broken")), resolve(str(tmp_path / "l")))
    assert not (tmp_path / "l" / MANIFEST).exists()
    # jobs/encode.py does not mix its shards into a folder of other latents either.
    other = tiny_config(**{"data.uri": str(tmp_path / "clips"), "codec.factor": 4})
    prepare_synthtalk(other.synth, resolve(str(tmp_path / "clips")))
    with pytest.raises(StorageError, match=rf"^{root.uri} already holds other data \(latents "
                                           r"made by codec space_to_depth/factor=2"):
        encode_latents(other, resolve(str(tmp_path / "clips")), root)


def test_a_vae_has_one_fingerprint_wherever_it_is_stored(tmp_path, bucket, monkeypatch):
    from test_wan_vae import _vae

    from onestep.pretrained import vae_fingerprint

    monkeypatch.setenv("ONESTEP_CACHE", str(tmp_path / "cache"))
    _vae(0).save_pretrained(tmp_path / "a")
    _vae(1).save_pretrained(tmp_path / "b")
    dest = resolve(f"s3://{bucket}/vae")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        dest.join(name).write_bytes((tmp_path / "a" / name).read_bytes())
    a = vae_fingerprint(str(tmp_path / "a"))
    assert a.startswith("sha256:") and vae_fingerprint(dest.uri) == a
    assert vae_fingerprint(str(tmp_path / "b")) != a
