"""Benchmark output: JSON + markdown under reports/, each with its command, date and machine."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path


def header(title: str, script: str, machine: str) -> tuple[dict, list[str]]:
    """Metadata for the JSON and the opening lines of the markdown."""
    meta = {"command": f"python benchmarks/{script} " + shlex.join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} CPU cores; {machine}"}
    return meta, [f"# {title}", "", f"Command: `{meta['command']}`  ",
                  f"Date: {meta['date']}; {meta['machine']}", ""]


def save(out: Path, meta: dict, rows, lines: list[str]) -> None:
    """Write <out>.json and <out>.md atomically and print the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps({**meta, "rows": rows}, indent=2)),
                         (".md", "\n".join(lines) + "\n")):
        tmp = out.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out.with_suffix(suffix))
    print(out.with_suffix(".md").read_text())


# Columns of an evaluation table (jobs/evaluate.py's metrics): (key, header, decimals).
EVAL_COLUMNS = [("sync", "lip-sync ↑", 3), ("abs_offset_frames", "abs. offset ↓", 2),
                ("frechet", "Fréchet ↓", 3), ("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3),
                ("identity", "identity ↑", 3), ("flicker", "flicker", 2),
                ("nfe_per_chunk", "NFE/chunk", 0), ("compute_s_per_video_s", "CPU s / video s", 3)]


def eval_table(rows: dict[str, dict]) -> list[str]:
    """Markdown table lines: one row per model name → its evaluation metrics."""
    lines = ["| model | " + " | ".join(c[1] for c in EVAL_COLUMNS) + " |",
             "|---|" + "---|" * len(EVAL_COLUMNS)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.{d}f}" for k, _, d in EVAL_COLUMNS)
                     + " |")
    return lines
