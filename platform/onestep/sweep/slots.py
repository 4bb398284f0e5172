"""At most N trials train at once, also in a resumed sweep.

Tune limits concurrency through its searcher, whose saved state can be older than the trials it
restores: a resumed sweep may restart the interrupted trial *and* start a new one. Two Train runs
on a cluster sized for one starve each other's Ray Data pipelines and both hang. So a trial
takes a slot here before it starts its Train run, and trial drivers hold no CPU while they wait.
A slot whose holder died (a trial killed by ASHA or by a crash) is taken back.
"""

from __future__ import annotations

import asyncio
import contextlib

import ray

POLL_S = 1.0


@ray.remote(num_cpus=0)
class TrialSlots:
    def __init__(self, slots: int):
        self.slots = slots
        self.holders: dict[str, ray.actor.ActorHandle] = {}

    async def acquire(self, trial_id: str, holder) -> None:
        while trial_id not in self.holders:
            await self._drop_dead()
            if len(self.holders) < self.slots:
                self.holders[trial_id] = holder
            else:
                await asyncio.sleep(POLL_S)

    def release(self, trial_id: str) -> None:
        self.holders.pop(trial_id, None)

    async def _drop_dead(self) -> None:
        for trial_id, holder in list(self.holders.items()):
            try:  # a busy holder answers late, and counts as alive meanwhile
                await asyncio.wait_for(holder.__ray_ready__.remote(), timeout=5)
            except ray.exceptions.RayActorError:
                self.holders.pop(trial_id, None)
            except asyncio.TimeoutError:
                pass


def slots_name(sweep: str) -> str:
    return f"onestep-sweep-slots:{sweep}"


def open_slots(sweep: str, slots: int):
    """Created by the sweep's driver (and gone with it), found by its trials by name."""
    return TrialSlots.options(name=slots_name(sweep), get_if_exists=True).remote(slots)


@contextlib.contextmanager
def trial_slot(sweep: str, trial_id: str):
    """Hold one slot for the duration of the block (called inside a Tune trial)."""
    slots = ray.get_actor(slots_name(sweep))
    ray.get(slots.acquire.remote(trial_id, ray.get_runtime_context().current_actor))
    try:
        yield
    finally:
        ray.get(slots.release.remote(trial_id))
