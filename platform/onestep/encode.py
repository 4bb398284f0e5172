"""Clip shards → latent shards (`onestep.latents`) with Ray Data: jobs/encode.py.

Each clip shard becomes one latent shard of the same name, encoded by an actor of a pool
(`encode.actors`, each with `encode.gpus_per_actor` GPUs: the VAE and the audio encoder load once
per actor). An actor writes its shard itself, atomically, so an interrupted job finishes by running
it again: shards already written the same way are kept (their footer records a hash of the
codec's fingerprint and every other setting the latents depend on), and the manifest is written
last.
"""

from __future__ import annotations

import logging
import time
import zlib

import numpy as np
import pyarrow.parquet as pq
import ray.data
import torch
from tqdm import tqdm

from onestep import latents, shards
from onestep.audio_features import build_audio_encoder
from onestep.conditioning import align_audio, encode_reference
from onestep.config import Config
from onestep.data import CorruptClip, decoded_clip, readable_shards, to_unit
from onestep.encoders import ImageEncoder
from onestep.model.build import build_codec
from onestep.storage import Location, StorageError, check_reachable, resolve

log = logging.getLogger(__name__)
CLIP_COLUMNS = ["clip_id", "mp4", "audio_pcm16", "sample_rate", "fps", "split", "identity",
                "quality", "tier"]  # tier: absent from shards written before tiers


@torch.no_grad()
def encode_clip(row: dict, cfg: Config, codec, audio_encoder, rng: np.random.Generator,
                device: str = "cpu", image_encoder=None) -> dict:
    """A clip row → its latent row. The codec encodes 1 + tf·k frames: a trailing partial
    latent frame's frames are dropped. With `image_encoder`, each reference's CLIP tokens."""
    frames, feats = decoded_clip(row, cfg, audio_encoder)
    tf, per_frame = codec.temporal_factor, cfg.audio.feature_rate // cfg.synth.fps
    n = 1 + (len(frames) - 1) // tf * tf
    latent = codec.encode(torch.from_numpy(to_unit(frames[:n]))[None].to(device))[0]
    audio = align_audio(torch.from_numpy(feats[:n * per_frame])[None], n, tf)[0]
    picks = np.sort(rng.choice(n, size=min(cfg.encode.references, n), replace=False))
    refs = encode_reference(codec, torch.from_numpy(to_unit(frames[picks])).transpose(0, 1)
                            .to(device))
    out = {"clip_id": row["clip_id"], "split": row["split"], "identity": row["identity"],
           "quality": row["quality"], "tier": row.get("tier"), "num_frames": n,
           "ref_frames": picks.tolist()}
    stored = np.dtype(cfg.encode.dtype)
    tensors = [("latent", latent, stored), ("audio", audio, np.float32), ("refs", refs, stored)]
    if image_encoder is not None:
        tensors.append(("image", image_encoder(frames[picks]), np.float32))
    for name, value, dtype in tensors:
        array = value.float().cpu().numpy().astype(dtype)
        out[name], out[f"{name}_shape"] = array.tobytes(), list(array.shape)
    return out


class ShardEncoder:
    """Ray Data callable class: a clip shard's name in, its latent shard written, a summary out."""

    def __init__(self, cfg: Config, clips_uri: str, out_uri: str, identity: str):
        self.cfg, self.identity = cfg, identity
        self.clips = resolve(clips_uri, cfg.run.s3_endpoint_url)
        self.out = resolve(out_uri, cfg.run.s3_endpoint_url)
        self.device = "cuda" if cfg.encode.gpus_per_actor > 0 else "cpu"
        self.codec = build_codec(cfg).to(self.device)
        self.audio_encoder = build_audio_encoder(cfg.audio)
        m = cfg.model
        self.image_encoder = (ImageEncoder(m.image_encoder, cfg.run.s3_endpoint_url)
                              if m.image_encoder else None)

    def __call__(self, item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = str(item["name"][0])
        dest = self.out.join(name)
        kept = latents.finished_shard(dest, self.identity)
        if kept is not None:
            return _summary(name, int(item["rows"][0]), kept, True, 0.0)
        t0 = time.perf_counter()
        src = self.clips.join(name)
        with src.fs.open_input_file(src.path) as f:
            present = pq.ParquetFile(f).schema_arrow.names
            rows = pq.read_table(f, columns=[c for c in CLIP_COLUMNS if c in present]).to_pylist()
        encoded = []
        for row in rows:
            rng = np.random.default_rng([self.cfg.data.seed, zlib.crc32(row["clip_id"].encode())])
            try:
                encoded.append(encode_clip(row, self.cfg, self.codec, self.audio_encoder, rng,
                                           self.device, self.image_encoder))
            except CorruptClip as e:
                if self.cfg.data.on_corrupt == "fail":
                    raise CorruptClip(f"{e} (shard {src.uri})") from None
                log.warning("skipping corrupt clip: %s (shard %s)", e, src.uri)
        dest.write_bytes(latents.shard_bytes(encoded, self.identity))
        return _summary(name, len(rows), len(encoded), False, time.perf_counter() - t0)


def _summary(name: str, source_rows: int, rows: int, kept: bool,
             seconds: float) -> dict[str, np.ndarray]:
    return {"name": np.array([name]), "source_rows": np.array([source_rows]),
            "rows": np.array([rows]), "kept": np.array([kept]), "seconds": np.array([seconds])}


def _refuse_other_latents(out: Location, wanted: dict, cfg: Config) -> None:
    """An output folder that already holds latents of another config is not mixed into."""
    loc = out.join(shards.MANIFEST)
    if not loc.exists():
        return
    try:
        latents.check_compatible(shards.read_manifest(out, formats=(latents.FORMAT,)), wanted,
                                 cfg)
    except (StorageError, ValueError) as e:
        raise StorageError(f"{out.uri} already holds other data ({e}); choose a new --out "
                           "folder") from None


def encode_latents(cfg: Config, clips: Location, out: Location) -> dict:
    """Encode every clip shard under `clips` into latent shards under `out`; resumable."""
    manifest = shards.read_manifest(clips)
    check_reachable(out, create=True)
    wanted = latents.compatibility(cfg)  # hashes the codec's (and CLIP's) weights: once
    _refuse_other_latents(out, wanted, cfg)
    readable = readable_shards(clips, manifest, cfg.data.on_corrupt)  # named, skipped or fatal
    e = cfg.encode
    items = [{"name": s["name"], "rows": s["rows"]} for s in manifest["shards"]
             if clips.join(s["name"]).path in readable]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardEncoder, batch_size=1, concurrency=e.actors, num_cpus=e.cpus_per_actor,
        num_gpus=e.gpus_per_actor or None, batch_format="numpy",
        fn_constructor_kwargs={"cfg": cfg, "clips_uri": clips.uri, "out_uri": out.uri,
                               "identity": latents.encoding_identity(wanted, cfg)})
    done, t0 = [], time.perf_counter()
    with tqdm(total=manifest["num_clips"], desc=f"encode → {out.uri}", unit="clip") as bar:
        for row in ds.iter_rows():
            done.append(row)
            bar.update(int(row["source_rows"]))
    kept = [r for r in done if r["kept"]]
    encoded = sum(int(r["rows"]) for r in done if not r["kept"])
    corrupt = sum(int(r["source_rows"]) - int(r["rows"]) for r in done)
    seconds = time.perf_counter() - t0
    log.info("%d clips encoded in %.1f s (%.2f clips/s); %d of %d shards were done already; "
             "%d corrupt clips skipped", encoded, seconds, encoded / max(1e-9, seconds), len(kept),
             len(done), corrupt)
    done.sort(key=lambda r: r["name"])
    return latents.write_manifest(
        out, [{"name": r["name"], "rows": int(r["rows"])} for r in done if int(r["rows"])], cfg,
        wanted, {"uri": clips.uri, "created": manifest["created"],
                      "num_clips": manifest["num_clips"], "corrupt_clips": corrupt})
