"""Where sessions go and how many replicas they get, without a cluster: the autoscaling policy on
hand-made Serve contexts, the router on hand-made replicas (both as Serve calls them)."""

import asyncio
import math
from types import SimpleNamespace

import pytest

from onestep.serving.autoscaling import sessions_and_queue
from onestep.serving.sessions import SessionRouter, SessionTable


def _series(*values):
    return [SimpleNamespace(timestamp=t, value=v) for t, v in enumerate(values)]


def _ctx(replicas: dict, requests: float = 0.0, target: int = 2):
    """replicas: name → (started_at, sessions over the look-back window, oldest first)."""
    names = list(replicas)
    raw = {"sessions": {r: _series(*replicas[r][1]) for r in names if replicas[r][1]},
           "target_sessions": {r: _series(target) for r in names if replicas[r][1]},
           "started_at": {r: _series(replicas[r][0]) for r in names if replicas[r][1]}}
    return SimpleNamespace(current_num_replicas=len(names), target_num_replicas=len(names),
                           running_replicas=names, raw_metrics=raw, total_num_requests=requests,
                           config=SimpleNamespace(get_target_ongoing_requests=lambda: 2))


def test_replicas_follow_sessions_and_queued_requests_whichever_needs_more():
    two = {"a": (1.0, [2]), "b": (2.0, [3])}
    assert sessions_and_queue(_ctx(two))[0] == math.ceil(5 / 2)
    assert sessions_and_queue(_ctx(two, requests=9))[0] == math.ceil(9 / 2)
    assert sessions_and_queue(_ctx(two, target=4))[0] == 2  # 5 sessions, 4 a replica: stays


@pytest.mark.parametrize("newest, oldest, expected", [
    ([0], [1], 1),        # the two newest are empty: both go
    ([1], [0], 3),        # the newest holds one: none goes, though two replicas would do
    ([1, 0], [0], 3),     # the newest's session ended inside the look-back window: wait
])
def test_a_downscale_stops_only_replicas_without_sessions(newest, oldest, expected):
    ctx = _ctx({"old": (1.0, oldest), "mid": (2.0, [0]), "new": (3.0, newest)})
    assert sessions_and_queue(ctx)[0] == expected


def test_a_replica_that_has_not_reported_is_not_stopped():
    ctx = _ctx({"old": (1.0, [0]), "new": (3.0, [])})  # "new" started, no metrics yet
    assert sessions_and_queue(ctx)[0] == 2


def _replica(name: str, started: float, sessions: int, target: int = 2, at: float = 0.0):
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=name), routing_stats={
        "sessions": sessions, "target_sessions": target, "started_at": started, "at": at})


def _request(method: str, **kwargs):
    return SimpleNamespace(kwargs=kwargs, metadata=SimpleNamespace(call_method=method))


def _order(router, replicas, request) -> list[str]:
    ranked = asyncio.run(router.choose_replicas(replicas, request))
    return [group[0].replica_id.unique_id for group in ranked]


def _router():
    router = SessionRouter.__new__(SessionRouter)  # Serve builds it with a live controller
    router.initialize_state()
    return router


def test_new_sessions_pack_onto_the_oldest_replica_below_target():
    router = _router()
    replicas = [_replica("new", 3.0, 0), _replica("old", 1.0, 1), _replica("mid", 2.0, 0)]
    assert _order(router, replicas, _request("open_session"))[0] == "old"
    # The router counts what it opened since a replica's last report: "old" is now at target.
    router.on_request_routed(_request("open_session"), replicas[1].replica_id, None)
    assert _order(router, replicas, _request("open_session"))[0] == "mid"
    # All at target: the fewest first. Plain requests always go where sessions are fewest.
    full = [_replica("a", 1.0, 3), _replica("b", 2.0, 2)]
    assert _order(router, full, _request("open_session"))[0] == "b"
    assert _order(router, replicas, _request("render"))[-1] == "old"


def test_a_sessions_calls_go_to_the_replica_its_id_names():
    router = _router()
    replicas = [_replica("r1", 1.0, 0), _replica("r2", 2.0, 1)]
    router._replicas = {r.replica_id.unique_id: r for r in replicas}
    call = _request("feed_session", session_id="r2.secret")
    assert _order(router, replicas, call) == ["r2"]


def test_the_target_must_fit_in_the_capacity():
    with pytest.raises(ValueError, match="target_sessions=5 must be between 1 and max_sessions=4"):
        SessionTable("r", max_sessions=4, target_sessions=5)
