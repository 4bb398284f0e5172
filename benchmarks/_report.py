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
    meta = {"command": f"python benchmarks/{script} {shlex.join(sys.argv[1:])}".rstrip(),
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
                ("identity", "identity proxy ↑", 3), ("flicker", "flicker", 2),
                ("nfe_per_chunk", "NFE/chunk", 0), ("compute_s_per_video_s", "CPU s / video s", 3)]


# With `jobs/evaluate.py --long-seconds`: the jumps at chunk hand-overs of long generations.
SEAM_COLUMNS = [("boundary_jump", "seam: appearance ↓", 2), ("motion_jump", "seam: motion ↓", 2)]


def eval_table(rows: dict[str, dict], columns: list[tuple] = EVAL_COLUMNS) -> list[str]:
    """Markdown table lines: one row per model name → its evaluation metrics."""
    lines = ["| model | " + " | ".join(c[1] for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.{d}f}" for k, _, d in columns)
                     + " |")
    return lines


def plot_sync_frechet(rows: dict[str, dict], path: Path, reference: str = "teacher") -> None:
    """Bars of lip-sync and Fréchet distance per model (the two targets), the reference's value
    dashed across both; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(max(11, 0.55 * len(names) + 4), 3.8))
    for ax, key, label in ((axes[0], "sync", "lip-sync (higher is better)"),
                           (axes[1], "frechet", "Fréchet distance (lower is better)")):
        ax.bar(range(len(names)), [rows[n][key] for n in names],
               color=["#555" if n == reference else "#3a7" for n in names])
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        if reference in rows:
            ax.axhline(rows[reference][key], color="#555", lw=0.8, ls="--")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
