"""The lip-sync expert on held-out clips: does it find a shifted sound track, and does it tell
a video's own audio from another's?

    python benchmarks/sync.py --expert reports/pretrained/sync_expert --data data/synthtalk \\
        --clips 32 --out reports/sync

For every held-out clip (identities never trained on, their own audio): the clip with its audio
shifted by each of --shifts frames (np.roll; positive: the voice comes late), scored with an
offset search of ±sync.max_offset frames — a hit when the offset found is the shift (SyncNet's
sign: a voice d frames late reads −d); and the clip with its own audio against the same clip
with the next clip's audio: confidence (LSE-C) and distance (LSE-D) of each.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from _report import header, save

from onestep.config import SyncConfig
from onestep.evaluation.run import load_eval_clips
from onestep.sync.score import load_scorer


def _stats(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def plot(own: list[float], shuffled: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(min(own + shuffled), max(own + shuffled), 25)
    ax.hist(shuffled, bins, alpha=0.6, label="another clip's audio")
    ax.hist(own, bins, alpha=0.6, label="its own audio")
    ax.set_xlabel("sync confidence (LSE-C)")
    ax.set_ylabel("clips")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--expert", required=True, help="an export of jobs/train_sync.py")
    p.add_argument("--kind", default="onestep", choices=["onestep", "syncnet_v2"])
    p.add_argument("--data", default="data/synthtalk", help="shards with a held-out test split")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--shifts", default="-10,-5,-2,2,5,10")
    p.add_argument("--out", default="reports/sync")
    args = p.parse_args()
    scorer = load_scorer(SyncConfig(kind=args.kind, weights=args.expert))
    clips = load_eval_clips(args.data, limit=args.clips)
    rate = len(clips[0].audio) / len(clips[0].clean_frames)  # samples per frame
    shifts = [int(s) for s in args.shifts.split(",")]
    hits = {s: 0 for s in shifts}
    own, other, own_d, other_d, found = [], [], [], [], []
    for i, clip in enumerate(clips):
        for shift in shifts:
            result = scorer.score(clip.clean_frames, np.roll(clip.audio, int(shift * rate)))
            hits[shift] += result.offset == -shift
            found.append({"clip": clip.clip_id, "shift": shift, "offset": result.offset})
        mine = scorer.score(clip.clean_frames, clip.audio)
        theirs = scorer.score(clip.clean_frames, clips[(i + 1) % len(clips)].audio)
        own.append(mine.confidence)
        other.append(theirs.confidence)
        own_d.append(mine.distance)
        other_d.append(theirs.distance)
    n = len(clips)
    meta, lines = header("Lip-sync expert: offsets found and confidence, held-out clips",
                         "sync.py", "CPU")
    lines += [f"Expert: `{args.expert}` ({args.kind}); {n} held-out clips of `{args.data}`; "
              f"offset search ±{scorer.cfg.max_offset} frames.", "",
              "| audio shifted by (frames) | offset found exactly |", "|---|---|"]
    for s in shifts:
        lines.append(f"| {s:+d} | {hits[s]}/{n} = {100 * hits[s] / n:.0f}% |")
    overall = sum(hits.values()) / (n * len(shifts))
    lines += ["", f"All shifts: {100 * overall:.1f}% found exactly.", "",
              "| audio | confidence (LSE-C) ↑ | distance (LSE-D) ↓ |", "|---|---|---|",
              f"| its own | {_stats(own)} | {_stats(own_d)} |",
              f"| another clip's | {_stats(other)} | {_stats(other_d)} |", "",
              f"Own audio more confident than another clip's on "
              f"{sum(a > b for a, b in zip(own, other))}/{n} clips.", "",
              f"![confidence, own vs another clip's audio]({Path(args.out).name}.png)"]
    rows = {"shifts": {str(s): hits[s] / n for s in shifts}, "exact_overall": overall,
            "confidence_own": own, "confidence_shuffled": other, "distance_own": own_d,
            "distance_shuffled": other_d, "offsets": found}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot(own, other, Path(args.out).with_suffix(".png"))
    save(Path(args.out), meta, rows, lines)


if __name__ == "__main__":
    main()
