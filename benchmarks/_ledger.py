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

from onestep.storage import resolve

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
