"""The generator's autoscaling policy: replicas follow live sessions and queued work, and a
replica is let go only when it holds no session.

Serve's default policy counts ongoing requests. A live session is mostly idle between its audio
messages, so it barely shows there, yet it needs its replica for as long as it lasts: the
replicas needed are ceil(sessions / target_sessions), or what the queue needs, whichever is more.

Serve decides which replica a downscale stops (the newest first, on a node with the fewest
replicas; see its deployment scheduler), not the policy. So the policy scales down only as far as
the replicas Serve would stop, the newest ones, hold no session, and have held none over the
look-back window. SessionRouter makes that the usual case: it packs new sessions onto the oldest
replicas, so the newest ones empty first. What remains is a race: a session opened on the newest
replica less than one metrics push before a downscale. The router sends one there only when every
older replica is at target_sessions, when no downscale is wanted.

Every replica reports `sessions`, `target_sessions` and `started_at` (Generator's
record_autoscaling_stats); Serve's wrapper applies min/max_replicas and the up/downscale delays.
"""

from __future__ import annotations

import math

SESSIONS, TARGET, STARTED = "sessions", "target_sessions", "started_at"


def _latest(series) -> float:
    return max(series, key=lambda p: p.timestamp).value if series else 0.0


def sessions_and_queue(ctx) -> tuple[int, dict]:
    """The replicas wanted (Serve's AutoscalingContext → (count, policy state))."""
    current = ctx.current_num_replicas
    if current == 0:
        return ctx.target_num_replicas, {}
    raw = ctx.raw_metrics or {}
    sessions = {r: _latest(s) for r, s in raw.get(SESSIONS, {}).items()}
    ever = {r: max((p.value for p in s), default=0.0) for r, s in raw.get(SESSIONS, {}).items()}
    target = max((_latest(s) for s in raw.get(TARGET, {}).values()), default=1.0) or 1.0
    started = {r: _latest(s) for r, s in raw.get(STARTED, {}).items()}

    by_sessions = math.ceil(sum(sessions.values()) / target)
    by_queue = math.ceil(ctx.total_num_requests / ctx.config.get_target_ongoing_requests())
    wanted = max(by_sessions, by_queue, 1)
    if wanted >= current:
        return wanted, {}
    # A replica that has not reported yet is the newest and counts as holding sessions
    # (unknown): nothing is stopped before every running replica has reported.
    newest_first = sorted(ctx.running_replicas, key=lambda r: -started.get(r, math.inf))
    free = 0
    for replica in newest_first[:current - wanted]:
        if replica not in started or ever.get(replica, 0.0) > 0:
            break
        free += 1
    return current - free, {}
