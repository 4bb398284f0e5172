"""Encode clip shards into latent shards once, so training neither decodes video nor runs the VAE.

    python jobs/encode.py --clips data/synthtalk --out data/latents          # tiny preset
    python jobs/encode.py --clips s3://bucket/clips --out s3://bucket/latents-wan \\
        --config small --set codec.kind=wan_vae --set codec.factor=8 \\
        --set codec.pretrained=s3://bucket/Wan2.1-I2V-14B-480P-Diffusers \\
        --set encode.actors=8 --set encode.gpus_per_actor=1

then train on them with `--set data.uri=<out>` and the same codec and audio settings (a run with
another codec, audio encoder or resolution is refused by name). Re-running an interrupted job
keeps the shards it finished.
"""

from __future__ import annotations

import argparse
import sys

from onestep import cli
from onestep.encode import encode_latents
from onestep.pretrained import PretrainedError
from onestep.storage import StorageError, resolve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default=None,
                        help="clip shards to encode (default: the config's data.uri)")
    parser.add_argument("--out", required=True, help="where the latent shards go")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()
    cfg = cli.config_from_args(args)
    endpoint = cfg.run.s3_endpoint_url
    clips = resolve(args.clips or cfg.data.uri, endpoint)
    out = resolve(args.out, endpoint)
    if clips.uri == out.uri:
        sys.exit(f"error: --out {out.uri} is the clip folder itself; choose another")
    cli.init_ray()
    try:
        manifest = encode_latents(cfg, clips, out)
    except (StorageError, PretrainedError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {manifest['num_clips']} clips' latents in {len(manifest['shards'])} shards to "
          f"{out.uri} (codec {manifest['codec']})")


if __name__ == "__main__":
    main()
