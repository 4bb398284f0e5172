"""Decoding in a limited child process: a crash, a memory or time overrun ends the child only."""

import os
import signal
import time

import numpy as np
import pytest

from conftest import png_bytes, wav_bytes
from onestep.serving.isolation import ChildLimits, IsolationError, run_isolated
from onestep.serving.validation import Limits, RequestError, validate, validate_isolated

# Functions the children run; module level, so the fork server can import them by name.


def crash_while_decoding_audio(stage) -> dict:
    stage("audio")
    os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder bug does
    return {}


def allocate_8_gb(stage) -> dict:
    stage("image")
    return {"big": np.ones(2 ** 30)}


def spin(stage) -> dict:
    stage("audio")
    while True:
        pass


def arrays(stage) -> dict:
    return {"image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "n": 3,
            "audio": np.linspace(0, 1, 5, dtype=np.float32)}


def test_arrays_and_values_come_back_exactly():
    out = run_isolated(arrays)
    assert out["n"] == 3 and out["image"].dtype == np.uint8 and out["image"].shape == (2, 2, 3)
    np.testing.assert_array_equal(out["audio"], np.linspace(0, 1, 5, dtype=np.float32))


def test_a_crash_is_reported_with_the_stage_and_the_caller_lives():
    with pytest.raises(IsolationError, match="crashed .SIGSEGV.") as e:
        run_isolated(crash_while_decoding_audio)
    assert e.value.crashed and e.value.stage == "audio"


def test_memory_beyond_the_limit_fails_the_child_only():
    with pytest.raises(IsolationError, match="memory") as e:
        run_isolated(allocate_8_gb, limits=ChildLimits(memory_mb=256))
    assert not e.value.crashed and e.value.stage == "image"


def test_a_child_that_runs_too_long_is_killed():
    t0 = time.perf_counter()
    with pytest.raises(IsolationError, match="longer than 1 s") as e:
        run_isolated(spin, limits=ChildLimits(cpu_s=30, wall_s=1.0))
    assert e.value.stage == "audio" and time.perf_counter() - t0 < 10


def test_isolated_validation_is_validation():
    args = (png_bytes((40, 30), mode="RGBA"), wav_bytes(0.5), {"steps": "2", "fps": "10"},
            Limits(), 32, 25, 16000)
    here, there = validate(*args), validate_isolated(*args)
    np.testing.assert_array_equal(here.image, there.image)
    np.testing.assert_array_equal(here.audio, there.audio)
    assert (here.steps, here.fps, here.resolution) == (there.steps, there.fps, there.resolution)
    with pytest.raises(RequestError, match="steps: must be in"):  # a RequestError crosses over
        validate_isolated(args[0], args[1], {"steps": "0"}, *args[3:])
