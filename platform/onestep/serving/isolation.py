"""Run a function on untrusted bytes in a child process with memory and CPU-time limits.

A crafted file can crash FFmpeg or PIL inside the process that decodes it (an 8-channel WAV
once segfaulted PyAV's resampler and took a Serve replica, and every request on it, down), or
make it allocate gigabytes. Here the decoding happens in a short-lived child forked from a
clean server process (multiprocessing's forkserver, with the decoders preloaded, so a child
costs milliseconds, not an interpreter start): a crash, a memory overrun or a timeout ends the
child, never the caller.

The child's answer is parsed, never unpickled: a JSON header plus raw array buffers whose dtype
and shape the header declares, checked against an allow-list. Pure Python + NumPy; no Ray.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

DTYPES = {"uint8", "float32"}  # what a child may send back
PRELOAD = ["onestep.serving.validation"]  # numpy, PIL and PyAV, imported once in the server


class IsolationError(RuntimeError):
    """The child crashed (`crashed`), or ran out of memory or time, or failed; `stage` is the
    last stage it announced."""

    def __init__(self, message: str, stage: str, crashed: bool = False):
        super().__init__(message)
        self.stage, self.crashed = stage, crashed


@dataclass(frozen=True)
class ChildLimits:
    memory_mb: int = 2048  # heap the child may add to what it was forked with (RLIMIT_DATA)
    cpu_s: int = 30  # CPU seconds (RLIMIT_CPU: SIGXCPU, then SIGKILL)
    wall_s: float = 60.0  # the caller stops waiting and kills the child


_CONTEXT = None
_CONTEXT_LOCK = threading.Lock()


def _context():
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(PRELOAD)
        return _CONTEXT


def _limit_self(limits: ChildLimits) -> None:
    with open("/proc/self/status") as f:  # VmData: the heap the child was forked with, in kB
        data_kb = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
    heap = (data_kb * 1024) + limits.memory_mb * 2 ** 20
    resource.setrlimit(resource.RLIMIT_DATA, (heap, heap))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind


def _child(conn, fn, args, kwargs, limits: ChildLimits) -> None:
    _limit_self(limits)

    def stage(name: str) -> None:
        conn.send_bytes(json.dumps({"stage": name}).encode())

    try:
        result = fn(*args, stage=stage, **kwargs)
        arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
        header = {"result": {k: v for k, v in result.items() if k not in arrays},
                  "arrays": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()}}
        conn.send_bytes(json.dumps(header).encode())
        for v in arrays.values():
            conn.send_bytes(np.ascontiguousarray(v).tobytes())
    except MemoryError:
        conn.send_bytes(json.dumps({"failure": "ran out of its memory limit"}).encode())
    except Exception as e:  # reported to the caller, who decides what it means
        conn.send_bytes(json.dumps({"failure": f"{type(e).__name__}: {e}"}).encode())
    finally:
        conn.close()


def run_isolated(fn: Callable[..., dict], *args, limits: ChildLimits = ChildLimits(),
                 max_result_bytes: int = 256 * 2 ** 20, **kwargs) -> dict:
    """`fn(*args, stage=..., **kwargs)` in a limited child; its dict of JSON values and NumPy
    arrays. `fn` calls `stage(name)` before each risky step, so that a crash can be attributed.
    Raises IsolationError if the child dies, fails, overruns or answers malformed data."""
    parent, child_end = _context().Pipe(duplex=False)
    proc = _context().Process(target=_child, args=(child_end, fn, args, kwargs, limits),
                              daemon=True)
    proc.start()
    child_end.close()
    stage = "start"
    try:
        while True:
            if not parent.poll(limits.wall_s):
                proc.kill()
                raise IsolationError(f"took longer than {limits.wall_s:g} s", stage)
            try:
                message = json.loads(parent.recv_bytes(64 * 1024))
            except EOFError:
                proc.join(5)
                crashed = proc.exitcode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT)
                raise IsolationError(_death(proc.exitcode), stage, crashed) from None
            if "stage" in message:
                stage = str(message["stage"])
                continue
            if "failure" in message:
                raise IsolationError(str(message["failure"]), stage)
            return _read_result(parent, message, max_result_bytes, stage)
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        proc.join(5)


def _read_result(conn, header: dict, max_bytes: int, stage: str) -> dict:
    result = dict(header["result"])
    for name, (dtype, shape) in header["arrays"].items():
        if dtype not in DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise IsolationError(f"answered an array {name} of {dtype} {shape}", stage)
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size > max_bytes:
            raise IsolationError(f"answered {size} bytes for {name}, over {max_bytes}", stage)
        data = conn.recv_bytes(max(size, 1))
        if len(data) != size:
            raise IsolationError(f"sent {len(data)} bytes for {name}, declared {size}", stage)
        result[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return result


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = {"SIGSEGV": "crashed", "SIGBUS": "crashed", "SIGABRT": "aborted",
               "SIGXCPU": "ran out of CPU time", "SIGKILL": "was killed (memory or CPU limit)"}
        return f"{why.get(name, 'died')} ({name})"
    return f"exited with status {exitcode} before answering"


def warm_up() -> None:
    """Start the fork server now (it imports the decoders once), not on the first request."""
    run_isolated(_noop)


def _noop(stage) -> dict:
    return {"pid": os.getpid()}
