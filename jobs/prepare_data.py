"""Write a data set as Parquet shards + manifest (local folder or s3://bucket/prefix).

    python jobs/prepare_data.py --out data/synthtalk                 # SynthTalk, tiny preset
    python jobs/prepare_data.py --out s3://bucket/synthtalk --config small
    python jobs/prepare_data.py --out data/mine --ingest ~/videos    # your own .mp4 files

Re-running skips complete shards; a shard is only ever visible complete.
"""

from __future__ import annotations

import argparse
import sys

from onestep import cli
from onestep.media import MediaError
from onestep.prepare import ingest_videos, prepare_synthtalk
from onestep.storage import StorageError, resolve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="destination (default: the config's data.uri)")
    parser.add_argument("--ingest", default=None, metavar="FOLDER",
                        help="cut a folder of talking-head .mp4 videos into clips instead")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()
    cfg = cli.config_from_args(args)
    out = resolve(args.out or cfg.data.uri, cfg.run.s3_endpoint_url)
    cli.init_ray()
    try:
        if args.ingest:
            manifest = ingest_videos(args.ingest, cfg.synth, out)
        else:
            manifest = prepare_synthtalk(cfg.synth, out)
    except (StorageError, MediaError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {manifest['num_clips']} clips in {len(manifest['shards'])} shards to {out.uri}")


if __name__ == "__main__":
    main()
