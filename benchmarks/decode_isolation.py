"""What decoding uploads in a limited child process costs per request, against decoding in the
server's own process: the same portrait + speech through `validate` and `validate_isolated`.

    python benchmarks/decode_isolation.py            # → reports/decode_isolation.{json,md}

Interleaved repeats of each case, median and 90th percentile; the overhead is the difference of
the medians, measured in this one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from onestep.serving.isolation import warm_up
from onestep.serving.validation import Limits, validate, validate_isolated

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(side: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _wav(seconds: float, rate: int = 44100) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 180 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(x, 2).tobytes())
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "decode_isolation")
    args = p.parse_args()
    warm_up()
    cases = {"512² JPEG + 1 s stereo WAV": (_jpeg(512), _wav(1.0)),
             "2048² JPEG + 10 s stereo WAV": (_jpeg(2048), _wav(10.0))}
    rows = []
    for name, (image, audio) in cases.items():
        times = {"in process": [], "isolated": []}
        for _ in range(args.repeats):
            for label, fn in (("in process", validate), ("isolated", validate_isolated)):
                t0 = time.perf_counter()
                fn(image, audio, {}, Limits(), 32, 25, 16000)
                times[label].append(1000 * (time.perf_counter() - t0))
        row = {"case": name, "upload_kb": (len(image) + len(audio)) // 1024}
        for label, ms in times.items():
            row[label] = {"median_ms": statistics.median(ms),
                          "p90_ms": sorted(ms)[int(0.9 * (len(ms) - 1))]}
        row["overhead_ms"] = row["isolated"]["median_ms"] - row["in process"]["median_ms"]
        rows.append(row)
        print(f"{name}: {row['in process']['median_ms']:.1f} ms in process, "
              f"{row['isolated']['median_ms']:.1f} ms isolated", flush=True)
    meta = {"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(),
            "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Decoding uploads in a limited child process\n\nCommand: `{meta['command']}`  ",
             f"Date: {meta['date']}, {meta['cpus']} CPUs, {args.repeats} interleaved repeats\n",
             "| request | upload | in process: median / p90 | isolated: median / p90 | "
             "overhead (medians) |", "|---|---|---|---|---|"]
    for r in rows:
        a, b = r["in process"], r["isolated"]
        lines.append(f"| {r['case']} | {r['upload_kb']} KB | {a['median_ms']:.1f} / "
                     f"{a['p90_ms']:.1f} ms | {b['median_ms']:.1f} / {b['p90_ms']:.1f} ms | "
                     f"{r['overhead_ms']:+.1f} ms |")
    lines.append("\nThe child is forked from a server process that has imported the decoders "
                 "(multiprocessing's forkserver), limited with RLIMIT_DATA / RLIMIT_CPU, and "
                 "answers with raw arrays (no pickle); the overhead is the fork, the transfer of "
                 "the upload to the child and of the decoded arrays back.")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
