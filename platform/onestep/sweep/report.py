"""The sweep's report: every trial with its values, status and validation metrics, the best one,
a plot of the metrics against the first swept key (one line per value of the others), and the
best configuration as a YAML file that `jobs/distill.py --config` takes as it is. Read from
Tune's saved state, so an interrupted or finished sweep can be reported at any time."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray import tune

from onestep.config import Config, with_values
from onestep.stages import stage_class
from onestep.storage import Location
from onestep.sweep.space import METRIC, describe, label, num_trials, trial_clips

COLUMNS = [("val_score", "score ↓"), ("val_sync", "lip-sync ↑"), ("val_frechet", "Fréchet ↓"),
           ("val_psnr", "PSNR ↑"), ("val_flicker", "flicker"), ("clips_seen", "clips")]


def collect(exp: Location, cfg: Config) -> list[dict]:
    """One row per trial, best first (finished trials before stopped, failed and unfinished)."""
    analysis = tune.ExperimentAnalysis(exp.path, storage_filesystem=exp.fs)
    full, rows = trial_clips(cfg), []
    for trial in analysis.trials:
        last = trial.last_result or {}
        if trial.status == "ERROR":
            status = "failed"
        elif trial.status != "TERMINATED":
            status = "unfinished"
        elif last.get("clips_seen", 0) >= full:
            status = "finished"
        else:
            status = "stopped early (ASHA)"
        rows.append({"trial": trial.trial_id,
                     "params": {k: trial.config[k] for k in cfg.sweep.space},
                     "status": status, **{k: float(last[k]) for k, _ in COLUMNS if k in last}})
    order = {"finished": 0, "stopped early (ASHA)": 1, "unfinished": 2, "failed": 3}
    rows.sort(key=lambda r: (order[r["status"]], r.get(METRIC, float("inf"))))
    return rows


def best_row(rows: list[dict]) -> dict | None:
    """The lowest score among trials that trained to the end (ASHA's survivors)."""
    done = [r for r in rows if r["status"] == "finished" and METRIC in r]
    return min(done, key=lambda r: r[METRIC]) if done else None


def best_config(base: Config, row: dict) -> Config:
    cfg = with_values(base, row["params"])
    cfg.run.name = f"{base.sweep.name}-best"
    return cfg


def _table(rows: list[dict], keys: list[str]) -> list[str]:
    lines = ["| trial | " + " | ".join(label(k, keys) for k in keys) + " | status | "
             + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (2 + len(keys) + len(COLUMNS))
             + "|"]
    for r in rows:
        values = [_cell(r["params"][k]) for k in keys]
        cells = [f"{r[k]:.4g}" if k in r else "–" for k, _ in COLUMNS]
        lines.append(f"| {r['trial']} | " + " | ".join(values) + f" | {r['status']} | "
                     + " | ".join(cells) + " |")
    return lines


def _cell(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def plot(rows: list[dict], keys: list[str], path: Path) -> None:
    """The metrics against the first swept key, one line per combination of the others; a key
    whose values are not numbers is spread evenly along its axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, others = keys[0], keys[1:]
    xs = sorted({r["params"][x_key] for r in rows}, key=str)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    where = (lambda x: x) if numeric else {x: i for i, x in enumerate(xs)}.__getitem__
    metrics = [("val_score", "score (Fréchet + 1 − lip-sync) ↓"), ("val_sync", "lip-sync ↑"),
               ("val_frechet", "Fréchet ↓")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    groups = sorted({tuple(r["params"][k] for k in others) for r in rows}, key=str)
    for group in groups:
        line = sorted((r for r in rows if METRIC in r
                       and tuple(r["params"][k] for k in others) == group),
                      key=lambda r: where(r["params"][x_key]))
        name = describe(dict(zip(others, group))) or None
        for ax, (k, title) in zip(axes, metrics):
            at = [where(r["params"][x_key]) for r in line]
            drawn = ax.plot(at, [r[k] for r in line], "-", label=name)[0]
            for x, r in zip(at, line):  # hollow: stopped before the end, from fewer clips
                full = r["status"] == "finished"
                ax.plot(x, r[k], "o", color=drawn.get_color(),
                        markerfacecolor=drawn.get_color() if full else "none")
            ax.set_title(title)
            ax.set_xlabel(label(x_key, keys))
            if not numeric:
                ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    if others:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def pending(rows: list[dict], cfg: Config) -> int:
    """Trials still to run: unfinished ones plus those an interrupted sweep never started."""
    return sum(r["status"] == "unfinished" for r in rows) + max(0, num_trials(cfg) - len(rows))


def write(exp: Location, base: Config, out: Path, command: str) -> tuple[list[dict], Path | None]:
    """<out>.md (ending with <out>-reading.md where a person wrote one), <out>.json, <out>.png
    and, once a trial has finished, <out>-best.yaml (also kept beside the sweep's state as
    best.yaml)."""
    rows = collect(exp, base)
    best = best_row(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    best_path = None
    if best is not None:
        text = best_config(base, best).to_yaml()
        best_path = out.parent / f"{out.name}-best.yaml"
        _atomic(best_path, text)
        exp.join("best.yaml").write_bytes(text.encode())
    keys = list(base.sweep.space)
    if rows:
        plot(rows, keys, out.with_suffix(".png"))
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(
        r["status"] for r in rows)}
    if len(rows) < num_trials(base):  # an interrupted sweep had not created them yet
        counts["not started"] = num_trials(base) - len(rows)
    stage = base.train.stage
    sources = [f"{key} `{value}`" for key in stage_class(stage).sources
               if (value := getattr(getattr(base, key.split(".")[0]), key.split(".")[1]))]
    lines = [f"# Sweep `{base.sweep.name}`: {' × '.join(keys)} (stage {stage})",
             "", f"Command: `{command}`  ", f"Date: {date}; state: `{exp.uri}`", "",
             f"{base.sweep.search} search, scheduler {base.sweep.scheduler} on `{METRIC}` "
             f"(validation Fréchet + {base.validation.sync_weight:g} × (1 − lip-sync) on "
             f"{base.validation.clips} held-out clips, every {base.validation.every_clips} "
             f"clips); each trial trains {trial_clips(base)} clips"
             + (f" from {', '.join(sources)}" if sources else "") + ".", "",
             "Trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", "",
             *_table(rows, keys), ""]
    if best is not None:
        lines += [f"**Best**: trial {best['trial']}, {describe(best['params'])}: score "
                  f"{best[METRIC]:.4f} (lip-sync "
                  f"{best.get('val_sync', float('nan')):.3f}, Fréchet "
                  f"{best.get('val_frechet', float('nan')):.4f}). Train it with "
                  f"`python jobs/distill.py --config {best_path}`.", ""]
    lines += [f"![metrics against {label(keys[0], keys)}]({out.with_suffix('.png').name})", ""]
    reading = out.with_name(f"{out.name}-reading.md")
    if reading.exists():  # what a person made of it, kept as it is across rewrites
        lines += [reading.read_text(), ""]
    _atomic(out.with_suffix(".md"), "\n".join(lines))
    _atomic(out.with_suffix(".json"), json.dumps(
        {"command": command, "date": date, "experiment": exp.uri, "best": best, "trials": rows},
        indent=2))
    return rows, best_path


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
