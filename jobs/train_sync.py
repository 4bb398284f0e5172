"""Train onestep's lip-sync expert (stage `sync`) on any clip shards, as a Ray Train job.

    python jobs/train_sync.py --config tiny --set data.uri=data/synthtalk
    python jobs/train_sync.py --config small --set data.uri=s3://bucket/clips --resume auto

It is `jobs/distill.py --stage sync` with what the expert needs set first (SyncNet's MFCCs as the
audio features, windows long enough for its shifted negatives); any --set after them wins. The
finished expert is published at <run>/exports/sync: point `sync.weights` at it to score videos
(onestep.sync.score.load_scorer, benchmarks/sync.py).
"""

from __future__ import annotations

import sys

import distill

DEFAULTS = ["--stage", "sync", "--set", "audio.encoder=mfcc", "--set", "audio.feature_rate=100",
            "--set", "data.frames=21", "--set", "data.motion_frames=0",
            "--set", "validation.every_clips=0"]


def main(argv: list[str] | None = None) -> None:
    distill.main(DEFAULTS + (sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
