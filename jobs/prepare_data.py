"""Write a data set as Parquet shards + manifest (local folder or s3://bucket/prefix).

    python jobs/prepare_data.py --out data/synthtalk                 # SynthTalk, tiny preset
    python jobs/prepare_data.py --out s3://bucket/synthtalk --config small
    python jobs/prepare_data.py --out data/mine --ingest ~/videos    # your own videos
    python jobs/prepare_data.py --out s3://bucket/mine --ingest s3://bucket/raw --config small

--ingest takes a folder or s3:// prefix of talking-head videos (.mp4 .mov .mkv .webm, any
frame rate and size, with sound): scene cuts, a tracked face crop, 25 fps / 16 kHz clips of
synth.clip_seconds at synth.resolution, each with quality metrics and a tier (settings:
`ingest.*`). Re-running skips complete shards (and videos already ingested); a shard is only
ever visible complete.
"""

from __future__ import annotations

import argparse
import sys

from onestep import cli
from onestep.ingest.job import IngestError, ingest
from onestep.media import MediaError
from onestep.prepare import prepare_synthtalk
from onestep.storage import StorageError, resolve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="destination (default: the config's data.uri)")
    parser.add_argument("--ingest", default=None, metavar="FOLDER_OR_S3",
                        help="ingest a folder or s3:// prefix of talking-head videos instead")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()
    cfg = cli.config_from_args(args)
    out = resolve(args.out or cfg.data.uri, cfg.run.s3_endpoint_url)
    cli.init_ray()
    try:
        if args.ingest:
            manifest = ingest(args.ingest, cfg, out)
        else:
            manifest = prepare_synthtalk(cfg.synth, out)
    except (StorageError, MediaError, IngestError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {manifest['num_clips']} clips in {len(manifest['shards'])} shards to {out.uri}")


if __name__ == "__main__":
    main()
