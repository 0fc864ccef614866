"""lock-contention on constructed readings: a hot row whose holders take turns
(some polls land on a holder between two statements, some on a lock hand-over
with no lock graph) is raised on time and names its relation from the first
raise on."""

from __future__ import annotations

import pytest

from tests.detect_support import T0, Run, only, reading, tick

REL = "public.counters"
HOT = {"relation": REL, "waiters": 15, "query": "UPDATE counters SET n = n + 1 WHERE id = 0",
       "mode": "ExclusiveLock"}  # fmt: skip


def _root(state: str = "active", age: float = 0.01) -> dict:
    return {"pid": 100, "application_name": "pgbench", "state": state, "state_age_s": age,
            "query": "UPDATE counters SET n = n + 1 WHERE id = 0", "xact_age_s": 0.02}  # fmt: skip


def _waiter(pid: int, waits_for: dict | None) -> dict:
    b = {"pid": pid, "application_name": "pgbench", "state": "active", "state_age_s": 0.1,
         "query": "UPDATE counters SET n = n + 1 WHERE id = 0"}  # fmt: skip
    return {**b, "waits_for": waits_for} if waits_for else b


ROW = {"locktype": "tuple", "relation": REL, "mode": "ExclusiveLock", "object": "row (0,1)"}


def _poll(
    i: int, *, graph: str = "full", root: dict | None = None, waiting: int = 15,
    waits_for: dict | None = ROW,
) -> dict:  # fmt: skip
    """One poll of a hot row: 15 of 16 active backends wait. At a lock hand-over
    pg_stat_activity still shows the waiters while pg_blocking_pids finds them
    granted (graph="none": no tree), or pg_blocking_pids still saw them blocked
    and pg_locks, read a moment later, granted (graph="tree": no waits_for)."""
    data: dict = {"connections": 17, "max_connections": 100, "waiting": waiting,
                  "active": 16, "blocking_tree": []}  # fmt: skip
    if graph != "none":
        wf = waits_for if graph == "full" else None
        ws = [_waiter(200 + k, wf) for k in range(3)]
        data["blocking_tree"] = [
            {"root": root or _root(), "waiters": ws, "waiting_count": waiting, "depth": 2}
        ]
    if graph == "full" and waits_for and waits_for.get("relation"):
        data["lock_hot"] = HOT
    return {"postgres": reading("postgres", data, t=T0 + i + 0.5)}


def _run(polls: list[dict]) -> Run:
    r = Run(only(None, "lock-contention"))
    for i, p in enumerate(polls):
        r.feed(tick(i, readings=p))
    return r


@pytest.mark.parametrize("hand_over", ["none", "tree"])
def test_raised_at_a_hand_over_poll_names_the_relation_of_the_last_graph(hand_over) -> None:
    r = _run([_poll(0), _poll(1), _poll(2, graph=hand_over)])
    assert r.first_raised("lock-contention") == 2
    a = r.of("lock-contention")[0]
    assert a.evidence["hot_relation"] == REL and a.evidence["hot_seen_s"] == 1.0
    assert "most on public.counters" in a.summary and "UPDATE counters" in a.summary
    assert a.evidence["waiting"] == 15 and a.severity == "critical"


def test_a_graph_that_names_another_wait_is_not_a_hand_over() -> None:
    # the waiters now queue on an advisory key: no relation, and not the last one
    key = {"locktype": "advisory", "mode": "ExclusiveLock", "object": "advisory key 0/7"}
    r = _run([_poll(0), _poll(1), _poll(2, waits_for=key)])
    a = r.of("lock-contention")[0]
    assert a.evidence["hot_relation"] is None and a.evidence["hot_seen_s"] is None


def test_the_relation_is_not_lost_while_active_nor_kept_past_its_age() -> None:
    polls = [_poll(0), _poll(1), _poll(2)] + [_poll(i, graph="none") for i in range(3, 12)]
    r = _run(polls)
    seen = [
        (a.evidence["hot_relation"], a.evidence["hot_seen_s"]) for act in r.active[2:] for a in act
    ]
    # read at tick 2; named for 5 s after, then not any more (still raised)
    assert seen[:6] == [(REL, 0.0)] + [(REL, float(s)) for s in range(1, 6)], seen
    assert all(rel is None for rel, _ in seen[6:]) and len(seen) == 10, seen


def test_a_new_contention_does_not_inherit_the_last_relation() -> None:
    # the first ended (3 quiet polls: cleared); the next shows no graph at all
    quiet = [_poll(i, graph="none", waiting=0) for i in range(3, 6)]
    polls = [_poll(0), _poll(1), _poll(2), *quiet, *(_poll(i, graph="none") for i in range(6, 9))]
    r = _run(polls)
    assert r.raise_count("lock-contention") == 2
    a = r.of("lock-contention")[0]
    assert a.evidence["hot_relation"] is None and a.evidence["hot_seen_s"] is None
    assert "a hot row or table" in a.summary


def test_a_one_poll_dip_keeps_the_relation() -> None:
    dip = _poll(3, graph="none", waiting=1)  # the waiters all granted at once
    r = _run([_poll(0), _poll(1), _poll(2), dip, _poll(4, graph="none")])
    a = r.of("lock-contention")[0]
    assert (a.evidence["hot_relation"], a.evidence["hot_seen_s"]) == (REL, 2.0)


def test_a_holder_between_two_statements_does_not_break_the_streak() -> None:
    # the holder is idle in its transaction for 3 ms between UPDATE and COMMIT:
    # its turn at the hot row, not an idle-in-transaction blocker
    between = _root("idle in transaction", age=0.003)
    r = _run([_poll(0), _poll(1, root=between), _poll(2)])
    assert r.first_raised("lock-contention") == 2


def test_waiters_behind_a_long_idle_holder_are_that_blockers() -> None:
    idle = _root("idle in transaction", age=4.0)
    r = _run([_poll(i, root=idle) for i in range(6)])
    assert r.kinds_ever() == set()
    r = _run([_poll(0), _poll(1, root=idle), _poll(2), _poll(3)])
    assert r.first_raised("lock-contention") is None  # the streak restarted at 2
