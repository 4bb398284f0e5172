"""Benchmarks whose rows are training runs (benchmarks/ablations.py, benchmarks/fada.py): a
ledger that records each evaluated row as soon as it exists, so a table fills up across
interruptions, sessions and machines, and refuses rows made from other inputs."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _report import EVAL_COLUMNS, eval_table

from onestep.checkpoint import checkpoint_names
from onestep.storage import Location, resolve

ROOT = Path(__file__).resolve().parent.parent


def sha256(uri: str, endpoint: str) -> str:
    return hashlib.sha256(resolve(uri, endpoint).read_bytes()).hexdigest()


class Ledger:
    """<out>.json: the setup, then every evaluated model by group ("references", "rows");
    rewritten atomically after each, then `written()` (a subclass writes its markdown)."""

    def __init__(self, path: Path, setup: dict, command: str):
        self.path = path
        if path.exists():
            self.data = json.loads(path.read_text())
            theirs = self.data["setup"]
            diff = [k for k in sorted(set(setup) | set(theirs)) if setup.get(k) != theirs.get(k)]
            if diff:
                raise SystemExit(
                    f"error: {path} holds rows made with another setup (differs in: "
                    f"{', '.join(diff)}); they could not be compared with this call's. Pass "
                    "another --out, or the inputs recorded there (see its 'setup').")
        else:
            self.data = {"setup": setup, "references": {}, "rows": {}}
        self.data["command"] = command

    def has(self, group: str, key: str) -> bool:
        return key in self.data[group]

    def record(self, group: str, key: str, entry: dict) -> None:
        """Add one evaluated model, with when and from which code (rows may come from several
        commits: the setup pins the inputs, not the code)."""
        self.data[group][key] = {**entry, "commit": commit(),
                                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)
        self.written()

    def written(self) -> None:
        """Called after every record."""


class Evaluator:
    """One `jobs/evaluate.py` call per model, written to <out>-rows/<key>.{json,md,png} (the
    contact sheet shows that model's first held-out clip)."""

    def __init__(self, out: Path, data: str, clips: int, reader: str, endpoint: str):
        self.folder = out.parent / f"{out.name}-rows"
        self.data, self.clips, self.reader, self.endpoint = data, clips, reader, endpoint

    def __call__(self, key: str, name: str, uri: str, steps: int | None = None,
                 extra: list[str] = ()) -> dict:
        cmd = ["--checkpoint", f"{name}={uri}", "--data", self.data, "--clips", str(self.clips),
               "--reader", self.reader, "--out", str(self.folder / key),
               *(["--steps", str(steps)] if steps else []), *extra,
               *(["--s3-endpoint-url", self.endpoint] if self.endpoint else [])]
        command = shlex.join(["python", "jobs/evaluate.py", *cmd])
        print(f"# evaluation of {name!r}\n{command}", flush=True)
        run_job("evaluate.py", cmd, f"the evaluation of {name!r}")
        results = json.loads((self.folder / f"{key}.json").read_text())["results"]
        return {"metrics": results[name], "evaluate": command}


def without_choices(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """The command line less these flags and their values: what fills in every missing row of
    the table (each row's own command records the rest)."""
    out, skip = [], False
    for a in argv:
        if not skip and a not in flags and not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
        skip = a in flags
    return out


def commit() -> str:
    """This checkout's commit, marked `+changes` if its code (not its reports) has uncommitted
    changes."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--",
                                           "platform", "jobs", "benchmarks") else "")


def run_job(job: str, args: list[str], what: str) -> None:
    """A job script of this checkout, in the caller's directory (relative paths stay theirs)."""
    code = subprocess.run([sys.executable, str(ROOT / "jobs" / job), *args], check=False).returncode
    if code:
        sys.exit(f"error: {what} exited with {code}; run this script again to continue")


def section_tables(spec: dict, rows: dict, columns: list[tuple] = EVAL_COLUMNS) -> list[str]:
    """A table per section of a benchmark's rows (`spec`: key → (section, name, ...)), in the
    spec's order, each followed by the rows it has not recorded yet."""
    lines = []
    for section in dict.fromkeys(v[0] for v in spec.values()):
        done = {v[1]: rows[k]["metrics"] for k, v in spec.items()
                if v[0] == section and k in rows}
        missing = [v[1] for k, v in spec.items() if v[0] == section and k not in rows]
        lines += [f"## {section}", ""]
        lines += [*eval_table(done, columns), ""] if done else []
        lines += [f"Not run yet: {'; '.join(missing)}.", ""] if missing else []
    return lines


def closing_lines(data: dict, path: Path, groups: tuple[str, ...]) -> list[str]:
    """A report's end: the reading a person wrote (<out>-reading.md, kept as it is), then the
    commands of every model of `groups`."""
    notes = path.with_name(f"{path.stem}-reading.md")
    lines = [notes.read_text(), ""] if notes.exists() else []
    lines += ["Commands of every model (training, then evaluation):", ""]
    for group in groups:
        for entry in data.get(group, {}).values():
            lines += [f"    {c}" for c in (entry.get("train"), entry["evaluate"]) if c]
    return lines + [""]


def export_exists(export: str, endpoint: str) -> bool:
    return resolve(export, endpoint).join("config.yaml").exists()


def train_row(name: str, cmd: list[str], export: str, run: Location, endpoint: str) -> str:
    """Train a row with `jobs/distill.py cmd` unless its `export` exists already (resuming its
    `run` where it has checkpoints, after an interruption) → the command, for the report."""
    train = shlex.join(["python", "jobs/distill.py", *cmd])
    if not export_exists(export, endpoint):
        resume = bool(checkpoint_names(run))
        print(f"# {name}{' (resumed)' if resume else ''}\n{train}", flush=True)
        run_job("distill.py", [*cmd, *(["--resume"] if resume else [])], f"the run for {name!r}")
    return train


def named_metrics(data: dict, spec: dict) -> dict[str, dict]:
    """Model name → metrics: the references, then the recorded rows in the spec's order."""
    rows = [data["rows"][k] for k in spec if k in data["rows"]]
    return {e["name"]: e["metrics"] for e in [*data["references"].values(), *rows]}


def write_markdown(path: Path, lines: list[str]) -> None:
    """<path>.md (path: the ledger's JSON), written atomically."""
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path.with_suffix(".md"))


LOCAL_KEYS = ("run.root", "run.s3_endpoint_url", "data.uri")  # where, not what: not in a setup


def distillation_setup(args, teacher: str, endpoint: str) -> dict:
    """What a row of a distillation benchmark (fada.py, osa_lcm.py) depends on besides its own
    switches: the teacher's and the reader's weights, the data, the budget, the evaluation and
    the shared --set overrides. A ledger refuses rows made with another."""
    from onestep.checkpoint import WEIGHTS
    from onestep.shards import read_manifest

    manifest = read_manifest(resolve(args.data, endpoint))
    return {"teacher_sha256": sha256(resolve(teacher, endpoint).join(WEIGHTS).uri, endpoint),
            "reader_sha256": sha256(args.reader, endpoint), "clips": args.clips,
            "data": {k: manifest.get(k) for k in ("num_clips", "shards", "source", "tiers")},
            "eval_clips": args.eval_clips,
            "settings": sorted(o for o in args.overrides if o.split("=")[0] not in LOCAL_KEYS)}
