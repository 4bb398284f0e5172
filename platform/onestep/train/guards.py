"""Collapse guards in the training loop: what happens when a validation shows a collapse.

The checks themselves (onestep.evaluation.collapse) are pure; this applies them to a running
stage. Rank 0 alone validates, so its verdict is sent to every rank before anyone acts: a
rollback restores sharded states collectively and must happen on all ranks or none. The guard
state (checks armed, the last step that passed, rollbacks so far, the learning-rate scale they
left) lives in the training state, so it is checkpointed and survives a resume. README:
Collapse guards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from onestep.config import Config
from onestep.evaluation import collapse
from onestep.train.engine import from_rank0, world

log = logging.getLogger("onestep.train")


def initial_state() -> dict:
    return {"armed": [], "passed_step": None, "rollbacks": [], "lr_scale": 1.0}


def _verdict(val: dict, state: dict, cfg: Config) -> list[collapse.Check]:
    """Collective: the armed checks rank 0's validation `val` fails (the same on every rank).
    Checks it passes are armed; a validation failing none is the new rollback target."""
    guards = state["guards"]
    verdict = None
    if val:  # rank 0: the one that validates
        armed = set(guards["armed"])
        failed = collapse.failing(val, cfg.validation, armed)
        newly = collapse.passing(val, cfg.validation) - armed
        if newly:
            log.info("collapse guards armed at step %d: %s", state["step"],
                     ", ".join(sorted(newly)))
        if failed:
            log.warning("collapse at step %d: %s", state["step"],
                        collapse.describe(failed, val, cfg.validation))
        verdict = ([c.key for c in failed], sorted(armed | newly))
    failed, guards["armed"] = from_rank0(verdict)
    if not failed:
        guards["passed_step"] = state["step"]
    return [c for c in collapse.CHECKS if c.key in failed]


def metrics(state: dict, failed: list[collapse.Check]) -> dict:
    """What the guards report with every result: `guards_passed` marks a checkpoint whose
    validation passed (Ray keeps those first: onestep.train.ray_job), `collapse_<check>` a
    failing check."""
    guards = state["guards"]
    return {"guards_passed": float(guards["passed_step"] == state["step"]),
            "rollbacks": float(len(guards["rollbacks"])),
            **{f"collapse_{c.key}": 1.0 for c in failed}}


def _roll_back(cfg: Config, stage, state: dict, rollback_dir,
               restore: Callable[[Path, dict], dict]) -> tuple[dict | None, str]:
    """Collective: the state restored from the last checkpoint that passed validation, under
    guards with one more rollback and lower rates; or None and why there is nothing to go back
    to."""
    guards, v = state["guards"], cfg.validation
    target = guards["passed_step"]
    if len(guards["rollbacks"]) >= v.max_rollbacks:
        return None, f"validation.max_rollbacks={v.max_rollbacks} rollbacks done"
    if target is None:
        return None, "no validation has passed yet"
    after = {**guards, "rollbacks": guards["rollbacks"] + [[state["step"], target]],
             "lr_scale": guards["lr_scale"] * v.rollback_lr_scale}
    with rollback_dir(target) as directory:
        if directory is None:
            return None, f"the checkpoint of step {target}, the last that passed, is gone"
        restored = restore(Path(directory), after)
    if world()[0] == 0:
        rates = ", ".join(f"{n} {stage.optimizer(n)[0] * after['lr_scale']:.3g}"
                          for n in stage.trained)
        log.warning("rolled back from step %d to step %d (its validation passed); learning rates "
                    "× %g → peak %s (rollback %d of at most %d)", state["step"], target,
                    after["lr_scale"], rates, len(after["rollbacks"]), v.max_rollbacks)
    return restored, ""


def apply(cfg: Config, stage, state: dict, val: dict, hooks, report: Callable[[dict], None],
          restore: Callable[[Path, dict], dict]) -> tuple[str, dict, list[collapse.Check]]:
    """Collective: the guards' verdict on validation `val` of `state`, acted on. Returns
    ("go", state, failed: non-empty only under warn), ("rolled back", the restored state,
    failed) or ("stopped", the final metrics, failed). `report` sends metrics without a
    checkpoint; `restore(directory, guards)` restores a checkpoint under new guards."""
    failed = _verdict(val, state, cfg)
    if not failed or cfg.validation.on_collapse == "warn":
        return "go", state, failed
    head = {"step": state["step"], "clips_seen": state["clips_seen"], **val,
            **metrics(state, failed)}
    back, why = (_roll_back(cfg, stage, state, hooks.rollback_dir, restore)
                 if cfg.validation.on_collapse == "rollback" else (None, ""))
    if back is not None:
        report(head)
        return "rolled back", back, failed
    # Stopped: reported without a checkpoint (the collapsed weights are no state to resume from).
    head["collapsed"] = 1.0
    if world()[0] == 0:
        reason = (f"collapse — {collapse.describe(failed, head, cfg.validation)} "
                  f"(validation.on_collapse={cfg.validation.on_collapse}"
                  f"{f'; no rollback: {why}' if why else ''})")
        log.error("stage %s stopped at step %d: %s", cfg.train.stage, head["step"], reason)
        hooks.stopped({"step": int(head["step"]), "reason": reason,
                       "checks": [c.key for c in failed]})
    report(head)
    return "stopped", head, failed
