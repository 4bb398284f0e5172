"""Wan2.1 in and out, from a local folder or s3://: its transformer (the DiT) and its VAE (the
codec), in diffusers' format or as the original release (onestep.original_wan).

A diffusers model folder holds `config.json` (naming its `_class_name`) and the weights as
`diffusion_pytorch_model.safetensors`, or as shards listed in
`diffusion_pytorch_model.safetensors.index.json`. A pipeline folder (e.g. Wan2.1-I2V-14B-480P-
Diffusers) holds them under `transformer/` and `vae/`; either may be given. The original release
(e.g. Wan2.1-I2V-14B-480P) is a folder with a `WanModel` config.json, the DiT's weights named the
same way, and `Wan2.1_VAE.pth`; a single original `.safetensors` file or `.pth` VAE may be given
too. An S3 folder is downloaded once into a cache (`$ONESTEP_CACHE`, default ~/.cache/onestep)
and reused while the objects are unchanged.

Weights are read with safetensors only. Every problem is one error naming the file: a missing
file or shard, another model class, keys or shapes that do not fit (the first few listed with
both shapes). A text-to-video checkpoint (16 input channels) loads into onestep's image-to-video
layout with the condition channels zero-initialised, so it still starts as the pretrained model.

`save_diffusers` writes a onestep Wan model back in that layout, loadable by diffusers, with
onestep's own modules (audio, the stored prompt, a FADA student's guidance input) in a side file
next to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from onestep import original_wan
from onestep.config import Config
from onestep.model.wan import MASK_CHANNELS, WanArch, WanDiT
from onestep.original_wan import PretrainedError
from onestep.model.wan_vae import WanVAECodec
from onestep.storage import Location, resolve

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"
SIDE_FILE = "onestep_modules.safetensors"  # onestep's modules, beside diffusers' weights
CLASS_NAME = "WanTransformer3DModel"
VAE_CLASS_NAME = "AutoencoderKLWan"
# Keys diffusers itself ignores in Wan checkpoints (an unused norm in some conversions).
IGNORED = ("norm_added_q",)
SHOWN = 5  # mismatching keys listed in an error


def is_onestep_key(key: str) -> bool:
    """Parameters onestep adds to Wan (absent from a diffusers checkpoint): audio, the stored
    prompt, and a FADA student's guidance input."""
    return (key.startswith(("audio_adapter.", "null_audio", "prompt", "guidance."))
            or ".audio_" in key or ".guidance_" in key)


def _cache_root() -> Path:
    return Path(os.environ.get("ONESTEP_CACHE", Path.home() / ".cache" / "onestep"))


def _local(loc: Location, names: list[str]) -> Path:
    """A local folder holding `names` of `loc` (the folder itself, or the cache's copy). A
    cached file is reused only while the object's size and modification time are those it was
    copied at: a checkpoint replaced under the same name is fetched again."""
    if not loc.is_s3:
        return Path(loc.path)
    folder = _cache_root() / "pretrained" / hashlib.sha256(loc.uri.encode()).hexdigest()[:16]
    for name in names:
        src, dest, copied_at = loc.join(name), folder / name, folder / f".{name}.version"
        version = src.version()
        if not dest.exists() or not copied_at.exists() or copied_at.read_text() != version:
            src.download(dest)
            copied_at.write_text(version)
    return folder


def local_folder(loc: Location) -> Path:
    """A local folder with every file of the folder at `loc` (itself, or the cache's copy)."""
    if not loc.is_s3:
        return Path(loc.path)
    import pyarrow.fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path))
    return _local(loc, sorted(i.base_name for i in infos if i.type == pafs.FileType.File))


def model_folder(uri: str, endpoint_url: str, subfolder: str = "transformer",
                 what: str = f"diffusers {CLASS_NAME}", marker: str = CONFIG) -> Location:
    """The folder of one part of a Wan pipeline (a model, a tokenizer, a processor): `uri`
    itself if it holds `marker`, else the pipeline folder's `subfolder`."""
    loc = resolve(uri, endpoint_url)
    if loc.join(marker).exists():
        return loc
    if loc.join(subfolder, marker).exists():
        return loc.join(subfolder)
    raise PretrainedError(f"{uri}: no {marker} (nor {subfolder}/{marker}): expected a {what} "
                          "folder or a Wan pipeline folder")


@dataclasses.dataclass
class _Checkpoint:
    """A Wan DiT checkpoint found at a URI: the folder and weight files holding it, its
    architecture, and whether its parameters carry the original release's names."""

    loc: Location
    files: list[str]
    arch: WanArch
    original: bool


def _split(uri: str, endpoint_url: str) -> tuple[Location, str]:
    """A file's folder and name."""
    folder, name = resolve(uri, endpoint_url).uri.rsplit("/", 1)
    return resolve(folder, endpoint_url), name


def _find_checkpoint(uri: str, endpoint_url: str) -> _Checkpoint:
    """The Wan DiT at `uri`: a diffusers model or pipeline folder, an original-release folder
    (a WanModel config.json), or one original-layout .safetensors file (architecture read off
    its tensors' shapes)."""
    if uri.endswith(".safetensors"):
        loc, name = _split(uri, endpoint_url)
        if not loc.join(name).exists():
            raise PretrainedError(f"{uri}: no such file")
        shapes = _shapes(_local(loc, [name]) / name, uri)
        if not original_wan.is_original_layout(shapes):
            raise PretrainedError(f"{uri}: not in Wan's original layout (no head.modulation), "
                                  f"and a file in diffusers' layout has no config: pass its "
                                  f"folder with {CONFIG}")
        return _Checkpoint(loc, [name], original_wan.arch_from_shapes(shapes, uri), True)
    loc = model_folder(uri, endpoint_url)
    where = f"{loc.uri}/{CONFIG}"
    config = json.loads(loc.join(CONFIG).read_bytes())
    original = config.get("_class_name") == original_wan.ORIGINAL_CLASS
    arch = original_wan.arch_from_config(config, where) if original else read_arch(config, where)
    return _Checkpoint(loc, _weight_files(loc, loc.uri), arch, original)


def _shapes(path: Path, uri: str) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise PretrainedError(f"{uri}: not a readable safetensors file ({e})") from None


def _check_class(config: dict, class_name: str, where: str) -> None:
    if config.get("_class_name") != class_name:
        raise PretrainedError(f"{where}: a {config.get('_class_name')!r} config, expected "
                              f"{class_name!r}")


def read_arch(config: dict, where: str) -> WanArch:
    """The architecture in a diffusers config.json, refusing another model class."""
    _check_class(config, CLASS_NAME, where)
    fields = {f.name for f in dataclasses.fields(WanArch)}
    arch = WanArch(**{k: v for k, v in config.items() if k in fields})
    arch.patch_size = tuple(arch.patch_size)
    return arch


def _weight_files(loc: Location, uri: str) -> list[str]:
    if loc.join(WEIGHTS).exists():
        return [WEIGHTS]
    if not loc.join(INDEX).exists():
        raise PretrainedError(f"{uri}: no {WEIGHTS} (nor a sharded {INDEX})")
    index = json.loads(loc.join(INDEX).read_bytes())
    shards = sorted(set(index.get("weight_map", {}).values()))
    missing = [s for s in shards if not loc.join(s).exists()]
    if not shards or missing:
        raise PretrainedError(f"{uri}/{INDEX}: "
                              + (f"shard {missing[0]} is missing" if missing else "no weight_map"))
    return shards


def _read_weights(folder: Path, files: list[str], uri: str) -> dict[str, torch.Tensor]:
    state = {}
    for name in files:
        try:
            state.update(load_file(str(folder / name)))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise PretrainedError(f"{uri}/{name}: not a readable safetensors file ({e})") from None
    return state


def _fetch_weights(loc: Location, files: list[str], extra: list[str] = ()
                   ) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights in `files` of the folder at `loc`, and the local folder that holds them and
    the `extra` files beside them."""
    folder = _local(loc, [*files, *extra])
    return _read_weights(folder, files, loc.uri), folder


def _fit(state: dict[str, torch.Tensor], model: WanDiT, uri: str,
         onestep_part: bool = False) -> dict[str, torch.Tensor]:
    """`state` checked against the model: every key of its part present (Wan's, or with
    `onestep_part` onestep's), none unknown, shapes equal. A T2V patch embedding is widened to
    the I2V input with zeros for the condition channels."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED)}
    patch = state.get("patch_embedding.weight")
    if (patch is not None and model.i2v and patch.shape[1] == model.c
            and expected["patch_embedding.weight"][1] == 2 * model.c + MASK_CHANNELS):
        state["patch_embedding.weight"] = torch.cat(
            [patch, patch.new_zeros(patch.shape[0], model.c + MASK_CHANNELS, *patch.shape[2:])], 1)
    required = {k for k in expected if is_onestep_key(k) == onestep_part}
    _check_keys(state, expected, required, uri)
    return state


def _check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Size],
                required: set[str], uri: str) -> None:
    """One error naming the first keys that differ: shapes, then missing, then unknown."""
    unknown = sorted(set(state) - set(expected))
    missing = sorted(required - set(state))
    wrong = [f"{k} is {tuple(v.shape)}, the model has {tuple(expected[k])}"
             for k, v in sorted(state.items()) if k in expected and v.shape != expected[k]]
    for problem, keys in (("shapes differ", wrong), ("keys missing", missing),
                          ("keys the model does not have", unknown)):
        if keys:
            more = f" (and {len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
            raise PretrainedError(f"{uri}: {problem}: {'; '.join(keys[:SHOWN])}{more}")


def read_pretrained_arch(uri: str, endpoint_url: str = "") -> WanArch:
    """The architecture of the Wan checkpoint at `uri`, without reading its weights."""
    return _find_checkpoint(uri, endpoint_url).arch


def adopt_architecture(cfg: Config) -> str:
    """Give `cfg.model` the architecture of its `pretrained` checkpoint (on the driver, before
    launch, so every worker and every saved config holds it); refuse a checkpoint whose latent
    channels the codec does not produce. Returns a line for the user."""
    from onestep.model.build import latent_channels

    uri, m = cfg.model.pretrained, cfg.model
    arch = read_pretrained_arch(uri, cfg.run.s3_endpoint_url)
    channels = latent_channels(cfg)
    if arch.out_channels != channels:
        raise PretrainedError(f"{uri}: a Wan of {arch.out_channels} latent channels, but "
                              f"codec.kind={cfg.codec.kind!r} makes {channels}")
    if arch.added_kv_proj_dim not in (None, arch.dim):
        raise PretrainedError(f"{uri}: added_kv_proj_dim {arch.added_kv_proj_dim}: onestep "
                              f"expects the model width {arch.dim}")
    if m.image_encoder and not arch.image_dim:
        raise PretrainedError(f"{uri}: a Wan without image attention (no image_dim), but "
                              f"model.image_encoder={m.image_encoder!r} is set; drop it, or use "
                              "an I2V checkpoint")
    m.dim, m.depth, m.heads = arch.dim, arch.num_layers, arch.num_attention_heads
    m.ffn_dim, m.text_dim, m.image_dim = arch.ffn_dim, arch.text_dim, arch.image_dim or 0
    m.patch = list(arch.patch_size)
    return (f"model: Wan from {uri} (width {arch.dim}, {arch.num_layers} blocks, "
            f"{arch.num_attention_heads} heads{', CLIP image tokens' if arch.image_dim else ''})")


def load_into(model: WanDiT, uri: str, endpoint_url: str = "") -> None:
    """Fill `model` with the Wan checkpoint at `uri` (checked key by key and shape by shape,
    under diffusers' names); onestep's own modules from the side file when the folder has one
    (a model onestep wrote), else they keep their initialisation (a zero audio gate: the model
    is Wan's)."""
    _load_into(model, _find_checkpoint(uri, endpoint_url))


def _load_into(model: WanDiT, found: _Checkpoint) -> None:
    loc = found.loc
    side = [SIDE_FILE] if not found.original and loc.join(SIDE_FILE).exists() else []
    state, folder = _fetch_weights(loc, found.files, side)
    if found.original:
        state = original_wan.transformer_to_diffusers(state)
    state = _fit(state, model, loc.uri)
    if side:
        state.update(_fit(_read_weights(folder, side, loc.uri), model, loc.uri, True))
    model.load_state_dict(state, strict=False)


def load_wan(uri: str, audio: dict, endpoint_url: str = "", i2v: bool = True) -> WanDiT:
    """A WanDiT holding the Wan checkpoint at `uri`. `audio`: WanDiT's audio arguments
    (overridden by those a side file records). With `i2v`, a T2V checkpoint gets the
    image-to-video input layout."""
    found = _find_checkpoint(uri, endpoint_url)
    arch = dataclasses.replace(found.arch)
    if i2v and arch.in_channels == arch.out_channels:
        arch.in_channels = 2 * arch.out_channels + MASK_CHANNELS
    guidance = ""
    if not found.original and found.loc.join(SIDE_FILE).exists():
        folder = _local(found.loc, [SIDE_FILE])
        with safe_open(str(folder / SIDE_FILE), "pt") as f:
            audio = {**audio, **json.loads(f.metadata().get("onestep_audio", "{}"))}
            guidance = f.metadata().get("onestep_guidance", "")
    model = WanDiT(arch, guidance_input=guidance, **audio)
    _load_into(model, found)
    return model


def _find_vae(uri: str, endpoint_url: str) -> tuple[Location, list[str], bool]:
    """The Wan VAE at `uri`: its folder, its files (config first) and whether it is the
    original release's .pth (the file itself, or Wan2.1_VAE.pth in the folder given)."""
    if uri.endswith(".pth"):
        loc, name = _split(uri, endpoint_url)
        if not loc.join(name).exists():
            raise PretrainedError(f"{uri}: no such file")
        return loc, [name], True
    loc = resolve(uri, endpoint_url)
    if loc.join(original_wan.VAE_FILE).exists():
        return loc, [original_wan.VAE_FILE], True
    loc = model_folder(uri, endpoint_url, "vae", f"diffusers {VAE_CLASS_NAME} (or "
                       f"{original_wan.VAE_FILE})")
    return loc, [CONFIG, *_weight_files(loc, loc.uri)], False


def _original_vae(loc: Location, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    return original_wan.read_vae(_local(loc, [name]) / name, loc.join(name).uri)


def read_vae_config(uri: str, endpoint_url: str = "") -> dict:
    """The config of the Wan VAE at `uri` (class checked): its config.json, or for the
    original .pth the config that fits its weights."""
    loc, files, original = _find_vae(uri, endpoint_url)
    if original:
        return _original_vae(loc, files[0])[1]
    config = json.loads(loc.join(CONFIG).read_bytes())
    _check_class(config, VAE_CLASS_NAME, f"{loc.uri}/{CONFIG}")
    return config


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def vae_fingerprint(uri: str, endpoint_url: str = "") -> str:
    """A hash of the VAE's config and weights: the same VAE has the same fingerprint wherever
    it is stored (an S3 copy is hashed in the local cache)."""
    loc, files, _ = _find_vae(uri, endpoint_url)
    return _fingerprint(_local(loc, files), files)


def folder_fingerprint(uri: str, endpoint_url: str, subfolder: str) -> str:
    """The same for a transformers model folder (a pipeline's `subfolder`, or the folder)."""
    folder = local_folder(model_folder(uri, endpoint_url, subfolder, "transformers model"))
    return _fingerprint(folder, sorted(p.name for p in folder.iterdir()
                                       if p.suffix in (".json", ".safetensors")))


def _fingerprint(folder: Path, files: list[str]) -> str:
    digest = hashlib.sha256("".join(_file_sha256(folder / f) for f in files).encode())
    return f"sha256:{digest.hexdigest()[:20]}"


def load_wan_vae(uri: str, endpoint_url: str = "") -> WanVAECodec:
    """The codec of the Wan VAE at `uri` (a diffusers AutoencoderKLWan folder, a pipeline folder
    with `vae/`, or the original Wan2.1_VAE.pth), its weights checked key by key as the
    transformer's are."""
    from diffusers import AutoencoderKLWan

    loc, files, original = _find_vae(uri, endpoint_url)
    if original:
        state, config = _original_vae(loc, files[0])
    else:
        state, config = _fetch_weights(loc, files[1:])[0], read_vae_config(uri, endpoint_url)
    vae = AutoencoderKLWan.from_config(config)
    expected = {k: v.shape for k, v in vae.state_dict().items()}
    _check_keys(state, expected, set(expected), loc.uri)
    vae.load_state_dict(state)
    return WanVAECodec(vae)


def save_diffusers(model: WanDiT, audio: dict, out: Path) -> None:
    """Write `model` as a diffusers WanTransformer3DModel folder (config.json + weights) plus
    onestep's modules in SIDE_FILE, with the `audio` arguments that rebuild them. The folder
    appears complete or not at all."""
    if out.exists():
        raise PretrainedError(f"{out}: already exists; choose a new folder")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    wan = {k: v for k, v in state.items() if not is_onestep_key(k)}
    ours = {k: v for k, v in state.items() if is_onestep_key(k)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    (tmp / CONFIG).write_text(json.dumps({"_class_name": CLASS_NAME,
                                          **model.arch.to_dict()}, indent=2))
    save_file(wan, str(tmp / WEIGHTS), metadata={"format": "pt"})
    save_file(ours, str(tmp / SIDE_FILE),
              metadata={"format": "pt", "onestep_audio": json.dumps(audio),
                        "onestep_guidance": model.guidance.kind if model.guidance else ""})
    tmp.rename(out)
