"""TurboTalk's ablations (its Tables 2 and 3) on SynthTalk, and onestep's own additions:
adversarial-stage variants of one DMD student at an equal budget, each a 1-step generator.

    python benchmarks/ablations.py --student reports/pretrained/student \\
        --set adversarial.teacher=$PWD/reports/pretrained/teacher \\
        --reader reports/pretrained/mouth_reader.safetensors --data data/synthtalk \\
        --clips-per-phase 640 --set adversarial.last_phase_clips=1280 --set run.root=runs \\
        --out reports/ablations

Every row is one `jobs/distill.py --stage adversarial` run from the same student, differing from
its section's base recipe only in the switches named in its row. Direct 4→1 rows train all the
progressive phases' clips in their one phase, so every row sees the same clips. Tables 2 and 3
ablate TurboTalk's own recipe (`adversarial.regression_weight=0`); the last section ablates
onestep's defaults, which add the regression anchor.

A row is trained, then evaluated alone, then recorded in <out>.json (with the command of each)
before the next one starts, so the table fills up across interruptions, sessions and machines:
a later call runs only the rows still missing. Rows are comparable only if they share the
student, the discriminator's trunk, the mouth reader (whose features the Fréchet distance is
computed in), the data and the budget; <out>.json records all of these (weights by SHA-256)
and a call with different ones is refused rather than mixed in. The reference rows (the
teacher, the student at 4 and at 1 step) are evaluated first, on the same clips.

`--seed N` trains rows again with another training seed (`data.seed`: the discriminator head's
initialisation, the noise, the order of the data), recorded beside the seed-0 rows as
<row>@seedN. A difference between two rows is a finding only if it outlasts reseeding, so the
markdown lists each comparison's difference at every seed it was run at.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import _ledger
import numpy as np
from _ledger import sha256
from _report import eval_table, plot_sync_frechet

from onestep import cli
from onestep.checkpoint import WEIGHTS, checkpoint_names, read_config, resolve_checkpoint
from onestep.evaluation.mouth_reader import load_or_train
from onestep.shards import read_manifest
from onestep.storage import resolve
from onestep.train.ray_job import export_location, run_location

DIRECT = "adversarial.phases=[1]"
TURBOTALK = "adversarial.regression_weight=0"  # TurboTalk's recipe has no regression anchor
PLAIN = ["adversarial.dynamic_timesteps=false", "adversarial.self_compare_weight=0"]
TABLE2 = "TurboTalk Table 2: the components, on TurboTalk's recipe (R3GAN, R1/R2)"
TABLE3 = "TurboTalk Table 3: the adversarial loss (full TurboTalk recipe otherwise)"
ONESTEP = "onestep's defaults: TurboTalk's recipe + the regression anchor"
# (key, section, row name, overrides of the stage's defaults)
ROWS = [
    ("tt-direct", TABLE2, "base: direct 4→1", [TURBOTALK, DIRECT, *PLAIN]),
    ("tt-prog", TABLE2, "+ step reduction (4→3→2→1)", [TURBOTALK, *PLAIN]),
    ("tt-prog-dyn", TABLE2, "+ dynamic timesteps", [TURBOTALK, PLAIN[1]]),
    ("tt-full", TABLE2, "+ self-compare (TurboTalk's full recipe)", [TURBOTALK]),
    ("tt-full-direct", TABLE2, "full recipe, direct 4→1", [TURBOTALK, DIRECT]),
    ("tt-gan", TABLE3, "non-saturating GAN loss", [TURBOTALK, "adversarial.loss=gan"]),
    ("tt-hinge", TABLE3, "hinge loss", [TURBOTALK, "adversarial.loss=hinge"]),
    ("tt-noreg", TABLE3, "R3GAN without R1/R2", [TURBOTALK, "adversarial.reg_weight=0"]),
    ("onestep", ONESTEP, "progressive 4→3→2→1 (the defaults)", []),
    ("onestep-direct", ONESTEP, "direct 4→1", [DIRECT]),
    ("onestep-nogan", ONESTEP, "regression only (no generator GAN loss)",
     ["adversarial.gan_weight=0"]),
]
# Differences a comparison can rest on: (what it shows, the better row, the row it beats).
COMPARISONS = [("progressive beats direct, TurboTalk's recipe without its extras",
                "tt-prog", "tt-direct"),
               ("progressive beats direct, TurboTalk's full recipe", "tt-full", "tt-full-direct"),
               ("progressive beats direct, onestep's defaults", "onestep", "onestep-direct")]
# Overrides that name places on this machine, not the experiment: rows may differ in them.
LOCAL_KEYS = ("run.root", "run.s3_endpoint_url", "adversarial.teacher", "data.uri")


def row_key(key: str, seed: int) -> str:
    """A row's key in <out>.json: seed 0 is the table's row, other seeds repeat it."""
    return key if seed == 0 else f"{key}@seed{seed}"


def split_key(stored: str) -> tuple[str, int]:
    """row_key's inverse: (row, seed)."""
    key, _, seed = stored.partition("@seed")
    return key, int(seed or 0)


def variant_sets(overrides: list[str], phase_clips: list[int]) -> list[str]:
    """A row's --set list: direct rows get all phases' clips in their one phase (equal budget)."""
    if DIRECT in overrides:
        return [f"adversarial.clips_per_phase={sum(phase_clips)}",
                "adversarial.last_phase_clips=0", *overrides]
    return [f"adversarial.clips_per_phase={phase_clips[0]}",
            f"adversarial.last_phase_clips={phase_clips[-1]}", *overrides]


def setup_of(args: argparse.Namespace, cfg, endpoint: str) -> dict:
    """What makes two rows comparable. Weights by content, so a copy elsewhere still matches."""
    student = resolve_checkpoint(args.student, endpoint)
    teacher = resolve_checkpoint(cfg.adversarial.teacher or read_config(student, endpoint)
                                 .dmd.teacher, endpoint)
    manifest = read_manifest(resolve(args.data, endpoint))
    return {"student_sha256": sha256(resolve(student, endpoint).join(WEIGHTS).uri, endpoint),
            "teacher_sha256": sha256(resolve(teacher, endpoint).join(WEIGHTS).uri, endpoint),
            "reader_sha256": sha256(args.reader, endpoint),
            "data": {k: manifest.get(k) for k in ("num_clips", "shards", "source")},
            "eval_clips": args.eval_clips, "phase_clips": cfg.adversarial.phase_clips(),
            "settings": sorted(o for o in args.overrides if o.split("=")[0] not in LOCAL_KEYS)}


class Ledger(_ledger.Ledger):
    """<out>.json with, after every row, the plot and the markdown of the tables so far."""

    def written(self) -> None:
        plot_sync_frechet(models(self.data), self.path.with_suffix(".png"))
        write_markdown(self.data, self.path.with_suffix(".md"))


def models(data: dict) -> dict[str, dict]:
    """Every evaluated model's metrics by name: the references, then the rows in table order."""
    rows = [data["rows"][key] for key, *_ in ROWS if key in data["rows"]]
    return {e["name"]: e["metrics"] for e in [*data["references"].values(), *rows]}


def markdown(data: dict, heading: str = "#", plot: str | None = None) -> list[str]:
    """The ablation tables (missing rows listed as such), comparisons, the plot (a path relative
    to the markdown, if given) and every command."""
    setup, rows, refs = data["setup"], data["rows"], data["references"]
    lines = [f"{heading} Ablations (TurboTalk Tables 2 and 3 on SynthTalk)", "",
             (f"1-step generators from one DMD 4-step student, every row at the same "
              f"{sum(setup['phase_clips'])} clips (progressive phases "
              f"{' / '.join(map(str, setup['phase_clips']))}; direct rows all in one phase), "
              f"evaluated on {setup['eval_clips']} held-out clips. Made by `{data['command']}`; "
              f"shared settings: {', '.join(setup['settings']) or 'none'}."), ""]
    if refs:
        lines += [f"{heading}# References (no adversarial stage)", "",
                  *eval_table({r["name"]: r["metrics"] for r in refs.values()}), ""]
    for section in dict.fromkeys(s for _, s, _, _ in ROWS):
        done = {name: rows[key]["metrics"] for key, s, name, _ in ROWS
                if s == section and key in rows}
        missing = [name for key, s, name, _ in ROWS if s == section and key not in rows]
        lines += [f"{heading}# {section}", ""]
        lines += [*eval_table(done), ""] if done else []
        lines += [f"Not run yet: {'; '.join(missing)}.", ""] if missing else []
    compared = [(what, rows[a]["metrics"], rows[b]["metrics"]) for what, a, b in COMPARISONS
                if a in rows and b in rows]
    if compared:
        lines += ["| comparison | lip-sync difference ↑ | Fréchet difference ↓ | holds |",
                  "|---|---|---|---|"]
        lines += [_difference(what, a, b) for what, a, b in compared]
        lines.append("")
    lines += _across_seeds(rows, heading)
    if plot:
        lines += [f"![lip-sync and Fréchet distance of every ablation row]({plot})", ""]
    lines += ["Commands of every row (training, then evaluation):", ""]
    for group in ("references", "rows"):
        for entry in data[group].values():
            lines += [f"    {c}" for c in (entry.get("train"), entry["evaluate"]) if c]
    return lines + [""]


def _holds(a: dict, b: dict) -> bool:
    """Row `a` beats row `b` on both targets."""
    return a["sync"] > b["sync"] and a["frechet"] < b["frechet"]


def _difference(label: str, a: dict, b: dict) -> str:
    """A table line: how far row `a` is ahead of row `b`, and whether on both targets."""
    return (f"| {label} | {a['sync'] - b['sync']:+.3f} | {a['frechet'] - b['frechet']:+.3f} | "
            f"{'yes' if _holds(a, b) else 'no'} |")


def _across_seeds(rows: dict, heading: str) -> list[str]:
    """Every comparison trained at more than one seed: its difference at each, and their mean
    and spread, which say whether the seed-0 difference is larger than a reseeding moves it."""
    lines = []
    for what, a, b in COMPARISONS:
        seeds = sorted(seed for key, seed in map(split_key, rows) if key == a)
        pairs = [(s, rows[row_key(a, s)]["metrics"], rows[row_key(b, s)]["metrics"])
                 for s in seeds if row_key(b, s) in rows]
        if len(pairs) < 2:
            continue
        if not lines:
            lines += [f"{heading}# Across training seeds", "",
                      "| comparison | seed | lip-sync difference ↑ | Fréchet difference ↓ "
                      "| holds |", "|---|---|---|---|---|"]
        lines += [_difference(f"{what} | {s}", x, y) for s, x, y in pairs]
        d_sync = np.array([x["sync"] - y["sync"] for _, x, y in pairs])
        d_fd = np.array([x["frechet"] - y["frechet"] for _, x, y in pairs])
        held = sum(_holds(x, y) for _, x, y in pairs)
        lines.append(f"| {what} | mean ± std of {len(pairs)} | {d_sync.mean():+.3f} ± "
                     f"{d_sync.std(ddof=1):.3f} | {d_fd.mean():+.3f} ± {d_fd.std(ddof=1):.3f} | "
                     f"{held} of {len(pairs)} |")
    return [*lines, ""] if lines else []


def write_markdown(data: dict, path: Path) -> None:
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(markdown(data, plot=path.with_suffix(".png").name)))
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="DMD student checkpoint or run")
    p.add_argument("--data", required=True, help="SynthTalk shards (training and held-out test)")
    p.add_argument("--clips-per-phase", type=int, required=True,
                   help="clips per progressive phase (the last: adversarial.last_phase_clips, "
                        "if set); a direct run trains all phases' clips in its one phase")
    p.add_argument("--prefix", default="ablation", help="run names: <prefix>-<row key>")
    p.add_argument("--only", action="append", default=[], choices=[r[0] for r in ROWS],
                   help="run only these rows (repeatable; default: every missing row)")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed (data.seed) of the rows this call runs; rows of seed N "
                        "are recorded as <row>@seedN beside the table's seed-0 rows")
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--reader", default="runs/mouth_reader.safetensors",
                   help="mouth reader weights (trained and saved here if missing)")
    p.add_argument("--out", default="reports/ablations")
    cli.add_config_args(p)
    args = p.parse_args()
    cli.setup_logging()
    cfg = cli.config_from_args(args, [f"data.uri={args.data}",
                                      f"adversarial.clips_per_phase={args.clips_per_phase}"])
    endpoint = cfg.run.s3_endpoint_url
    load_or_train(args.reader, cfg.synth, endpoint_url=endpoint)  # the rows' one feature space
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out.with_suffix(".json"), setup_of(args, cfg, endpoint),
                    "python benchmarks/ablations.py " + shlex.join(_ledger.without_choices(
                        sys.argv[1:], ("--only", "--seed"))))
    evaluate = _ledger.Evaluator(out, args.data, args.eval_clips, args.reader, endpoint)

    teacher = cfg.adversarial.teacher or read_config(
        resolve_checkpoint(args.student, endpoint), endpoint).dmd.teacher
    for key, name, uri, steps in (("teacher", "teacher", teacher, None),
                                  ("student", "DMD 4-step student", args.student, None),
                                  ("student-1", "DMD student sampled with 1 step", args.student, 1)):
        if not ledger.has("references", key):
            ledger.record("references", key, {"name": name, **evaluate(key, name, uri, steps)})

    phase_clips = cfg.adversarial.phase_clips()
    for row, _, name, overrides in ROWS:
        key = row_key(row, args.seed)
        if (args.only and row not in args.only) or ledger.has("rows", key):
            continue
        cfg.run.name = f"{args.prefix}-{key.replace('@', '-')}"
        seed = [f"data.seed={args.seed}"] if args.seed else []
        sets = [f"data.uri={args.data}", *args.overrides, f"run.name={cfg.run.name}", *seed,
                *variant_sets(overrides, phase_clips)]
        cmd = ["--stage", "adversarial", "--student", args.student, "--config", args.config,
               *[a for s in sets for a in ("--set", s)]]
        train = shlex.join(["python", "jobs/distill.py", *cmd])
        if not export_location(cfg, "1step").join("config.yaml").exists():
            resume = bool(checkpoint_names(run_location(cfg)))
            print(f"# {name}{' (resumed)' if resume else ''}\n{train}", flush=True)
            _ledger.run_job("distill.py", [*cmd, *(["--resume"] if resume else [])],
                            f"the run for {name!r}")
        ledger.record("rows", key, {"name": name, "train": train,
                                    **evaluate(key, name, export_location(cfg, "1step").uri)})
        print(f"# recorded {name!r} in {ledger.path}", flush=True)
    print("\n".join(markdown(ledger.data)))


if __name__ == "__main__":
    main()
