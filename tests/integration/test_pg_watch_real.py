"""Issue 12: Postgres under someone else's load, watched for real.

Real clients nobody here wrote (pgbench with custom scripts) and psql-style
sessions held open by the test (asyncpg with application_name set) make the
trouble; a watch (the Postgres probe polled and the detectors evaluated once
per 1 s tick) must see it. Each test reads the ground truth itself from
pg_stat_activity, pg_blocking_pids and pg_stat_database, and asserts in which
tick the anomaly is raised and that nothing else was raised before it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from app.detect.detectors.postgres import _in_tx
from app.probes import postgres as pg_probe
from app.probes.postgres import PostgresProbe
from tests.pg_watch_support import (
    Watch,
    active_share,
    db_counters,
    lock_waits,
    need_pgbench,
    pgbench,
    record,
    with_user,
)

pytestmark = pytest.mark.integration

RETRY = 0.5


async def session(dsn: str, app: str, **settings: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"application_name": app, **settings})


@pytest.fixture
async def admin(pg_dsn: str):
    c = await asyncpg.connect(pg_dsn)
    yield c
    await c.close()


@pytest.fixture
async def rows(admin: asyncpg.Connection, run_id: str):
    name = f"w12_{run_id}"
    await admin.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    await admin.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(0, 15) g")
    yield name
    await admin.execute(f"DROP TABLE IF EXISTS {name}")


async def close_all(conns: list[asyncpg.Connection], tasks: list[asyncio.Task]) -> None:
    for c in conns:
        c.terminate()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---- 1. probe-blind: a role without pg_monitor, then the GRANT it names ---------------


async def test_role_without_pg_monitor_is_blind_loudly_and_the_grant_fixes_it(
    pg_dsn: str, admin: asyncpg.Connection, rows: str, run_id: str
) -> None:
    role = f"w12_plain_{run_id}"
    app = f"w12-blind-{run_id}"
    await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
    conns: list[asyncpg.Connection] = []
    tasks: list[asyncio.Task] = []
    w = Watch([PostgresProbe(with_user(pg_dsn, role))])
    try:
        holder = await session(pg_dsn, app)
        conns.append(holder)
        await holder.execute(f"BEGIN; UPDATE {rows} SET n = 1 WHERE id = 0")
        for _ in range(8):
            c = await session(pg_dsn, app)
            conns.append(c)
            tasks.append(asyncio.create_task(c.execute(f"UPDATE {rows} SET n = 2 WHERE id = 0")))
        for _ in range(50):
            truth = await lock_waits(admin, app)
            if len(truth) == 8:
                break
            await asyncio.sleep(0.05)
        assert len(truth) == 8

        tk = await w.tick()  # tick 0
        data = tk.readings["postgres"].data
        assert data["waiting"] == 0  # it cannot see them ...
        assert data["hidden_queries"] >= 9
        blind = [a for a in tk.anomalies if a.kind == "probe-blind"]  # ... and says so at once
        assert len(blind) == 1, [a.summary for a in tk.anomalies]
        a = blind[0]
        assert a.severity == "warning"
        assert a.evidence["grant"] == f"GRANT pg_monitor TO {role}"
        assert "sessions of other roles are hidden" in a.summary
        assert "lock-wait-chain" not in {x.kind for x in tk.anomalies}

        await admin.execute(a.evidence["grant"])  # the exact statement it names
        for _ in range(4):
            tk = await w.tick()
        data = tk.readings["postgres"].data
        assert "blind" not in data
        # now it sees what the server says (the server is shared: compare this test's sessions)
        seen = {
            b["pid"]: b["blocked_by"]
            for n in data["blocking_tree"]
            for b in n["waiters"]
            if b["application_name"] == app
        }
        assert seen == await lock_waits(admin, app)
        assert len(seen) == 8
        assert w.cleared("probe-blind") is not None
        report = w.report()
        first = report.split("## Run")[0]  # the report's first section says it
        assert f"fix: `GRANT pg_monitor TO {role}`" in first, first
        record("role without pg_monitor", seen=True, raised_tick=0, waiting=8, false_alarms=0)
    finally:
        await w.stop()
        await close_all(conns, tasks)
        await admin.execute(f"DROP ROLE IF EXISTS {role}")


async def test_denied_function_names_the_execute_grant(
    pg_dsn: str, admin: asyncpg.Connection, rows: str, run_id: str, monkeypatch
) -> None:
    """pg_blocking_pids revoked from PUBLIC in the test's database (function ACLs
    are per database; restored at the end): the tree is gone, the probe says so."""
    monkeypatch.setattr(pg_probe, "RETRY_DENIED_S", RETRY)  # retry the function sooner
    role = f"w12_mon_{run_id}"
    app = f"w12-fn-{run_id}"
    await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER IN ROLE pg_monitor")
    await admin.execute("REVOKE EXECUTE ON FUNCTION pg_blocking_pids(integer) FROM PUBLIC")
    conns: list[asyncpg.Connection] = []
    tasks: list[asyncio.Task] = []
    w = Watch([PostgresProbe(with_user(pg_dsn, role))])
    try:
        holder = await session(pg_dsn, app)
        waiter = await session(pg_dsn, app)
        conns += [holder, waiter]
        await holder.execute(f"BEGIN; UPDATE {rows} SET n = 1 WHERE id = 1")
        tasks.append(asyncio.create_task(waiter.execute(f"UPDATE {rows} SET n = 2 WHERE id = 1")))
        await asyncio.sleep(0.3)
        tk = await w.tick()
        r = tk.readings["postgres"]
        assert r.ok, r.error
        assert r.data["waiting"] >= 1  # counted (the server is shared: others' too) ...
        mine = {holder.get_server_pid(), waiter.get_server_pid()}
        assert not [n for n in r.data["blocking_tree"] if n["root"]["pid"] in mine]  # no tree
        (a,) = [a for a in tk.anomalies if a.kind == "probe-blind"]
        grant = f"GRANT EXECUTE ON FUNCTION pg_catalog.pg_blocking_pids(integer) TO {role}"
        assert a.evidence["grant"] == grant
        assert "pg_blocking_pids() is denied" in a.summary
        # the exact statement fixes it: the probe tries the function again and sees the tree
        await admin.execute(a.evidence["grant"])
        await asyncio.sleep(RETRY)
        tk = await w.tick()
        data = tk.readings["postgres"].data
        assert "blind" not in data
        (node,) = [n for n in data["blocking_tree"] if n["root"]["pid"] == holder.get_server_pid()]
        assert node["waiters"][0]["pid"] == waiter.get_server_pid()
    finally:
        await w.stop()
        await close_all(conns, tasks)
        await admin.execute("GRANT EXECUTE ON FUNCTION pg_blocking_pids(integer) TO PUBLIC")
        await admin.execute(f"REVOKE EXECUTE ON FUNCTION pg_blocking_pids(integer) FROM {role}")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")


# ---- 3. the lock graph as it is --------------------------------------------------------


async def test_eight_deep_chain_is_a_tree_with_depths(
    pg_dsn: str, admin: asyncpg.Connection, rows: str, run_id: str
) -> None:
    app = f"w12-chain-{run_id}"
    conns: list[asyncpg.Connection] = []
    tasks: list[asyncio.Task] = []
    w = Watch([PostgresProbe(pg_dsn)])
    try:
        for i in range(8):  # s_i holds row i, then waits for row i-1: a chain 7 deep
            c = await session(pg_dsn, app)
            conns.append(c)
            await c.execute(f"BEGIN; UPDATE {rows} SET n = n + 1 WHERE id = {i}")
        onset = w.next
        for i in range(1, 8):
            q = f"UPDATE {rows} SET n = n + 1 WHERE id = {i - 1}"
            tasks.append(asyncio.create_task(conns[i].execute(q)))
            await asyncio.sleep(0.05)
        truth: dict[int, list[int]] = {}
        for _ in range(50):
            truth = await lock_waits(admin, app)
            if len(truth) == 7:
                break
            await asyncio.sleep(0.05)
        pids = [c.get_server_pid() for c in conns]
        assert truth == {pids[i]: [pids[i - 1]] for i in range(1, 8)}

        await w.run(4)
        data = w.readings()[-1]
        (node,) = [n for n in data["blocking_tree"] if n["root"]["pid"] == pids[0]]
        assert node["depth"] == 7 and node["waiting_count"] == 7
        tree = node["tree"]
        assert [b["pid"] for b in tree] == pids  # root first, then each level below
        assert [b["depth"] for b in tree] == list(range(8))
        for b in tree[1:]:
            assert truth[b["pid"]] == [b["parent"]]  # matches pg_blocking_pids
            wf = b["waits_for"]
            assert wf["locktype"] == "transactionid" and wf["mode"] == "ShareLock"
            assert wf["relation"] == f"public.{rows}"
            assert wf["holders"] == [{"pid": b["parent"], "mode": "ExclusiveLock", "granted": True}]
        raised, a = w.first("lock-wait-chain")
        assert raised is not None and raised - onset <= 3, (raised, onset)
        assert a is not None and a.evidence["depth"] == 7
        assert f"pid {pids[0]}" in a.summary and "wants ShareLock on transaction" in a.summary
        assert w.kinds(0, onset) == set()
        assert w.kinds() == {"lock-wait-chain", "idle-in-transaction-blocker"}  # nothing twice
        record("8-deep chain (psql-style)", seen=True, depth=7, ticks=raised - onset,
               kinds=sorted(w.kinds()))  # fmt: skip
    finally:
        await w.stop()
        await close_all(conns, tasks)


async def test_alter_behind_an_idle_reader_is_named_the_amplifier(
    pg_dsn: str, admin: asyncpg.Connection, rows: str, run_id: str
) -> None:
    app = f"w12-alter-{run_id}"
    conns: list[asyncpg.Connection] = []
    tasks: list[asyncio.Task] = []
    w = Watch([PostgresProbe(pg_dsn)])
    try:
        reader, alter, *queue = [await session(pg_dsn, app) for _ in range(5)]
        conns += [reader, alter, *queue]
        await reader.execute(f"BEGIN; SELECT count(*) FROM {rows}")  # idle in transaction
        onset = w.next
        tasks.append(asyncio.create_task(alter.execute(f"ALTER TABLE {rows} ADD COLUMN x int")))
        await asyncio.sleep(0.2)
        tasks += [asyncio.create_task(c.execute(f"SELECT * FROM {rows}")) for c in queue]
        await asyncio.sleep(0.3)
        truth = await lock_waits(admin, app)
        ap = alter.get_server_pid()
        assert truth[ap] == [reader.get_server_pid()]
        assert all(truth[c.get_server_pid()] == [ap] for c in queue)

        await w.run(4)
        data = w.readings()[-1]
        (amp,) = [x for x in data["amplifiers"] if x["pid"] == ap]
        assert amp["pid"] == ap and amp["mode"] == "AccessExclusiveLock"
        assert amp["relation"] == f"public.{rows}" and amp["queued"] == 3
        assert amp["held"] == [
            {"pid": reader.get_server_pid(), "mode": "AccessShareLock", "granted": True}
        ]
        q = next(
            b
            for n in data["blocking_tree"]
            for b in n["tree"]
            if b["pid"] == queue[0].get_server_pid()
        )
        assert q["waits_for"]["mode"] == "AccessShareLock"
        assert q["waits_for"]["holders"] == [
            {"pid": ap, "mode": "AccessExclusiveLock", "granted": False}
        ]
        raised, a = w.first("lock-wait-chain")
        assert raised is not None and raised - onset <= 3
        assert a is not None and f"amplifier: pid {ap}" in a.summary
        assert "AccessExclusiveLock" in a.summary and a.severity == "critical"
        raised_idle, _ = w.first("idle-in-transaction-blocker")
        assert raised_idle is not None
        assert w.kinds() == {"lock-wait-chain", "idle-in-transaction-blocker"}
        record("ALTER behind idle reader", seen=True, ticks=raised - onset,
               kinds=sorted(w.kinds()))  # fmt: skip
    finally:
        await w.stop()
        await close_all(conns, tasks)


async def test_advisory_lock_names_the_key_and_a_holder_outside_a_transaction(
    pg_dsn: str, admin: asyncpg.Connection, run_id: str
) -> None:
    app = f"w12-adv-{run_id}"
    conns: list[asyncpg.Connection] = []
    tasks: list[asyncio.Task] = []
    w = Watch([PostgresProbe(pg_dsn)])
    try:
        holder, waiter = await session(pg_dsn, app), await session(pg_dsn, app)
        conns += [holder, waiter]
        await holder.execute("SELECT pg_advisory_lock(7, 4242)")  # session-level, then idle
        tasks.append(asyncio.create_task(waiter.execute("SELECT pg_advisory_lock(7, 4242)")))
        await asyncio.sleep(1.2)
        truth = await lock_waits(admin, app)
        assert truth == {waiter.get_server_pid(): [holder.get_server_pid()]}
        await w.run(3)
        data = w.readings()[-1]
        # the server is shared: this test's tree is the one rooted at its holder
        (node,) = [n for n in data["blocking_tree"] if n["root"]["pid"] == holder.get_server_pid()]
        wf = node["tree"][1]["waits_for"]
        assert wf["locktype"] == "advisory" and wf["advisory"] == [7, 4242, 2]
        assert wf["object"] == "advisory key 7/4242 (two int4 keys)"
        assert node["root"]["state"] == "idle" and node["root"]["xact_age_s"] is None
        assert _in_tx(node["root"]).startswith("in no transaction (a session-level lock")
        _, a = w.first("lock-wait-chain")
        assert a is not None
        if a.evidence["root"]["pid"] == holder.get_server_pid():  # (a shared server's biggest)
            assert "in no transaction (a session-level lock" in a.summary
            assert "in transaction ?" not in a.summary
    finally:
        await w.stop()
        await close_all(conns, tasks)


async def test_deadlock_cycle_shown_until_the_server_breaks_it_and_counted(
    pg_dsn: str, admin: asyncpg.Connection, rows: str, run_id: str
) -> None:
    app = f"w12-cycle-{run_id}"
    # deadlock_timeout (superuser-settable) gives the watch 3 s to see the cycle
    a, b = [await session(pg_dsn, app, deadlock_timeout="3s") for _ in range(2)]
    w = Watch([PostgresProbe(pg_dsn)])
    tasks: list[asyncio.Task] = []
    try:
        w.start()
        await w.wait_ticks(3)
        before = await db_counters(admin)
        await a.execute(f"BEGIN; UPDATE {rows} SET n = 1 WHERE id = 10")
        await b.execute(f"BEGIN; UPDATE {rows} SET n = 1 WHERE id = 11")
        ta = asyncio.create_task(a.execute(f"UPDATE {rows} SET n = 2 WHERE id = 11"))
        await asyncio.sleep(0.1)
        onset = w.next
        tb = asyncio.create_task(b.execute(f"UPDATE {rows} SET n = 2 WHERE id = 10"))
        tasks += [ta, tb]
        await asyncio.sleep(0.5)
        truth = await lock_waits(admin, app)
        pa, pb = a.get_server_pid(), b.get_server_pid()
        assert truth == {pa: [pb], pb: [pa]}  # the cycle, as the server has it
        done = await asyncio.wait_for(asyncio.gather(ta, tb, return_exceptions=True), 10)
        broken = w.next  # the server has cancelled one of them by now
        assert any(isinstance(x, asyncpg.DeadlockDetectedError) for x in done), done
        for c in (a, b):
            await c.execute("ROLLBACK")
        await w.wait_ticks(broken + 5)
        after = await db_counters(admin)
        assert after["deadlocks"] - before["deadlocks"] == 1

        raised, cyc = w.first("deadlock-cycle")
        assert raised is not None and raised - onset <= 2, (raised, onset)
        assert cyc is not None and cyc.summary.startswith(
            f"deadlock cycle: {min(pa, pb)} ↔ {max(pa, pb)}"
        )
        assert "SET n = 2 WHERE id = 11" in cyc.summary and "SET n = 2 WHERE id = 10" in cyc.summary
        assert w.cleared("deadlock-cycle") is not None  # gone once the server broke it
        assert w.cleared("deadlock-cycle") <= broken + 2
        chain = w.latest("lock-wait-chain") or w.first("lock-wait-chain")[1]
        if chain is not None:  # raised when the cycle lasted 2 ticks: shown as a cycle
            assert chain.summary.startswith("deadlock cycle:"), chain.summary
        raised_d, d = w.first("pg-deadlocks")
        assert raised_d is not None and raised_d - broken <= 3, (raised_d, broken)
        assert d is not None and d.evidence["since_start"] == 1
        assert w.kinds(0, onset) == set()
        report = w.report()
        assert report.splitlines()[2].startswith("**FAIL**"), report  # the verdict sees it
        assert "Server side: 1 deadlocks" in report
        assert "| deadlocks (40P01) | 1 | 0 |" in report  # server's count beside loadtop's
        record("deadlock cycle (psql-style)", seen=True, cycle_ticks=raised - onset,
               deadlock_ticks=raised_d - broken, server_deadlocks=1,
               kinds=sorted(w.kinds()))  # fmt: skip
    finally:
        await w.stop()
        await close_all([a, b], tasks)


# ---- 2 and 4: pgbench against a hot row, in opposite orders, SERIALIZABLE -----------------


HOT_ROW = """\
BEGIN;
UPDATE {t} SET n = n + 1 WHERE id = 0;
SELECT pg_sleep(0.01);
END;
"""

OPPOSITE_ORDER = """\
\\set a random(1, 2)
\\set b 3 - :a
BEGIN;
UPDATE {t} SET n = n + 1 WHERE id = :a;
SELECT pg_sleep(0.02);
UPDATE {t} SET n = n + 1 WHERE id = :b;
END;
"""

SERIALIZABLE = """\
\\set a random(1, 8)
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT sum(n) FROM {t};
UPDATE {t} SET n = n + 1 WHERE id = :a;
END;
"""


@pytest.mark.slow
async def test_pgbench_hot_row_raises_lock_contention(
    pg_dsn: str, admin: asyncpg.Connection, rows: str, run_id: str, tmp_path: Path
) -> None:
    need_pgbench()
    app = f"w12-hot-{run_id}"
    w = Watch([PostgresProbe(pg_dsn)])
    samples: list[tuple[int, int]] = []
    longest: list[float] = []  # the longest lock wait at each sample, seconds

    async def sample() -> None:
        while True:
            samples.append(await active_share(admin, app))
            longest.append(await admin.fetchval(
                "SELECT coalesce(max(extract(epoch FROM now() - state_change)), 0)::float8 "
                "FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                app))  # fmt: skip
            await asyncio.sleep(0.1)

    try:
        w.start()
        await w.wait_ticks(4)
        onset = w.next
        sampler = asyncio.create_task(sample())
        res = await pgbench(
            pg_dsn, HOT_ROW.format(t=rows), tmp_path, clients=16, seconds=9, app=app
        )
        sampler.cancel()
        await w.wait_ticks(len(w.ticks) + 4)
    finally:
        await w.stop()
    assert res["rc"] == 0, res["output"]
    busy = [s for s in samples if s[1] >= 8]
    truth = sum(wt for wt, _ in busy) / max(1, sum(a for _, a in busy))
    assert truth >= 0.8, samples  # ground truth: most of the 16 clients wait, in turns

    raised, a = w.first("lock-contention")
    assert raised is not None, [r.get("waiting") for r in w.readings()]
    assert raised - onset <= 5, (raised, onset)
    assert a is not None
    # named from the first raise on (a poll at a lock hand-over has no lock graph:
    # the relation of the last one is kept), and never lost while it is raised
    polls = [
        (tk.index, (r.data.get("lock_hot") or {}).get("relation"), len(r.data.get("blocking_tree")))
        for tk in w.ticks[onset : raised + 1]
        if (r := tk.readings.get("postgres")) is not None and r.ok
    ]
    assert a.evidence["hot_relation"] == f"public.{rows}", f"{a.evidence} {polls}"
    assert "UPDATE" in a.evidence["waiters_query"] and "id = 0" in a.evidence["waiters_query"]
    named = [x.evidence["hot_relation"] for tk in w.ticks for x in tk.anomalies
             if x.kind == "lock-contention"]  # fmt: skip
    assert set(named) == {f"public.{rows}"}, named
    seen = [
        r["waiting"] / max(1, r["active"])
        for r in w.readings(onset + 1, raised + 4)
        if r["active"] >= 8
    ]
    probe_share = sum(seen) / len(seen)
    assert abs(probe_share - truth) < 0.2, (probe_share, truth)
    # the waits are short: no long-wait alarm, no errors
    others = w.kinds() - {"lock-contention"}
    assert not others & {"pg-deadlocks", "pg-rollbacks", "deadlock-cycle", "probe-blind"}, others
    if "lock-wait-chain" in others:  # only true when some turn really took over a second
        assert max(longest) >= 1.0, max(longest)
    assert w.kinds(0, onset) == set()
    assert w.cleared("lock-contention") is not None
    record("pgbench hot row (16 clients)", seen=True, truth_share=round(truth, 2),
           probe_share=round(probe_share, 2), ticks=raised - onset,
           tps=res["processed"] / 9, other_kinds=sorted(others),
           longest_wait_s=round(max(longest), 2),
           poll_ms_max=round(max(tk.readings["postgres"].duration_ms for tk in w.ticks), 1))  # fmt: skip


@pytest.mark.slow
async def test_pgbench_opposite_order_deadlocks_match_the_server(
    pg_dsn: str, admin: asyncpg.Connection, rows: str, run_id: str, tmp_path: Path
) -> None:
    need_pgbench()
    app = f"w12-dl-{run_id}"
    w = Watch([PostgresProbe(pg_dsn)])
    first_seen: list[int] = []  # the tick in which the server first counted a deadlock

    async def watch_counter(base: int) -> None:
        mon = await asyncpg.connect(pg_dsn)
        try:
            while not first_seen:
                if (await db_counters(mon))["deadlocks"] > base:
                    first_seen.append(w.next)
                await asyncio.sleep(0.1)
        finally:
            await mon.close()

    try:
        w.start()
        await w.wait_ticks(3)
        before = await db_counters(admin)
        onset = w.next
        sampler = asyncio.create_task(watch_counter(before["deadlocks"]))
        res = await pgbench(
            pg_dsn, OPPOSITE_ORDER.format(t=rows), tmp_path, clients=4, seconds=8, app=app,
            extra=["--max-tries=100", "--failures-detailed"],
        )  # fmt: skip
        sampler.cancel()
        # the backends' last statistics reach the server: wait until the count is still
        after = await db_counters(admin)
        for _ in range(20):
            await asyncio.sleep(1.0)
            again = await db_counters(admin)
            if again["deadlocks"] == after["deadlocks"]:
                break
            after = again
        await w.wait_ticks(len(w.ticks) + 3)
    finally:
        await w.stop()
    assert res["rc"] == 0, res["output"]
    server = after["deadlocks"] - before["deadlocks"]
    assert server >= 2, res["output"]
    # every retry pgbench counted was a deadlock victim on the server; a transaction
    # still retrying when -T ran out is not in its count (nor are its retries)
    counted = res["retries"] + res["deadlock_failures"]
    assert 0 < counted <= server, (res["output"], server)
    raised, _ = w.first("pg-deadlocks")
    assert raised is not None and first_seen
    # within 3 ticks of the tick in which the server first counted one
    assert raised - first_seen[0] <= 3, (raised, first_seen, onset)
    last = w.latest("pg-deadlocks")
    assert last is not None and last.evidence["since_start"] == server, (last, server)
    assert sum(r.get("deltas", {}).get("deadlocks", 0) for r in w.readings()) == server
    assert w.kinds(0, onset) == set()
    record("pgbench opposite-order deadlocks", seen=True, server=server,
           pgbench_retries=res["retries"], probe=last.evidence["since_start"],
           ticks_after_first=raised - first_seen[0], ticks_after_start=raised - onset,
           kinds=sorted(w.kinds()))  # fmt: skip


@pytest.mark.slow
async def test_pgbench_serializable_conflicts_raise_the_rollback_ratio(
    pg_dsn: str, admin: asyncpg.Connection, rows: str, run_id: str, tmp_path: Path
) -> None:
    need_pgbench()
    app = f"w12-ser-{run_id}"
    w = Watch([PostgresProbe(pg_dsn)])
    try:
        w.start()
        await w.wait_ticks(3)
        before = await db_counters(admin)
        onset = w.next
        res = await pgbench(
            pg_dsn, SERIALIZABLE.format(t=rows), tmp_path, clients=8, seconds=8, app=app,
            extra=["--max-tries=1000", "--failures-detailed"],
        )  # fmt: skip
        end = w.next
        await asyncio.sleep(1.5)
        after = await db_counters(admin)
        await w.wait_ticks(len(w.ticks) + 5)
    finally:
        await w.stop()
    assert res["rc"] == 0, res["output"]
    rb = after["rollbacks"] - before["rollbacks"]
    cm = after["commits"] - before["commits"]
    truth = rb / (rb + cm)
    assert truth >= 0.15, res["output"]  # precondition: the script does conflict
    # every serialization failure pgbench retried is one rollback on the server
    assert abs(rb - res["retries"] - res["failed"]) <= max(3, rb * 0.02), (rb, res["output"])
    raised, a = w.first("pg-rollbacks")
    assert raised is not None and raised - onset <= 3 + 2, (raised, onset)
    assert a is not None and a.evidence["database"] == (
        await admin.fetchval("SELECT current_database()")
    )
    ratios = [
        r["rates"]["rollbacks"] / (r["rates"]["rollbacks"] + r["rates"]["commits"])
        for r in w.readings(onset + 2, end)
        if r.get("rates") and r["rates"]["rollbacks"] + r["rates"]["commits"] > 0
    ]
    probe = sum(ratios) / len(ratios)
    assert abs(probe - truth) < 0.1, (probe, truth)
    assert w.kinds(0, onset) == set()
    assert w.cleared("pg-rollbacks") is not None
    record("pgbench SERIALIZABLE conflicts", seen=True, truth_ratio=round(truth, 3),
           probe_ratio=round(probe, 3), rollbacks=rb, pgbench_retries=res["retries"],
           ticks=raised - onset, kinds=sorted(w.kinds()))  # fmt: skip
