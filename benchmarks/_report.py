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
