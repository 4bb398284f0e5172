"""`make demo` as a new user meets it: a fresh clone, the install, then every step of the demo,
each timed, and the demo's evaluation and contact sheet → reports/demo.{json,md,png}.

    python benchmarks/demo.py                   # clones this checkout's HEAD into a temp folder
    python benchmarks/demo.py --keep /tmp/demo  # ... into a folder that is kept afterwards

The steps are the demo target's own commands (`make -n demo`), so the timings are of exactly
what `make demo` runs; a step that fails stops the run and the report names it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onestep.evaluation.run import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def _run(command: str, cwd: Path, log) -> float:
    """Run one shell command in `cwd`, its output appended to `log`; its wall time in seconds."""
    log.write(f"\n$ {command}\n")
    log.flush()
    t0 = time.perf_counter()
    rc = subprocess.run(command, shell=True, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if rc:
        raise SystemExit(f"`{command}` failed (exit {rc}); its output is in {log.name}")
    return time.perf_counter() - t0


def _steps(clone: Path) -> list[str]:
    """The demo target's commands, one per line as make would run them."""
    out = subprocess.run(["make", "-n", "demo"], cwd=clone, capture_output=True, text=True,
                         check=True).stdout
    return [" ".join(line.split()) for line in out.replace("\\\n", " ").splitlines()
            if line.strip() and not line.startswith("echo ")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=Path, default=None, help="clone into this (empty) folder and "
                   "keep it; default: a temporary folder, removed afterwards")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "demo")
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.strip()
    clone = args.keep or Path(tempfile.mkdtemp(prefix="onestep-demo-")) / "onestep"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    timings: list[tuple[str, float]] = []
    with open(args.out.with_suffix(".log"), "w") as log:  # not committed: progress bars
        timings.append(("make install", _run("make install", clone, log)))
        for step in _steps(clone):
            timings.append((step, _run(step, clone, log)))
            print(f"{timings[-1][1]:7.1f} s  {step[:100]}", flush=True)
    evaluation = json.loads((clone / "demo" / "eval.json").read_text())
    shutil.copyfile(clone / "demo" / "eval.png", args.out.with_suffix(".png"))
    demo_s = sum(s for name, s in timings[1:])
    report = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cpus": os.cpu_count(), "install_s": timings[0][1], "demo_s": demo_s,
              "steps": [{"command": c, "seconds": s} for c, s in timings],
              "evaluation": evaluation}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(_markdown(report, args.out))
    if args.keep is None:
        shutil.rmtree(clone.parent)
    print(f"install {timings[0][1]:.0f} s, demo {demo_s:.0f} s → {args.out.with_suffix('.md')}")


def _markdown(report: dict, out: Path) -> str:
    rows = "\n".join(f"| {s['seconds']:.0f} | `{s['command']}` |" for s in report["steps"])
    table = markdown_table(report["evaluation"]["results"])
    return f"""# `make demo` on a fresh clone

Command: `{' '.join(['python', *sys.argv])}` (clones commit {report['commit']}, runs `make install`,
then each command of `make demo` in turn)  \nDate: {report['date']}, {report['cpus']} CPUs

**Install {report['install_s'] / 60:.1f} min, then the demo {report['demo_s'] / 60:.1f} min.**

| seconds | step |
|---|---|
{rows}

## The demo's evaluation (demo/eval.md)

{table}

![the first held-out clip: ground truth, the shipped teacher, the 4-step and the 1-step student]({out.with_suffix('.png').name})
"""


if __name__ == "__main__":
    main()
