"""A Train worker killed mid-run is restarted (FailureConfig) and resumes from the checkpoint."""

import json
import os
import signal
import threading
import time

from onestep.checkpoint import latest_checkpoint
from onestep.prepare import prepare_synthtalk
from onestep.storage import resolve
from onestep.train.ray_job import launch, run_location


def _registered_checkpoints(run) -> int:
    """Checkpoints Ray Train's controller has registered (a folder alone may still be uploading)."""
    snapshot = run.join("checkpoint_manager_snapshot.json")
    if not snapshot.exists():
        return 0
    try:
        state, _ = json.JSONDecoder().raw_decode(snapshot.read_bytes().decode())
    except ValueError:  # being rewritten
        return 0
    return len(state.get("checkpoint_results", []))


def _train_worker_pids() -> list[int]:
    """PIDs of live Train workers of *this* Ray cluster (its actor table, not the process list,
    so nothing else running on the machine is touched)."""
    from ray._private.state import actors

    return [a["Pid"] for a in actors().values()
            if a.get("ActorClassName", "").endswith("RayTrainWorker") and a["State"] == "ALIVE"
            and a.get("Pid")]


def test_killed_worker_resumes_from_last_checkpoint(ray_cluster, tmp_path, tiny_config):
    cfg = tiny_config(**{"data.uri": str(tmp_path / "data"), "run.root": str(tmp_path / "runs"),
                         "train.total_clips": 48, "train.checkpoint_every_clips": 8,
                         "train.max_failures": 2})
    prepare_synthtalk(cfg.synth, resolve(cfg.data.uri))
    run = run_location(cfg)
    killed: list[int] = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if _registered_checkpoints(run) and (pids := _train_worker_pids()):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    result = launch(cfg)
    killer.join(timeout=5)
    assert killed, "no Train worker was found to kill"
    assert result.error is None and result.metrics["clips_seen"] == 48
    state = json.loads(resolve(latest_checkpoint(run.uri)).join("state.json").read_bytes())
    assert state["step"] == 12 and len(state["resumed_at_steps"]) == 1
    assert 0 < state["resumed_at_steps"][0] < 12  # continued, not restarted from scratch
