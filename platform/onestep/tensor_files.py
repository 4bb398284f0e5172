"""One-time conversions of released PyTorch weight files (pickles) into safetensors.

Released metric networks (SyncNet, FID's Inception) ship as PyTorch pickles. They are read once,
explicitly, tensors-only (`torch.load(weights_only=True)`), and written as safetensors, so that
nothing is unpickled when onestep scores with them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


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
