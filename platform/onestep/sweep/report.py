"""The sweep's report: every trial with its status and validation metrics, the best one, a plot
of the metric against λ (one line per warm-up), and the best configuration as a YAML file that
`jobs/distill.py --config` takes as it is. Read from Tune's saved state, so an interrupted or
finished sweep can be reported at any time."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray import tune

from onestep.config import Config, from_dict
from onestep.storage import Location
from onestep.sweep.space import METRIC, num_trials, trial_clips

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
        rows.append({"trial": trial.trial_id, "self_compare_weight":
                     float(trial.config["self_compare_weight"]),
                     "warmup_steps": int(trial.config["warmup_steps"]), "status": status,
                     **{k: float(last[k]) for k, _ in COLUMNS if k in last}})
    order = {"finished": 0, "stopped early (ASHA)": 1, "unfinished": 2, "failed": 3}
    rows.sort(key=lambda r: (order[r["status"]], r.get(METRIC, float("inf"))))
    return rows


def best_row(rows: list[dict]) -> dict | None:
    """The lowest score among trials that trained to the end (ASHA's survivors)."""
    done = [r for r in rows if r["status"] == "finished" and METRIC in r]
    return min(done, key=lambda r: r[METRIC]) if done else None


def best_config(base: Config, row: dict) -> Config:
    cfg = from_dict(base.to_dict())
    cfg.adversarial.self_compare_weight = row["self_compare_weight"]
    cfg.adversarial.warmup_steps = row["warmup_steps"]
    cfg.run.name = f"{base.sweep.name}-best"
    return cfg.validate()


def _table(rows: list[dict]) -> list[str]:
    lines = ["| trial | λ | warm-up | status | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---" * (4 + len(COLUMNS)) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if k in r else "–" for k, _ in COLUMNS]
        lines.append(f"| {r['trial']} | {r['self_compare_weight']:.3g} | {r['warmup_steps']} | "
                     f"{r['status']} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("val_score", "score (Fréchet + 1 − lip-sync) ↓"), ("val_sync", "lip-sync ↑"),
            ("val_frechet", "Fréchet ↓")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for warmup in sorted({r["warmup_steps"] for r in rows}):
        line = sorted((r for r in rows if r["warmup_steps"] == warmup and METRIC in r),
                      key=lambda r: r["self_compare_weight"])
        for ax, (k, title) in zip(axes, keys):
            xs = [r["self_compare_weight"] for r in line]
            drawn = ax.plot(xs, [r[k] for r in line], "-", label=f"warm-up {warmup}")[0]
            for r in line:  # hollow: stopped before the end, its value is from fewer clips
                full = r["status"] == "finished"
                ax.plot(r["self_compare_weight"], r[k], "o", color=drawn.get_color(),
                        markerfacecolor=drawn.get_color() if full else "none")
            ax.set_title(title)
            ax.set_xlabel("self-compare weight λ")
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
    """<out>.md, <out>.json, <out>.png and, once a trial has finished, <out>-best.yaml (also
    kept beside the sweep's state as best.yaml)."""
    rows = collect(exp, base)
    best = best_row(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    best_path = None
    if best is not None:
        text = best_config(base, best).to_yaml()
        best_path = out.parent / f"{out.name}-best.yaml"
        _atomic(best_path, text)
        exp.join("best.yaml").write_bytes(text.encode())
    if rows:
        plot(rows, out.with_suffix(".png"))
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(
        r["status"] for r in rows)}
    if len(rows) < num_trials(base):  # an interrupted sweep had not created them yet
        counts["not started"] = num_trials(base) - len(rows)
    a = base.adversarial
    lines = [f"# Sweep `{base.sweep.name}`: self-compare weight λ × dynamic-timestep warm-up",
             "", f"Command: `{command}`  ", f"Date: {date}; state: `{exp.uri}`", "",
             f"{base.sweep.search} search, scheduler {base.sweep.scheduler} on `{METRIC}` "
             f"(validation Fréchet + {base.validation.sync_weight:g} × (1 − lip-sync) on "
             f"{base.validation.clips} held-out clips, every {base.validation.every_clips} "
             f"clips); each trial trains phases {a.phases} on {a.phase_clips()} clips from "
             f"`{a.student}`.", "",
             "Trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", "",
             *_table(rows), ""]
    if best is not None:
        lines += [f"**Best**: trial {best['trial']}, λ = {best['self_compare_weight']:.3g}, "
                  f"warm-up {best['warmup_steps']}: score {best[METRIC]:.4f} (lip-sync "
                  f"{best.get('val_sync', float('nan')):.3f}, Fréchet "
                  f"{best.get('val_frechet', float('nan')):.4f}). Train it with "
                  f"`python jobs/distill.py --config {best_path}`.", ""]
    lines += [f"![metric against λ]({out.with_suffix('.png').name})", ""]
    _atomic(out.with_suffix(".md"), "\n".join(lines))
    _atomic(out.with_suffix(".json"), json.dumps(
        {"command": command, "date": date, "experiment": exp.uri, "best": best, "trials": rows},
        indent=2))
    return rows, best_path


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
