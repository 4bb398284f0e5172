"""FADA's ablations (its Table 4) and guidance-scale curves (its Figures 3–4) on SynthTalk.

    python jobs/prepare_data.py --out data/synthtalk --set synth.num_clips=480 \\
        --set synth.clips_per_shard=24
    python benchmarks/fada.py --teacher reports/pretrained/teacher --data data/synthtalk \\
        --reader reports/pretrained/mouth_reader.safetensors --clips 640 --set run.root=runs \\
        --out reports/fada

Every row is one `jobs/distill.py --stage fada` run from the same teacher at the same `--clips`,
differing only in the switches its row names: first the mixed supervision (FADA-Balanced
students, sampled with multi-CFG), then how guidance is distilled (on adaptive mixed
supervision), then TurboTalk's adversarial stage taking the FADA-Fast student to one step.
Curves: lip-sync and Fréchet distance of the teacher, FADA-Fast and its 1-step student as the
audio scale varies (reference scale at its default), then as the reference scale varies — does
the student follow the teacher? Rows, references and curve points are recorded one by one in
<out>.json (benchmarks/_ledger.py), so the report fills up across calls; a call with another
teacher, reader, data or budget is refused rather than mixed in. A reading of the
results, written by a person, goes in <out>-reading.md; the report includes it as it is.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import _ledger
from _report import eval_table, plot_sync_frechet

from onestep import cli
from onestep.checkpoint import resolve_checkpoint
from onestep.config import Config
from onestep.evaluation.mouth_reader import load_or_train
from onestep.train.ray_job import export_location, run_location

BALANCED = "fada.cfg_mode=none"
MIXED = "Mixed supervision (FADA Table 4, upper): FADA-Balanced students, multi-CFG at sampling"
CFG = "Guidance distilled (FADA Table 4, lower), on adaptive mixed supervision"
ONE = "One step: TurboTalk's adversarial stage from FADA-Fast"
UNGUIDED = ["--audio-scale", "1", "--ref-scale", "1"]
# key → (section, name, stage, overrides, evaluation arguments, row whose export it evaluates
# instead of training, row whose export is its student)
ROWS = {
    "perflow-high": (MIXED, "PeRFlow, high tier only",
                     "fada", [BALANCED, "fada.gt_weighting=off", "data.tiers=[high]"], [], None,
                     None),
    "perflow-all": (MIXED, "+ moderate and low clips, teacher loss only (Fixed-0)",
                    "fada", [BALANCED, "fada.gt_weighting=off"], [], None, None),
    "fixed": (MIXED, "+ ground-truth loss, Fixed-0.2", "fada",
              [BALANCED, "fada.gt_weighting=fixed", "fada.gt_weight_peak=0.2"], [], None, None),
    "unlimited": (MIXED, "+ Adaptive-unl.-0.25", "fada",
                  [BALANCED, "fada.gt_weighting=unlimited"], [], None, None),
    "adaptive": (MIXED, "+ Adaptive-0.25 (FADA-Balanced)", "fada", [BALANCED], [], None, None),
    "cfg-off": (CFG, "w/o guidance: FADA-Balanced at scales 1 (1 NFE per step)", "fada", [],
                UNGUIDED, "adaptive", None),
    "cfg-scalar": (CFG, "+ scale embedding", "fada", ["fada.cfg_mode=scalar"], [], None, None),
    "cfg-layer": (CFG, "+ guidance layer", "fada", ["fada.cfg_mode=layer"], [], None, None),
    "cfg-tokens": (CFG, "+ guidance layer with tokens (FADA-Fast)", "fada",
                   ["fada.cfg_mode=tokens"], [], None, None),
    "cfg-tokens-fast": (CFG, "FADA-Fast, its guidance input at 30× the rate", "fada",
                        ["fada.cfg_mode=tokens", "fada.guidance_lr_scale=30"], [], None, None),
    "one-step": (ONE, "1-step adversarial student of FADA-Fast", "adversarial",
                 ["adversarial.phases=[1]"], [], None, "cfg-tokens"),
}
# The rows reports/distill.md shows beside the other recipes' (benchmarks/distill_report.py).
DISTILL_ROWS = {"adaptive": "FADA-Balanced (6 steps, multi-CFG)",
                "cfg-tokens": "FADA-Fast (6 steps, guidance tokens)",
                "one-step": "FADA-Fast → adversarial 1-step"}
AUDIO_SCALES, REF_SCALES = (1.0, 2.0, 4.0, 6.5), (1.0, 1.5, 2.0, 3.0)
CURVE_MODELS = {"teacher": "teacher", "cfg-tokens": "FADA-Fast", "one-step": "1-step",
                "cfg-tokens-fast": "FADA-Fast, guidance 30× rate"}


def export_name(stage: str, cfg: Config) -> str:
    return f"{sum(cfg.fada.steps_per_window)}step" if stage == "fada" else "1step"


class Ledger(_ledger.Ledger):
    def written(self) -> None:
        plot_sync_frechet(_ledger.named_metrics(self.data, ROWS), self.path.with_suffix(".png"))
        if self.data.get("curves"):
            plot_curves(self.data["curves"], self.path.with_name(self.path.stem + "-scales.png"))
        _ledger.write_markdown(self.path, markdown(self.data, self.path))


def _retrain_for_curves(args, ledger: Ledger, key: str, export: str, endpoint: str) -> bool:
    """A recorded row is trained again when its curve points are still missing and its export
    is gone (runs do not outlive the machine they were trained on): with the same command, and
    its row is recorded again, so that the row and its curve points describe one model."""
    if args.no_curves or key not in CURVE_MODELS or _curves_done(ledger, key):
        return False
    if _ledger.export_exists(export, endpoint):
        return False
    print(f"# {CURVE_MODELS[key]} has curve points to record but its export {export} is gone: "
          "training its row again with the same command", flush=True)
    return True


def _curves_done(ledger: Ledger, model: str) -> bool:
    return all(ledger.has("curves", curve_key(model, a, r, varied))
               for varied, a, r in curve_points())


def curve_points() -> list[tuple[str, float, float]]:
    """Figure 3: the audio scale varies at reference 1; Figure 4: the reference scale varies at
    audio 2."""
    return [("audio", a, 1.0) for a in AUDIO_SCALES] + [("ref", 2.0, r) for r in REF_SCALES]


def curve_key(model: str, audio: float, ref: float, varied: str) -> str:
    return f"{model}@audio{audio:g}@ref{ref:g}@{varied}"


def plot_curves(curves: dict, path: Path) -> None:
    """Lip-sync and Fréchet distance against each scale, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for col, (varied, values) in enumerate((("audio", AUDIO_SCALES), ("ref", REF_SCALES))):
        for model, label in CURVE_MODELS.items():
            points = [(v, curves[k]["metrics"]) for v in values
                      if (k := _point(curves, model, varied, v))]
            if not points:
                continue
            for row, (metric, title) in enumerate((("sync", "lip-sync ↑"),
                                                   ("frechet", "Fréchet ↓"))):
                axes[row, col].plot([v for v, _ in points], [m[metric] for _, m in points],
                                    "o-", label=label)
                axes[row, col].set_title(f"{title} against the {varied} scale", fontsize=10)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _point(curves: dict, model: str, varied: str, value: float) -> str | None:
    """The key of the recorded point of `model` at `value` of the varied scale, if any."""
    for key, entry in curves.items():
        if entry["model"] == model and entry["varied"] == varied and entry[varied] == value:
            return key
    return None


def markdown(data: dict, path: Path) -> list[str]:
    setup, rows, refs = data["setup"], data["rows"], data["references"]
    lines = ["# FADA on SynthTalk: Table 4's ablation and Figures 3–4's guidance curves", "",
             (f"Students of one teacher, every row at {setup['clips']} clips, evaluated on "
              f"{setup['eval_clips']} held-out clips. Made by `{data['command']}`; shared "
              f"settings: {', '.join(setup['settings']) or 'none'}."), ""]
    if refs:
        lines += ["## References", "", *eval_table({r["name"]: r["metrics"]
                                                    for r in refs.values()}), ""]
    lines += _ledger.section_tables(ROWS, rows)
    lines += [f"![lip-sync and Fréchet distance of every row]({path.with_suffix('.png').name})",
              ""]
    if data.get("curves"):
        lines += ["## Guidance scales (Figures 3–4)", "",
                  "| model | audio scale | reference scale | lip-sync ↑ | Fréchet ↓ | NFE/chunk |",
                  "|---|---|---|---|---|---|"]
        for e in data["curves"].values():
            m = e["metrics"]
            lines.append(f"| {CURVE_MODELS[e['model']]} | {e['audio']:g} | {e['ref']:g} | "
                         f"{m['sync']:.3f} | {m['frechet']:.3f} | {m['nfe_per_chunk']:.0f} |")
        lines += ["", f"![metrics against the scales]({path.stem}-scales.png)", ""]
    return lines + _ledger.closing_lines(data, path, ("references", "rows", "curves"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher checkpoint or run")
    p.add_argument("--data", required=True, help="SynthTalk shards (training and held-out test)")
    p.add_argument("--clips", type=int, required=True, help="training clips of every row")
    p.add_argument("--prefix", default="fada", help="run names: <prefix>-<row key>")
    p.add_argument("--only", action="append", default=[], choices=list(ROWS),
                   help="run only these rows (repeatable; default: every missing row)")
    p.add_argument("--no-curves", action="store_true", help="skip Figures 3–4's points")
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--reader", default="runs/mouth_reader.safetensors")
    p.add_argument("--out", default="reports/fada")
    cli.add_config_args(p)
    args = p.parse_args()
    cli.setup_logging()
    cfg = cli.config_from_args(args, [f"data.uri={args.data}"])
    endpoint = cfg.run.s3_endpoint_url
    load_or_train(args.reader, cfg.synth, endpoint_url=endpoint)
    teacher = resolve_checkpoint(args.teacher, endpoint)
    setup = _ledger.distillation_setup(args, teacher, endpoint)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out.with_suffix(".json"), setup, "python benchmarks/fada.py " + shlex.join(
        _ledger.without_choices(sys.argv[1:], ("--only",))))
    evaluate = _ledger.Evaluator(out, args.data, args.eval_clips, args.reader, endpoint)
    for key, name, steps in (("teacher", "teacher (multi-CFG)", None),
                             ("teacher-6", "teacher, 6 Euler steps (multi-CFG)", 6)):
        if not ledger.has("references", key):
            ledger.record("references", key, {"name": name, **evaluate(key, name, teacher, steps)})

    exports = {}
    for key, (_, name, stage, overrides, extra, same_as, student_of) in ROWS.items():
        run_key = same_as or key
        cfg.train.stage, cfg.run.name = stage, f"{args.prefix}-{run_key}"
        exports[key] = export_location(cfg, export_name(stage, cfg)).uri
        if args.only and key not in args.only:
            continue
        if ledger.has("rows", key) and not _retrain_for_curves(args, ledger, key, exports[key],
                                                               endpoint):
            continue
        train = None
        if same_as is None:
            student = ["--student", exports[student_of]] if student_of else []
            sets = [f"data.uri={args.data}", *args.overrides, f"run.name={cfg.run.name}",
                    f"train.total_clips={args.clips}", f"adversarial.clips_per_phase={args.clips}",
                    *overrides]
            cmd = ["--stage", stage, "--teacher", args.teacher, *student, "--config", args.config,
                   *[a for s in sets for a in ("--set", s)]]
            train = _ledger.train_row(name, cmd, exports[key], run_location(cfg), endpoint)
        elif same_as not in ledger.data["rows"]:
            continue  # evaluated once the row it shares a run with has trained
        ledger.record("rows", key, {"name": name, "train": train,
                                    **evaluate(key, name, exports[key], extra=extra)})
        print(f"# recorded {name!r} in {ledger.path}", flush=True)

    if not args.no_curves:
        ledger.data.setdefault("curves", {})
        sources = {"teacher": teacher, **{k: exports[k] for k in CURVE_MODELS if k in exports}}
        for model in CURVE_MODELS:
            if model != "teacher" and model not in ledger.data["rows"]:
                continue
            for varied, audio, ref in curve_points():
                key = curve_key(model, audio, ref, varied)
                if ledger.has("curves", key):
                    continue
                name = f"{CURVE_MODELS[model]} at audio {audio:g}, reference {ref:g}"
                result = evaluate(key, name, sources[model], extra=[
                    "--audio-scale", str(audio), "--ref-scale", str(ref)])
                ledger.record("curves", key, {"model": model, "varied": varied, "audio": audio,
                                              "ref": ref, **result})
    print(ledger.path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
