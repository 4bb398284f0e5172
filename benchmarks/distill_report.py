"""reports/distill.md: the distilled students against the teacher, from evaluation JSONs.

    python benchmarks/distill_report.py --eval reports/distill-eval.json \\
        --speed reports/speed.json --notes reports/distill-notes.md --out reports/distill

Merges the rows of one or more `jobs/evaluate.py` outputs (in order), checks the issue's
targets — the 1-step generator within 10% of the teacher's lip-sync and within 1.25× of its
Fréchet distance, progressive 1-step better than direct 1-step, and (with --speed) the 1-step
generator at least 100× faster than the teacher end to end — and plots lip-sync and Fréchet
distance per model (PNG). The first row named `teacher` is the reference. With --ablation (the
output of benchmarks/ablations.py) the ablation rows follow in a table of their own; with --fada
and --osa-lcm (benchmarks/fada.py's and benchmarks/osa_lcm.py's ledgers, scored on the same
held-out clips with the same reader) the three recipes' students follow side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import fada
import osa_lcm
from _report import eval_table, plot_sync_frechet, save
from ablations import markdown as ablation_markdown

TURBOTALK_ROWS = ("teacher", "DMD 4-step", "progressive 1-step", "direct 1-step")


def recipes(rows: dict, ledgers: dict) -> list[str]:
    """The three recipes' students in one table: TurboTalk's from this report's evaluations,
    FADA's and OSA-LCM's from their benchmarks' ledgers (what is not run yet is named)."""
    table = {k if k == "teacher" else f"TurboTalk: {k}": rows[k]
             for k in TURBOTALK_ROWS if k in rows}
    missing = []
    for recipe, (module, path) in ledgers.items():
        data = json.loads(Path(path).read_text())
        for key, name in module.DISTILL_ROWS.items():
            if key in data["rows"]:
                table[f"{recipe}: {name}"] = data["rows"][key]["metrics"]
            else:
                missing.append(f"{recipe}: {name}")
    budgets = "; ".join(f"{recipe}: {json.loads(Path(path).read_text())['setup']['clips']:,} "
                        "clips per trained row" for recipe, (_, path) in ledgers.items())
    lines = ["## The three recipes side by side", "",
             ("The same teacher, held-out clips and mouth reader; each recipe's rows come from "
              "its benchmark (" + ", ".join(f"`{p}`" for _, p in ledgers.values()) + "), "
              "whose commands they record. Budgets differ: TurboTalk's rows are this report's "
              f"(the adversarial stage at 2,560 clips); {budgets}. Like for like, TurboTalk's "
              "direct 4→1 at 640 clips is in reports/osa_lcm.md's references."), "",
             *eval_table(table), ""]
    return lines + ([f"Not run yet: {'; '.join(missing)}.", ""] if missing else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", action="append", required=True)
    p.add_argument("--ablation", default=None, help="benchmarks/ablations.py output (JSON)")
    p.add_argument("--speed", default=None)
    p.add_argument("--fada", default=None, help="benchmarks/fada.py's ledger (JSON)")
    p.add_argument("--osa-lcm", default=None, help="benchmarks/osa_lcm.py's ledger (JSON)")
    p.add_argument("--notes", default=None, help="markdown appended (training commands, reading)")
    p.add_argument("--out", default="reports/distill")
    args = p.parse_args()

    rows, commands = {}, []
    for path in args.eval:
        data = json.loads(Path(path).read_text())
        rows.update(data["results"])
        commands.append(data["meta"]["command"])
    lines = ["# Distillation on SynthTalk: teacher → DMD 4-step → progressive 3/2/1-step", "",
             ("Held-out identities with their own audio (see reports/teacher.md for the metrics). "
              "Every student samples without CFG; the teacher with audio CFG."), "",
             *eval_table(rows), "", "![lip-sync and Fréchet distance per model](distill.png)", ""]

    checks = {}
    teacher = rows.get("teacher")
    one = rows.get("progressive 1-step")
    if teacher and one:
        checks["1-step lip-sync ≥ 90% of teacher's"] = (one["sync"] / teacher["sync"], 0.9)
        checks["1-step Fréchet ≤ 1.25× teacher's"] = (one["frechet"] / teacher["frechet"], 1.25)
    direct = rows.get("direct 1-step")
    if one and direct:
        checks["progressive 1-step lip-sync > direct 1-step's"] = (one["sync"] - direct["sync"], 0)
    speed = json.loads(Path(args.speed).read_text()) if args.speed else None
    fastest = speed and next((r for r in speed["rows"] if r["nfe_per_chunk"] == 1), None)
    if fastest:
        checks[f"1-step end-to-end speed-up ≥ 100× ({fastest['model']})"] = (
            fastest["speedup_vs_first"], 100)
    if checks:
        lines += ["| target | measured | threshold | met |", "|---|---|---|---|"]
        for name, (value, threshold) in checks.items():
            met = value <= threshold if "≤" in name else value >= threshold if "≥" in name \
                else value > threshold
            lines.append(f"| {name} | {value:.3f} | {threshold} | {'yes' if met else 'no'} |")
        lines.append("")
    if speed:
        lines += ["Speed (from `" + speed["command"] + "`):", "",
                  "| model | NFE / chunk | s per video s | speed-up |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['nfe_per_chunk']} | {r['wall_s_per_video_s']:.4f} | "
                  f"{r['speedup_vs_first']:.1f}× |" for r in speed["rows"]]
        lines.append("")
    ledgers = {name: (module, path) for name, module, path in (
        ("FADA", fada, args.fada), ("OSA-LCM", osa_lcm, args.osa_lcm)) if path}
    if ledgers:
        lines += recipes(rows, ledgers)
    out = Path(args.out)
    if args.ablation:
        plot = Path(args.ablation).with_suffix(".png")
        lines += ablation_markdown(json.loads(Path(args.ablation).read_text()), heading="##",
                                   plot=os.path.relpath(plot, out.parent) if plot.exists()
                                   else None)
    lines += ["Evaluation commands:", ""] + [f"    {c}" for c in commands] + [""]
    if args.notes:
        lines.append(Path(args.notes).read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_sync_frechet(rows, out.with_suffix(".png"))
    meta = {"command": "python benchmarks/distill_report.py " + shlex.join(sys.argv[1:]),
            "evaluations": commands,
        "checks": {k: {"value": v, "threshold": t} for k, (v, t) in checks.items()}}
    save(out, meta, rows, lines)


if __name__ == "__main__":
    main()
