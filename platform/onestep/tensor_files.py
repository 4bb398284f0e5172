"""Released metric networks' weights: converted once from PyTorch pickles to safetensors, then
read and checked against the network they are for.

Released metric networks (SyncNet, FID's Inception, FVD's I3D) ship as PyTorch pickles. They are
read once, explicitly, tensors-only (`torch.load(weights_only=True)`), and written as
safetensors, so that nothing is unpickled when onestep scores with them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from onestep.storage import resolve


def read_torch_tensors(src: Path, error: type[Exception]) -> dict[str, torch.Tensor]:
    """A state dict from a PyTorch file, tensors-only; `error` names the file otherwise."""
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # any pickle beyond tensors, or a damaged file
        raise error(f"{src}: not a file of tensors torch can load safely "
                    f"({str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise error(f"{src}: holds a {type(state).__name__}, not a state dict")
    return state


def write_tensors(state: dict[str, torch.Tensor], dest: Path, kind: str) -> int:
    """`state` as safetensors at `dest`, atomically (tagged with `kind`); the tensor count."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
              metadata={"format": "pt", "onestep": kind})
    tmp.replace(dest)
    return len(state)


def read_safetensors(uri: str, endpoint_url: str, error: type[Exception],
                     convert: str) -> dict[str, torch.Tensor]:
    """The tensors of a converted file (local or s3://); `convert` is the command that makes one,
    named when the file is something else."""
    loc = resolve(uri, endpoint_url)
    if not loc.exists():
        raise error(f"{uri}: no such file")
    try:
        return load_bytes(loc.read_bytes())
    except Exception as e:  # safetensors' own errors for a damaged or foreign file
        raise error(f"{uri}: not a safetensors file ({e}); convert the released weights with "
                    f"{convert}") from None


def check_state(state: dict[str, torch.Tensor], model: torch.nn.Module, where: str,
                error: type[Exception], what: str = "") -> None:
    """`state` holds exactly `model`'s tensors at their shapes (BatchNorm's batch counters may be
    missing: older files lack them); else `error` names `where` and the first differences."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    wrong = [f"{k} is {tuple(v.shape)}, expected {tuple(expected[k])}"
             for k, v in state.items() if k in expected and v.shape != expected[k]]
    missing = sorted(set(expected) - set(state) - optional)
    unknown = sorted(set(state) - set(expected))
    for problem, keys in (("shapes differ", wrong), (f"{len(missing)} keys missing", missing),
                          (f"{len(unknown)} keys it does not have", unknown)):
        if keys:
            raise error(f"{where}: not weights of {what or 'a ' + type(model).__name__} "
                        f"({problem}: {'; '.join(keys[:4])})")
