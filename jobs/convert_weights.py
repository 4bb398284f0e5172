"""Convert a released metric network's PyTorch weights (a pickle) to safetensors, once.

    python jobs/convert_weights.py inception pt_inception-2015-12-05-6726825d.pth \
        inception.safetensors
    python jobs/convert_weights.py i3d rgb_imagenet.pt i3d.safetensors       # pytorch-i3d's
    python jobs/convert_weights.py syncnet syncnet_v2.model syncnet_v2.safetensors

The file is read tensors-only (torch.load with weights_only), checked tensor by tensor against
onestep's network of that architecture and written atomically; scoring with the result never
unpickles anything. Use it with `jobs/evaluate.py --fid inception.safetensors` (`--fvd
i3d.safetensors`), or
`--set sync.kind=syncnet_v2 --set sync.weights=syncnet_v2.safetensors`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onestep.evaluation.fid import FidWeightsError, convert_inception
from onestep.evaluation.fvd import FvdWeightsError, convert_i3d
from onestep.sync.score import SyncExpertError, convert_syncnet

CONVERTERS = {"inception": convert_inception, "i3d": convert_i3d, "syncnet": convert_syncnet}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(CONVERTERS), help="which network the file holds")
    p.add_argument("src", type=Path, help="the released weights file")
    p.add_argument("dest", type=Path, help="where to write the .safetensors")
    args = p.parse_args(argv)
    if not args.src.is_file():
        sys.exit(f"error: {args.src}: no such file")
    if args.dest.exists():
        sys.exit(f"error: {args.dest} already exists; choose a new name")
    try:
        count = CONVERTERS[args.kind](args.src, args.dest)
    except (FidWeightsError, FvdWeightsError, SyncExpertError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.dest}: {count} tensors ({args.kind})")


if __name__ == "__main__":
    main()
