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


class SessionGone(LookupError):
    """No session by that id here: closed, timed out, or its replica was lost."""


class SessionsFull(RuntimeError):
    """The replica holds `max_sessions` sessions already."""


def owner_of(session_id: str) -> str:
    return session_id.split(".", 1)[0]


class SessionRouter(FIFOMixin, RequestRouter):
    """A session's calls go to the replica named in its id; anything else (a new session, a
    plain request) to the replicas holding the fewest sessions first."""

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
        ranked = sorted(candidate_replicas, key=lambda r: (
            (r.routing_stats or {}).get("sessions", 0), random.random()))
        return [[r] for r in ranked]


@dataclass
class Entry:
    session: object  # onestep.live.session.LiveSession
    used: float = field(default_factory=time.monotonic)
    busy: bool = False  # a call of the session is running (calls of one session never overlap)


class SessionTable:
    """The sessions one replica holds, their capacity and their idle timeout."""

    def __init__(self, replica: str, max_sessions: int = 4, idle_timeout_s: float = 30.0):
        self.replica, self.max_sessions, self.idle_timeout_s = replica, max_sessions, idle_timeout_s
        self.entries: dict[str, Entry] = {}

    def reserve(self) -> str:
        """A new session's id, or SessionsFull."""
        if len(self.entries) >= self.max_sessions:
            raise SessionsFull(f"{len(self.entries)} sessions are running on this replica, the "
                               f"most it holds (max_sessions={self.max_sessions})")
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
