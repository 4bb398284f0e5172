"""Latent shards: clips encoded once by the run's codec and audio encoder (jobs/encode.py), so
that training neither decodes video nor runs the VAE.

One Parquet row per clip. The whole clip is encoded as one latent sequence and training windows
are cut from it in latent space: with Wan's causal VAE a window cut at latent frame s > 0 is a
mid-sequence latent, exactly what a later chunk of a long generation continues from (motion frames
are carried in latent space), where encoding each window alone would start every window with an
image latent. Audio features are stored aligned per latent frame (`align_audio`), reference frames
as latents of single frames (`encode_reference`) and, for Wan I2V, as CLIP tokens: the same
tensors `prepare_batch` computes from pixels, so both paths feed the model identically.
Encoding is `onestep.encode`; cutting windows, `onestep.data`.

Latents are stored as float16 by default (`encode.dtype`). The manifest records the codec's
fingerprint (a hash of the VAE's weights), the audio encoder, the image encoder's fingerprint and
the video geometry; a run whose
config differs is refused by name (`check_compatible`), and each shard's footer holds a hash of
all of it, so that a re-run never keeps a shard another configuration wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onestep import shards
from onestep.config import Config
from onestep.model.build import codec_fingerprint
from onestep.pretrained import folder_fingerprint
from onestep.storage import Location

FORMAT = "onestep-latents/1"
IDENTITY_KEY = b"onestep.encoding"
# Stored as raw bytes + a shape column each; `image` (CLIP tokens of each reference, Wan I2V)
# only with model.image_encoder.
TENSORS = ("latent", "audio", "refs", "image")
SCHEMA = pa.schema(
    [("clip_id", pa.string()), ("split", pa.string()), ("identity", pa.int32()),
     ("quality", pa.float32()), ("tier", pa.string()), ("num_frames", pa.int32()),
     ("ref_frames", pa.list_(pa.int32()))]
    + [field for name in TENSORS
       for field in ((name, pa.binary()), (f"{name}_shape", pa.list_(pa.int32())))])
COLUMNS = ["clip_id", "split", "tier"] + [c for name in TENSORS for c in (name, f"{name}_shape")]


def compatibility(cfg: Config) -> dict:
    """What training must share with the encoding: codec, audio features, image encoder,
    video geometry. The codec and image encoder are fingerprinted by hashing their weights:
    compute this once per job and pass it on."""
    return {"codec": codec_fingerprint(cfg), "audio": dataclasses.asdict(cfg.audio),
            "image_encoder": image_encoder_fingerprint(cfg), "resolution": cfg.resolution,
            "fps": cfg.synth.fps, "temporal_factor": cfg.codec.temporal_factor}


def encoding_identity(wanted: dict, cfg: Config) -> str:
    """A hash of everything that makes a latent shard what it is (`compatibility`, dtype,
    references): kept in each shard's footer, so a re-run keeps only shards it would write."""
    made_with = {**wanted, "dtype": cfg.encode.dtype, "references": cfg.encode.references}
    return hashlib.sha256(json.dumps(made_with, sort_keys=True).encode()).hexdigest()[:20]


def image_encoder_fingerprint(cfg: Config) -> str:
    if not cfg.model.image_encoder:
        return ""
    return folder_fingerprint(cfg.model.image_encoder, cfg.run.s3_endpoint_url, "image_encoder")


def tensor(row: dict, name: str, dtype: np.dtype) -> np.ndarray | None:
    if row.get(name) is None:
        return None
    return np.frombuffer(row[name], dtype=dtype).reshape(row[f"{name}_shape"])


def shard_bytes(rows: list[dict], identity: str) -> bytes:
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(
        {IDENTITY_KEY: identity.encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def finished_shard(loc: Location, identity: str) -> int | None:
    """Rows of the latent shard at `loc` if it is complete and was encoded as `identity` says
    (`encoding_identity`), else None. Shards are written atomically: one that exists is whole,
    unless damaged."""
    if not loc.exists():
        return None
    try:
        with loc.fs.open_input_file(loc.path) as f:
            meta = pq.read_metadata(f)
    except (OSError, pa.ArrowInvalid):
        return None
    if (meta.metadata or {}).get(IDENTITY_KEY) != identity.encode():
        return None
    return meta.num_rows


def check_compatible(manifest: dict, wanted: dict, cfg: Config) -> None:
    """Refuse latents a run (`wanted`: its `compatibility`) cannot train on; the message names
    the field and both values."""
    for key, value in wanted.items():
        have = manifest.get(key)
        if have == value:
            continue
        if key == "codec":
            raise ValueError(f"latents made by codec {have}, but this run's codec "
                             f"(codec.kind={cfg.codec.kind!r}, codec.pretrained="
                             f"{cfg.codec.pretrained!r}) is {value}; encode the clips again "
                             "with jobs/encode.py into a new folder")
        raise ValueError(f"latents made with {key}={have!r}, this run has {value!r}; encode the "
                         "clips again with this config (jobs/encode.py)")


def write_manifest(root: Location, written: list[dict], cfg: Config, wanted: dict,
                   source: dict) -> dict:
    return shards.write_manifest(root, written, source, FORMAT, {
        "dtype": cfg.encode.dtype, "references": cfg.encode.references, **wanted})
