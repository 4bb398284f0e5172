"""Ingest's memory and speed against video length: a 1-minute and a 10-minute rendered 1080p video.

    python benchmarks/ingest.py --minutes 1 10 --out reports/ingest

Each video is rendered (onestep.synth.footage: the astronaut photograph talking, moving and
scaled, with a cut every 15 s and stretches with no face or two faces, 30 fps, H.264 + AAC),
then ingested by `onestep.ingest.job.ingest_video` as one Ray task would do it if the video were
not cut into parts (`ingest.part_seconds=0`: the whole video in one process, memory's hardest
case), in a fresh process of its own: its peak RSS is that process's own high-water mark (VmHWM, read by it at the
end: `wait4`'s ru_maxrss would count the parent's pages the child was forked with, here the
renderer's), its CPU time comes from `wait4`. The goal: peak RSS independent of length and
under 1.5 GB per worker, since a worker decodes frame by frame and writes clips as it goes.
Clips/s per core = clips / CPU seconds of that process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import header, save

from onestep.synth.footage import Face, Scene, render_footage

# 30 s that repeat: a speaker moving, a cut, the same speaker closer, nobody, two speakers.
PATTERN = [Scene(15.0, [Face((0.35, 0.5, 0.30), (0.6, 0.45, 0.36))]),
           Scene(9.0, [Face((0.5, 0.48, 0.42))]),
           Scene(3.0, []),
           Scene(3.0, [Face((0.3, 0.5, 0.3)), Face((0.7, 0.5, 0.3))])]

WORKER = r"""
import json, sys
from onestep.config import load_config
from onestep.ingest.job import ingest_video
from onestep.storage import resolve
video, out, sets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
record = ingest_video(resolve(video), "talk.mp4", resolve(out), load_config("tiny", sets))
with open("/proc/self/status") as f:  # this process's own high-water mark, after exec
    record["peak_rss_mb"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
print(json.dumps(record))
"""


def measure(video: Path, out: Path, sets: list[str]) -> dict:
    """Ingest one video in a child process; its record, peak RSS and CPU seconds."""
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", WORKER, str(video), str(out),
                              json.dumps(sets)], stdout=subprocess.PIPE, text=True)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"ingest of {video} failed ({child.returncode})")
    record = json.loads(stdout.strip().splitlines()[-1])
    cpu = usage.ru_utime + usage.ru_stime
    return {**record, "wall_s": time.perf_counter() - t0, "cpu_s": cpu,
            "clips_per_cpu_s": record["clips"] / cpu,
            "video_s_per_wall_s": record["seconds"] / (time.perf_counter() - t0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config overrides for the ingest (default: 256×256 clips)")
    p.add_argument("--out", default="reports/ingest")
    args = p.parse_args()
    sets = ["synth.resolution=256", "ingest.part_seconds=0", *args.overrides]
    rows = []
    with tempfile.TemporaryDirectory(prefix="onestep-bench-ingest-") as tmp:
        for minutes in args.minutes:
            video = Path(tmp) / f"talk-{minutes:g}min.mp4"
            repeats = max(1, round(minutes * 60 / sum(s.seconds for s in PATTERN)))
            t0 = time.perf_counter()
            render_footage(video, PATTERN * repeats, args.width, args.height)
            rendered = time.perf_counter() - t0
            row = measure(video, Path(tmp) / f"out-{minutes:g}", sets)
            rows.append({"minutes": minutes, "video_mb": video.stat().st_size / 2 ** 20,
                         "render_s": rendered, **row})
            print(json.dumps(rows[-1]), flush=True)
            video.unlink()
    meta, lines = header("Ingest: peak memory and speed against video length", "ingest.py",
                         "one ingest process per video (a Ray task's work), single-threaded "
                         "Python + FFmpeg's decoder threads")
    lines += [f"Rendered {args.width}×{args.height} 30 fps H.264 + AAC, ingested to "
              f"{sets[0].split('=')[1]}² clips of 2.4 s (`{' '.join(sets)}`), face detection at "
              "2/s on frames 480 wide.", "",
              "| video | MB | clips | tiers | dropped (s) | peak RSS MB | CPU s | wall s | "
              "analysis s | cutting s | clips per CPU s | video s per wall s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dropped = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["dropped"].items()))
        tiers = ", ".join(f"{k} {v}" for k, v in sorted(r["tiers"].items()))
        lines.append(f"| {r['minutes']:g} min | {r['video_mb']:.0f} | {r['clips']} | {tiers} | "
                     f"{dropped} | {r['peak_rss_mb']:.0f} | {r['cpu_s']:.0f} | "
                     f"{r['wall_s']:.0f} | {r['analyse_s']:.0f} | {r['cut_s']:.0f} | "
                     f"{r['clips_per_cpu_s']:.2f} | {r['video_s_per_wall_s']:.2f} |")
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        lines += ["", f"Peak RSS, {hi['minutes']:g} min vs {lo['minutes']:g} min: "
                  f"{hi['peak_rss_mb']:.0f} / {lo['peak_rss_mb']:.0f} MB = "
                  f"{hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}× for "
                  f"{hi['minutes'] / lo['minutes']:g}× the length (goal: independent of length, "
                  "< 1.5 GB per worker)."]
    save(Path(args.out), meta, rows, lines)


if __name__ == "__main__":
    main()
