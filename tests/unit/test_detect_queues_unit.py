"""Issue 11's queue and lock detectors on hand-made readings: a queue already
stuck when the watch starts, a queue whose oldest item ages with the clock,
consumers gone from evidence about THAT queue (direct = critical, indirect =
warning, polling), stream groups that never acknowledge, a lock taken over
after its PTTL ran out, and Postgres queue readings served the same way."""

from __future__ import annotations

from typing import Any

from tests.detect_support import T0, Run, only, reading, tick


def _q(i: int, probe: str = "redis", **data: Any) -> dict:
    return {probe: reading(probe, {"queues": [], "locks": [], **data}, t=T0 + i + 0.5)}


def feed(r: Run, n: int, start: int, queues_at: Any, probe: str = "redis") -> int:
    for i in range(start, start + n):
        r.feed(tick(i, readings=_q(i, probe, queues=queues_at(i))))
    return start + n


def test_queue_already_stuck_at_start_is_raised() -> None:
    r = Run(only(None, "queue-stuck", "queue-backlog"))
    q = {"name": "jobs:pending", "layout": "list", "depth": 500, "consumed_per_s": 0.0,
         "consumers": {"kind": "blocked", "count": 0, "evidence": "indirect"}}  # fmt: skip
    # the first poll cannot measure consumption yet
    feed(r, 1, 0, lambda i: [{**q, "consumed_per_s": None}])
    feed(r, 10, 1, lambda i: [q])
    raised = r.first_raised("queue-stuck")
    assert raised is not None and raised <= 6, raised
    a = r.of("queue-stuck")[0]
    assert a.severity == "critical" and a.evidence["depth"] == 500
    assert "nothing consumed" in a.summary
    # flat depth, nobody consuming: the backlog does not clear either
    assert "queue-backlog" not in r.kinds_ever() or r.of("queue-backlog")


def test_consuming_queue_is_not_stuck_and_aging_one_is() -> None:
    r = Run(only(None, "queue-stuck"))
    busy = {"name": "q", "layout": "rq", "depth": 200, "consumed_per_s": 50.0,
            "oldest_age_s": 1.0}  # fmt: skip
    i = feed(r, 12, 0, lambda i: [busy])
    assert r.kinds_ever() == set()
    # consumption unknown (duplicate items), but the oldest ready item ages with the clock
    i = feed(r, 20, i, lambda i: [{**busy, "consumed_per_s": None, "oldest_age_s": 5.0 + i}])
    a = r.of("queue-stuck")[0]
    assert a.evidence["aging"] is True and "aged" in a.summary


def test_consumers_gone_direct_indirect_polling_and_other_db() -> None:
    r = Run(only(None, "consumers-gone"))

    def qs(n_direct: int, n_indirect: int, consumed: float) -> list[dict]:
        return [
            {"name": "stream", "layout": "stream", "depth": 50, "consumed_per_s": consumed,
             "consumers": {"kind": "stream", "count": n_direct, "evidence": "direct"}},
            {"name": "emails", "layout": "list", "depth": 50, "consumed_per_s": consumed,
             "consumers": {"kind": "blocked", "count": n_indirect, "evidence": "indirect"}},
            {"name": "arq:queue", "layout": "arq", "depth": 50, "consumed_per_s": consumed,
             "consumers": {"kind": "polling", "count": None, "evidence": "indirect"}},
        ]  # fmt: skip

    i = feed(r, 5, 0, lambda i: qs(2, 3, 10.0))
    assert r.kinds_ever() == set()
    # another database's client went away: THIS db still has its blocked consumers
    i = feed(r, 5, i, lambda i: qs(2, 3, 10.0))
    assert r.kinds_ever() == set()
    gone_at = i
    i = feed(r, 8, i, lambda i: qs(0, 0, 0.0))
    by = {a.evidence["queue"]: a for a in r.active[-1]}
    assert by["stream"].severity == "critical"
    assert by["emails"].severity == "warning"  # indirect: lower severity
    assert by["arq:queue"].severity == "warning" and "polling" in by["arq:queue"].summary
    first = {
        q: next(t.index for t, act in zip(r.ticks, r.active, strict=True)
                for a in act if a.evidence["queue"] == q)
        for q in by
    }  # fmt: skip
    assert first["stream"] - gone_at <= 2 and first["emails"] - gone_at <= 2
    assert first["arq:queue"] - gone_at <= 6


def test_stream_group_pending_grows_and_idle_owners_are_named() -> None:
    r = Run(only(None, "queue-pending"))

    def qs(i: int) -> list[dict]:
        g = {"name": "billing", "pending": 400 * i, "consumers": 2, "lag": 0,
             "consumer_list": [{"name": "c-live", "pending": 400 * i - 50, "idle_ms": 100},
                               {"name": "c-dead", "pending": 50, "idle_ms": 45_000}]}  # fmt: skip
        return [{"name": "events", "layout": "stream", "depth": 0, "groups": [g]}]

    feed(r, 6, 1, qs)
    a = r.of("queue-pending")[0]
    assert a.evidence["group"] == "billing" and "do not acknowledge" in a.summary
    assert "c-dead" in a.summary and "c-live" not in a.summary


def test_lock_takeover_from_the_probe_watch() -> None:
    r = Run(only(None, "lock-takeover"))
    tk = {"key": "lock:pay", "old_holder": "worker-host-42:pid-7731",
          "new_holder": "worker-host-43:pid-99", "last_pttl_ms": 17, "ttl_ms": 2968,
          "gap_ms": 34.3, "at": T0 + 1.2, "proof": "pttl"}  # fmt: skip
    r.feed(tick(0, readings=_q(0)))
    r.feed(tick(1, readings=_q(1, takeovers=[tk])))
    a = r.of("lock-takeover")[0]
    assert a.started_tick == 1 and a.severity == "critical"
    assert a.evidence["old_holder"] == "worker-host-42:pid-7731"
    assert a.evidence["new_holder"] == "worker-host-43:pid-99"
    assert a.evidence["last_pttl_ms"] == 17 and a.evidence["ttl_ms"] == 2968
    for i in range(2, 14):  # the same takeover reported once stays ~10 ticks, then clears
        r.feed(tick(i, readings=_q(i)))
    assert r.first_cleared("lock-takeover") is not None


def test_postgres_queue_readings_get_the_same_detectors() -> None:
    r = Run(only(None, "queue-stuck", "consumers-gone"))
    q = {"name": "procrastinate:default", "layout": "procrastinate", "source": "postgres",
         "depth": 300, "consumed_per_s": 0.0, "oldest_age_s": 40.0,
         "consumers": {"kind": "polling", "count": 0, "evidence": "direct"}}  # fmt: skip
    feed(r, 8, 0, lambda i: [{**q, "oldest_age_s": 40.0 + i}], probe="pgqueues")
    kinds = {a.kind: a for a in r.active[-1]}
    assert kinds["queue-stuck"].subject == "pgqueues:queue:procrastinate:default"
    assert kinds["consumers-gone"].severity == "critical"


def test_busy_consumers_are_not_gone() -> None:
    """Consumers busy with a backlog are not blocked in a pop, and identical items
    hide the consumption rate: still connected, so not gone."""
    r = Run(only(None, "consumers-gone", "queue-backlog"))

    def q(i: int, blocked: int, clients: int) -> list[dict]:
        return [{"name": "jobs", "layout": "list", "depth": 150 + 40 * i, "consumed_per_s": None,
                 "consumers": {"kind": "blocked", "count": blocked, "evidence": "direct",
                               "db_clients": clients}}]  # fmt: skip

    i = feed(r, 4, 0, lambda i: q(i, 3, 5))  # idle consumers blocked
    i = feed(r, 8, i, lambda i: q(i, 0, 5))  # busy: none blocked, all connected
    assert "consumers-gone" not in r.kinds_ever()
    assert not any(a.evidence.get("consumers_gone") for act in r.active for a in act)
    feed(r, 3, i, lambda i: q(i, 0, 2))  # they disconnect
    assert r.of("consumers-gone")[0].severity == "critical"


def test_queue_state_stays_bounded_however_many_queues() -> None:
    """Issue 10: a server with more queues (or stream groups) than a detector's cap
    does not grow its state past the cap; the queues it follows are still judged."""
    kinds = ("queue-backlog", "queue-stuck", "consumers-gone", "queue-pending")
    r = Run(only(None, *kinds))
    n = 650  # over MAX_QUEUES and MAX_GROUPS (500)
    q = {"layout": "stream", "depth": 500, "consumed_per_s": 0.0,
         "consumers": {"kind": "stream", "count": 0, "evidence": "direct"},
         "groups": [{"name": "g", "pending": 0}]}  # fmt: skip
    feed(r, 8, 0, lambda i: [{**q, "name": f"q{k}"} for k in range(n)])
    det = {d.kind: d for d in r.dset.detectors}
    followed = {k: len(det[k]._g if k == "queue-pending" else det[k]._q) for k in kinds}
    assert followed == dict.fromkeys(kinds, 500)
    stuck = {a.evidence["queue"] for a in r.active[-1] if a.kind == "queue-stuck"}
    assert len(stuck) == 500 and "q0" in stuck and f"q{n - 1}" not in stuck
