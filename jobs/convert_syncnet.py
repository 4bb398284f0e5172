"""Convert the released SyncNet weights (syncnet_v2.model, a PyTorch pickle) to safetensors, once.

    python jobs/convert_syncnet.py syncnet_v2.model syncnet_v2.safetensors

The file is read tensors-only (torch.load with weights_only), checked key by key against onestep's
SyncNetV2 and written atomically. Score with the result: --set sync.kind=syncnet_v2
--set sync.weights=syncnet_v2.safetensors (nothing is unpickled then).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onestep.sync.score import SyncExpertError, convert_syncnet


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="the released syncnet_v2.model")
    p.add_argument("dest", type=Path, help="where to write the .safetensors")
    args = p.parse_args(argv)
    if not args.src.is_file():
        sys.exit(f"error: {args.src}: no such file")
    if args.dest.exists():
        sys.exit(f"error: {args.dest} already exists; choose a new name")
    try:
        count = convert_syncnet(args.src, args.dest)
    except SyncExpertError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.dest}: {count} tensors of syncnet_v2")


if __name__ == "__main__":
    main()
