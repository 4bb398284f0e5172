"""A job started on a machine where another Ray instance already runs (here: the test session's
own) starts a local Ray of its own and keeps every Ray-internal actor on it."""

import subprocess
import sys

from conftest import ROOT, tiny_overrides
from onestep.config import load_config
from onestep.prepare import prepare_synthtalk
from onestep.storage import resolve


def test_a_job_beside_another_ray_stays_on_its_own_instance(ray_cluster, tmp_path):
    sets = tiny_overrides(**{"data.uri": str(tmp_path / "data"), "run.root": str(tmp_path / "runs"),
                             "run.name": "beside"})
    cfg = load_config("tiny", sets)
    prepare_synthtalk(cfg.synth, resolve(cfg.data.uri))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "distill.py"), "--stage", "teacher", "--config",
         "tiny", *(a for kv in sets for a in ("--set", kv))],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "done: 8 clips" in log
    # Without the job's own dashboard address, Train's placement-group cleaner found both
    # instances, connected to the other one and died.
    assert "Found multiple active Ray instances" not in log, log[-3000:]
    assert "died unexpectedly" not in log, log[-3000:]
