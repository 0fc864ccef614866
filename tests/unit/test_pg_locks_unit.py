"""The lock-graph helpers on rows shaped like pg_locks / pg_stat_activity
(the real-server cases are in tests/integration/test_pg_watch_real.py)."""

from __future__ import annotations

from app.probes.pg_locks import (
    amplifiers,
    cycles,
    hot_relation,
    lock_object,
    tree_rows,
    waits_for,
)
from app.readings import describe_wait


def _l(pid: int, locktype: str, mode: str, granted: bool, **kw) -> dict:
    row = dict.fromkeys(("database", "relation", "page", "tuple", "xid", "virtualxid",
                         "classid", "objid", "objsubid", "relname"))  # fmt: skip
    row.update(pid=pid, locktype=locktype, mode=mode, granted=granted, **kw)
    return row


def test_objects_in_words() -> None:
    assert lock_object(_l(1, "relation", "x", True, relation=16400, relname="app.t")) == (
        "relation app.t"
    )
    assert lock_object(_l(1, "relation", "x", True, relation=99999)) == "relation oid 99999"
    assert lock_object(_l(1, "tuple", "x", True, relation=1, relname="s.t", page=0, tuple=5)) == (
        "row (0,5) of s.t"
    )
    big = _l(1, "advisory", "x", True, classid=1, objid=2, objsubid=1)
    assert lock_object(big) == f"advisory key 1/2 (bigint {(1 << 32) | 2})"
    assert lock_object(_l(1, "transactionid", "x", True, xid="812")) == (
        "transaction 812 (a row it changed)"
    )


def test_waits_for_names_holders_and_queued_requests() -> None:
    rows = [
        _l(10, "relation", "AccessShareLock", True, database=5, relation=16400, relname="s.t"),
        _l(11, "relation", "AccessExclusiveLock", False, database=5, relation=16400,
           relname="s.t"),
        _l(12, "relation", "AccessShareLock", False, database=5, relation=16400, relname="s.t"),
        _l(12, "relation", "RowExclusiveLock", True, database=5, relation=16500, relname="s.u"),
    ]  # fmt: skip
    wf, holds = waits_for(rows, {11: [10], 12: [11]})
    assert wf[11]["holders"] == [{"pid": 10, "mode": "AccessShareLock", "granted": True}]
    assert wf[12]["holders"] == [{"pid": 11, "mode": "AccessExclusiveLock", "granted": False}]
    assert describe_wait(wf[12]) == (
        "wants AccessShareLock on relation s.t; queued behind AccessExclusiveLock of 11"
    )
    assert holds[12] == ["s.u"]
    waiters = {11: {"pid": 11, "waits_for": wf[11], "query": "ALTER"},
               12: {"pid": 12, "waits_for": wf[12], "query": "SELECT"}}  # fmt: skip
    (amp,) = amplifiers(waiters, {10: [11], 11: [12]})
    assert amp["pid"] == 11 and amp["queued"] == 1 and amp["behind"] == [10]
    assert hot_relation(waiters)["relation"] == "s.t"


def test_cycles_and_tree_depths() -> None:
    assert cycles({1: [2], 2: [3], 3: [1], 4: [1]}) == [[1, 2, 3]]
    assert cycles({1: [2], 2: [5]}) == []
    backends = {p: {"pid": p, "state_age_s": float(p)} for p in range(1, 6)}
    rows = tree_rows(1, {1: [2, 3], 2: [4], 4: [5]}, backends)
    assert [(b["pid"], b["depth"], b.get("parent")) for b in rows] == [
        (1, 0, None), (3, 1, 1), (2, 1, 1), (4, 2, 2), (5, 3, 4),
    ]  # fmt: skip
