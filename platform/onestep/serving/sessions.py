"""Live sessions on Ray Serve: a session's state lives on one generator replica, and every call of
the session is routed to that replica.

Why a request router rather than an actor per session: a replica loads the model once and
denoises the chunks of all its sessions and requests in one batch; an actor per session would
hold a model per session. The session id names its replica (`<replica id>.<secret>`), so the
router (`SessionRouter`, Serve's `RequestRouterConfig`) needs no shared table: every ingress
replica routes every session right, and a session whose replica is gone is sent to any replica,
which answers that it does not hold it (`SessionGone`), so that the client is told at once.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

SESSION_KEY = "session_id"  # the keyword every session call passes its id in
OPEN_METHOD = "open_session"  # the generator's method that opens one


class SessionGone(LookupError):
    """No session by that id here: closed, timed out, or its replica was lost."""


class SessionsFull(RuntimeError):
    """The replica holds `max_sessions` sessions already."""


def owner_of(session_id: str) -> str:
    return session_id.split(".", 1)[0]


class SessionRouter(FIFOMixin, RequestRouter):
    """A session's calls go to the replica named in its id. A new session goes to the oldest
    replica below its `target_sessions` (packing, so that the newest replicas empty first and
    can be scaled down: onestep.serving.autoscaling), else to the one holding the fewest; any
    other request to the replicas holding the fewest sessions first.

    Replicas report their sessions every few seconds (`record_routing_stats`); the sessions this
    router has opened since a replica's report are added to it, so a burst of new sessions does
    not all land on one replica."""

    def initialize_state(self, **kwargs) -> None:
        self._opened: dict[str, list[float]] = {}  # replica → when this router opened sessions

    def on_request_routed(self, pending_request: PendingRequest, replica_id, result) -> None:
        if pending_request.metadata.call_method == OPEN_METHOD:
            self._opened.setdefault(replica_id.unique_id, []).append(time.time())

    def _sessions(self, replica: RunningReplica) -> float:
        stats = replica.routing_stats or {}
        since = stats.get("at", 0.0)
        opened = [t for t in self._opened.get(replica.replica_id.unique_id, []) if t > since]
        self._opened[replica.replica_id.unique_id] = opened
        return stats.get("sessions", 0) + len(opened)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        session = pending_request.kwargs.get(SESSION_KEY) if pending_request else None
        if session:
            owner = owner_of(session)
            if any(r.replica_id.unique_id == owner for r in self._replicas.values()):
                # Alive: to it, or wait while its queue is full (never to another replica).
                return [[r] for r in candidate_replicas if r.replica_id.unique_id == owner]
            return [candidate_replicas[:1]] if candidate_replicas else []
        held = {r.replica_id.unique_id: self._sessions(r) for r in candidate_replicas}
        if pending_request is not None and pending_request.metadata.call_method == OPEN_METHOD:
            def rank(r: RunningReplica):
                stats = r.routing_stats or {}
                if held[r.replica_id.unique_id] < stats.get("target_sessions", 1):
                    return (0, stats.get("started_at", time.time()), random.random())
                return (1, held[r.replica_id.unique_id], random.random())
        else:
            def rank(r: RunningReplica):
                return (held[r.replica_id.unique_id], random.random())
        return [[r] for r in sorted(candidate_replicas, key=rank)]


@dataclass
class Entry:
    session: object  # onestep.live.session.LiveSession
    used: float = field(default_factory=time.monotonic)
    busy: bool = False  # a call of the session is running (calls of one session never overlap)


class SessionTable:
    """The sessions one replica holds, their capacity and their idle timeout."""

    def __init__(self, replica: str, max_sessions: int = 4, target_sessions: int = 2,
                 idle_timeout_s: float = 30.0, idle_video_after_s: float = 1.0):
        if not 1 <= target_sessions <= max_sessions:
            raise ValueError(f"sessions: target_sessions={target_sessions} must be between 1 "
                             f"and max_sessions={max_sessions}")
        self.replica, self.max_sessions, self.idle_timeout_s = replica, max_sessions, idle_timeout_s
        self.target_sessions = target_sessions
        # A socket whose sound falls this far behind the clock gets silence (0: never), so the
        # avatar goes on while nobody speaks (onestep.live.session.IdleClock).
        self.idle_video_after_s = idle_video_after_s
        self.started_at = time.time()
        self.entries: dict[str, Entry] = {}

    def stats(self) -> dict:
        """What the router and the autoscaling policy read of this replica."""
        return {"sessions": len(self.entries), "target_sessions": self.target_sessions,
                "started_at": self.started_at, "at": time.time()}

    def check_room(self) -> None:
        """SessionsFull if this replica holds `max_sessions` already."""
        if len(self.entries) >= self.max_sessions:
            raise SessionsFull(f"{len(self.entries)} sessions are running on this replica, the "
                               f"most it holds (max_sessions={self.max_sessions})")

    def reserve(self) -> str:
        """A new session's id, or SessionsFull."""
        self.check_room()
        session_id = f"{self.replica}.{secrets.token_urlsafe(12)}"
        self.entries[session_id] = Entry(None)
        return session_id

    def get(self, session_id: str) -> Entry:
        entry = self.entries.get(session_id)
        if entry is None or entry.session is None:
            raise SessionGone(f"session {session_id} is not running (closed, idle for over "
                              f"{self.idle_timeout_s:g} s, or its replica was lost): create "
                              "another")
        entry.used = time.monotonic()
        return entry

    def pop(self, session_id: str):
        """The session's state, removed (None if there was none)."""
        entry = self.entries.pop(session_id, None)
        return entry.session if entry else None

    def idle(self) -> list[str]:
        """Sessions unused for longer than the timeout and not in a call."""
        now = time.monotonic()
        return [k for k, e in self.entries.items()
                if not e.busy and e.session is not None and now - e.used > self.idle_timeout_s]
