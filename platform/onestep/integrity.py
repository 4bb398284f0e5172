"""Checksums of checkpoint files: recorded when they are written, verified before they are used.

A checkpoint is written by every rank into its own folder and merged in the run's storage by
Ray Train, so each writer records what it wrote: rank 0 the inference export (`checksums.json`:
config, state, weights), every rank its resume files (`checksums-rank<r>.json`: ZeRO shards, EMA
partition). A folder is complete when the export's and all ranks' lists are present and every
file they name has its recorded size and SHA-256, which tells a checkpoint cut short by a
crash, a truncated upload or flipped bytes from one that can be trusted. Lists are written after
the files they describe, so a list never names a file that was not written in full.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.fs as pafs

from onestep.storage import Location

EXPORT_SUMS = "checksums.json"
_CHUNK = 8 * 2 ** 20


def rank_sums(rank: int) -> str:
    return f"checksums-rank{rank}.json"


def _digest(stream) -> str:
    h = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def record(directory: Path, names: list[str], sums_name: str) -> None:
    """Write `sums_name` in `directory` listing `names` (paths relative to it) with size and
    SHA-256."""
    entries = {}
    for name in sorted(names):
        with open(directory / name, "rb") as f:
            entries[name] = {"bytes": (directory / name).stat().st_size, "sha256": _digest(f)}
    tmp = directory / f".{sums_name}.tmp"
    tmp.write_text(json.dumps({"files": entries}, indent=1))
    tmp.replace(directory / sums_name)


def files_under(directory: Path, exclude: set[str] = frozenset()) -> list[str]:
    return [p.relative_to(directory).as_posix() for p in directory.rglob("*")
            if p.is_file() and p.name not in exclude and not p.name.startswith("checksums")]


def problems(loc: Location, sums_name: str) -> list[str]:
    """What is wrong with the files `sums_name` lists in `loc` (empty: all there and intact);
    a missing or unreadable list is a problem too."""
    try:
        listing = json.loads(loc.join(sums_name).read_bytes())["files"]
    except Exception as e:  # absent, unreadable or not our JSON: the folder cannot be trusted
        return [f"{loc.join(sums_name).uri}: missing or unreadable ({type(e).__name__})"]
    found = []
    for name, expected in listing.items():
        item = loc.join(name)
        info = loc.fs.get_file_info(item.path)
        if info.type != pafs.FileType.File:
            found.append(f"{item.uri}: missing")
        elif info.size != expected["bytes"]:
            found.append(f"{item.uri}: {info.size} bytes, {expected['bytes']} when written "
                         "(truncated or replaced)")
        else:
            with loc.fs.open_input_stream(item.path) as f:
                if _digest(f) != expected["sha256"]:
                    found.append(f"{item.uri}: SHA-256 differs from {sums_name} (the file "
                                 "changed after it was written)")
    return found


def has_sums(loc: Location) -> bool:
    return loc.join(EXPORT_SUMS).exists()
