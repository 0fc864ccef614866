"""The Postgres probe against a real PostgreSQL: lock-wait trees built from real
row locks, idle-in-transaction roots, a pg_monitor-only role, rates from real
rollbacks and deadlocks, and a server that goes away and comes back."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.probes.base import ProbeSet, run_poll
from app.probes.postgres import PostgresProbe, blocking_tree
from tests.helpers import wait_for_reading

pytestmark = pytest.mark.integration


async def connect(dsn: str, app: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"application_name": app})


def with_user(dsn: str, user: str) -> str:
    u = urlsplit(dsn)
    host = u.hostname or "127.0.0.1"
    netloc = f"{user}@{host}:{u.port or 5432}"
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


async def until(probe: PostgresProbe, cond, timeout: float = 8.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = await run_poll(probe)
        assert r.ok, r.error
        if cond(r.data):
            return dict(r.data)
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held; last reading: {json.dumps(r.data)[:2000]}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def table(pg_dsn: str, run_id: str):
    name = f"loadtop_probe_{run_id}"
    c = await asyncpg.connect(pg_dsn)
    await c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    await c.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 10) g")
    yield name
    await c.execute(f"DROP TABLE IF EXISTS {name}")
    await c.close()


async def test_lock_wait_tree_idle_in_transaction_root(pg_dsn: str, table: str) -> None:
    holder = await connect(pg_dsn, "loadtop:x:w1")
    w2 = await connect(pg_dsn, "loadtop:x:w2")
    w3 = await connect(pg_dsn, "loadtop:x:w3")
    probe = PostgresProbe(pg_dsn, locks_every_s=0)  # pg_locks on every poll here
    tasks: list[asyncio.Task] = []
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")  # now idle in tx
        tasks.append(asyncio.create_task(w2.execute(f"UPDATE {table} SET n = n + 2 WHERE id = 1")))
        await asyncio.sleep(0.2)  # w2 queues first, so w3 waits behind it
        tasks.append(asyncio.create_task(w3.execute(f"UPDATE {table} SET n = n + 3 WHERE id = 1")))

        data = await until(probe, lambda d: d["waiting"] >= 2)
        hp, p2, p3 = (c.get_server_pid() for c in (holder, w2, w3))

        assert data["blocking_tree"], data
        node = data["blocking_tree"][0]
        root = node["root"]
        assert root["pid"] == hp
        assert root["application_name"] == "loadtop:x:w1"
        assert root["state"] == "idle in transaction"
        assert "SET n = n + 1" in root["query"]
        assert root["xact_age_s"] >= 0.2
        assert node["waiting_count"] == 2
        waiters = {w["pid"]: w for w in node["waiters"]}
        assert set(waiters) == {p2, p3}
        assert waiters[p2]["application_name"] == "loadtop:x:w2"
        assert waiters[p2]["blocked_by"] == [hp]
        assert waiters[p2]["wait_event_type"] == "Lock"
        assert waiters[p2]["wait_event"] == "transactionid"
        # w3 queues on the tuple lock that w2 holds: a chain of two
        assert waiters[p3]["blocked_by"] == [p2]
        assert waiters[p3]["wait_event"] == "tuple"
        assert node["depth"] == 2
        assert "SET n = n + 3" in waiters[p3]["query"]

        assert data["waiting"] == 2
        assert data["by_wait"]["Lock:transactionid"] == 1
        assert data["by_wait"]["Lock:tuple"] == 1
        assert data["by_state"]["idle in transaction"] >= 1
        assert any(b["pid"] == hp for b in data["idle_in_tx"])
        assert data["oldest_xact_s"] >= root["xact_age_s"] - 0.5
        assert data["locks_by_mode"]["ExclusiveLock"] >= 1
        assert data["locks_by_mode"].get("RowExclusiveLock", 0) >= 3
        assert data["max_connections"] >= 10
        assert data["connections"] >= 3
        # the probe leaves itself out of everything
        assert "loadtop:probe" not in json.dumps(data)

        await tx.rollback()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        data = await until(probe, lambda d: d["waiting"] == 0)
        assert data["blocking_tree"] == []
    finally:
        for t in tasks:
            t.cancel()
        for c in (holder, w2, w3):
            c.terminate()
        await probe.close()


async def test_a_lock_chain_in_another_database_is_named_as_such(
    pg_dsn: str, table: str, run_id: str
) -> None:
    """pg_stat_activity is server-wide: a chain in another database of the same
    server takes slots and shows in the tree, so each of its sessions names its
    database; the target database's own sessions name none."""
    other = f"loadtop_other_{run_id}"
    admin = await asyncpg.connect(pg_dsn)
    await admin.execute(f'CREATE DATABASE "{other}"')
    u = urlsplit(pg_dsn)
    other_dsn = urlunsplit((u.scheme, u.netloc, f"/{other}", u.query, u.fragment))
    conns: list[asyncpg.Connection] = []
    probe = PostgresProbe(pg_dsn, locks_every_s=0)
    task: asyncio.Task | None = None
    try:
        setup = await asyncpg.connect(other_dsn)
        await setup.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        await setup.close()
        holder, waiter, mine = (await connect(other_dsn, "other:holder"),
                                await connect(other_dsn, "other:waiter"),
                                await connect(pg_dsn, "mine:idle-tx"))  # fmt: skip
        conns += [holder, waiter, mine]
        await holder.execute("BEGIN; UPDATE t SET id = 1 WHERE id = 1")
        await mine.execute(f"BEGIN; UPDATE {table} SET n = 1 WHERE id = 2")
        task = asyncio.create_task(waiter.execute("UPDATE t SET id = 1 WHERE id = 1"))
        data = await until(probe, lambda d: d["waiting"] >= 1 and d["blocking_tree"])
        node = next(n for n in data["blocking_tree"]
                    if n["root"]["pid"] == holder.get_server_pid())  # fmt: skip
        assert node["root"]["database"] == other
        assert [w.get("database") for w in node["waiters"]] == [other]
        own = next(b for b in data["idle_in_tx"] if b["pid"] == mine.get_server_pid())
        assert "database" not in own, own
    finally:
        if task is not None:
            task.cancel()
        for c in conns:
            c.terminate()
        await probe.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
        await admin.close()


async def test_active_root_blocker_and_settings(pg_dsn: str, table: str) -> None:
    holder = await connect(pg_dsn, "loadtop:y:w7")
    waiter = await connect(pg_dsn, "loadtop:y:w8")
    probe = PostgresProbe(pg_dsn, statement_timeout_ms=1500)
    task = None
    try:
        # the root holds a row lock and stays busy in a long statement
        hold = asyncio.create_task(
            holder.execute(
                f"BEGIN; UPDATE {table} SET n = 1 WHERE id = 2; SELECT pg_sleep(3); COMMIT"
            )
        )
        await asyncio.sleep(0.3)
        task = asyncio.create_task(waiter.execute(f"UPDATE {table} SET n = 2 WHERE id = 2"))
        data = await until(probe, lambda d: d["waiting"] >= 1)
        root = data["blocking_tree"][0]["root"]
        assert root["pid"] == holder.get_server_pid()
        assert root["state"] == "active"
        assert root["wait_event"] == "PgSleep"
        assert "pg_sleep" in root["query"]
        # the probe's own session: named, bounded and read-only
        assert await probe._conn.fetchval("SHOW statement_timeout") == "1500ms"
        assert await probe._conn.fetchval("SHOW default_transaction_read_only") == "on"
        assert await probe._conn.fetchval("SHOW application_name") == "loadtop:probe"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await probe._conn.execute(f"UPDATE {table} SET n = 9")
        hold.cancel()
    finally:
        admin = await asyncpg.connect(pg_dsn)  # end the sleeping holder now, not in 3 s
        await admin.execute("SELECT pg_terminate_backend($1)", holder.get_server_pid())
        await admin.close()
        holder.terminate()
        waiter.terminate()
        if task:
            task.cancel()
        await probe.close()


async def test_pg_monitor_role_without_superuser(pg_dsn: str, table: str, run_id: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    mon, plain = f"loadtop_mon_{run_id}", f"loadtop_plain_{run_id}"
    await admin.execute(f"CREATE ROLE {mon} LOGIN NOSUPERUSER IN ROLE pg_monitor")
    await admin.execute(f"CREATE ROLE {plain} LOGIN NOSUPERUSER")
    holder = await connect(pg_dsn, "loadtop:z:w1")
    waiter = await connect(pg_dsn, "loadtop:z:w2")
    probe = PostgresProbe(with_user(pg_dsn, mon))
    plain_probe = PostgresProbe(with_user(pg_dsn, plain))
    task = None
    try:
        assert not await admin.fetchval(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{mon}'")
        tx = holder.transaction()
        await tx.start()
        await holder.execute(f"SELECT * FROM {table} WHERE id = 3 FOR UPDATE")
        task = asyncio.create_task(waiter.execute(f"UPDATE {table} SET n = 5 WHERE id = 3"))
        data = await until(probe, lambda d: d["waiting"] >= 1)
        node = data["blocking_tree"][0]
        assert node["root"]["pid"] == holder.get_server_pid()
        assert "FOR UPDATE" in node["root"]["query"]  # pg_monitor sees other roles' queries
        assert node["waiters"][0]["application_name"] == "loadtop:z:w2"
        assert "warning" not in data
        assert data["rates"] == {} and data["totals"]["commits"] > 0

        # without pg_monitor the probe still works, and says what it cannot see
        r = await run_poll(plain_probe)
        assert r.ok, r.error
        assert r.data["hidden_queries"] >= 2
        assert f"GRANT pg_monitor TO {plain}" in r.data["warning"]
        await tx.rollback()
    finally:
        if task:
            task.cancel()
        holder.terminate()
        waiter.terminate()
        await probe.close()
        await plain_probe.close()
        await admin.execute(f"DROP ROLE IF EXISTS {mon}")
        await admin.execute(f"DROP ROLE IF EXISTS {plain}")
        await admin.close()


async def test_rates_from_rollbacks_and_a_real_deadlock(pg_dsn: str, table: str) -> None:
    probe = PostgresProbe(pg_dsn)
    a = await connect(pg_dsn, "loadtop:d:w1")
    b = await connect(pg_dsn, "loadtop:d:w2")
    try:
        tx = b.transaction()
        await tx.start()
        await b.execute(f"LOCK TABLE {table} IN SHARE MODE")
        first = await run_poll(probe)
        await tx.rollback()
        assert first.ok and first.data["rates"] == {}  # no rate before a second sample
        before = first.data["totals"]
        assert first.data["locks_age_s"] == 0 and first.data["locks_by_mode"]["ShareLock"] == 1
        again = await run_poll(probe)  # pg_locks is read every 5 s, not every poll
        assert 0 < again.data["locks_age_s"] < 5
        assert again.data["locks_by_mode"] == first.data["locks_by_mode"]

        for _ in range(5):
            tx = a.transaction()
            await tx.start()
            await a.execute("SELECT 1")
            await tx.rollback()
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        await a.execute(f"UPDATE {table} SET n = 1 WHERE id = 4")
        await b.execute(f"UPDATE {table} SET n = 1 WHERE id = 5")
        ra = asyncio.create_task(a.execute(f"UPDATE {table} SET n = 2 WHERE id = 5"))
        await asyncio.sleep(0.1)
        rb = asyncio.create_task(b.execute(f"UPDATE {table} SET n = 2 WHERE id = 4"))
        results = await asyncio.wait_for(
            asyncio.gather(ra, rb, return_exceptions=True), 10
        )  # deadlock_timeout (1 s) picks a victim
        assert any(isinstance(x, asyncpg.DeadlockDetectedError) for x in results), results
    finally:
        a.terminate()  # closing flushes the sessions' statistics
        b.terminate()
    data = await until(
        probe, lambda d: d["totals"]["deadlocks"] >= before["deadlocks"] + 1, timeout=12
    )
    assert data["totals"]["rollbacks"] >= before["rollbacks"] + 6
    assert set(data["rates"]) == {
        "commits", "rollbacks", "deadlocks", "conflicts", "temp_files", "temp_bytes"
    }  # fmt: skip
    assert all(v >= 0 for v in data["rates"].values())
    await probe.close()


async def test_server_goes_away_and_comes_back(own_pg) -> None:
    ps = ProbeSet([PostgresProbe(own_pg.dsn, interval=0.2, timeout=1.0)])

    def wait_for(ok: bool, timeout: float) -> Any:
        return wait_for_reading(ps, "postgres", ok, timeout)

    await ps.start()
    try:
        await wait_for(True, 5)
        await asyncio.to_thread(own_pg.stop)
        await wait_for(False, 5)
        r = ps.latest()["postgres"]
        assert r.error and ":" in r.error
        assert "will" in r.error or "check" in r.error  # it says what to do
        assert r.data["failures"] >= 1
        await asyncio.to_thread(own_pg.start)
        await wait_for(True, 10)  # it recovered on its own
        assert ps.latest()["postgres"].data["connections"] >= 0
    finally:
        await ps.stop()


async def test_permission_errors_say_grant_pg_monitor(pg_dsn: str, run_id: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    role = f"loadtop_nopriv_{run_id}"
    await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
    c = await asyncpg.connect(with_user(pg_dsn, role))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as ei:
            await c.fetch("SELECT * FROM pg_authid")
        msg = PostgresProbe(pg_dsn).describe(ei.value)
        assert msg.startswith("permission denied for table pg_authid: grant pg_monitor")
    finally:
        await c.close()
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


def test_tree_roots_outside_rows_and_undetected_cycles() -> None:
    def b(pid: int, by: list[int], age: float = 1.0) -> dict:
        return {"pid": pid, "state": "active", "blocked_by": by, "state_age_s": age,
                "xact_age_s": age, "application_name": f"w{pid}", "query": ""}  # fmt: skip

    # a prepared transaction (pid 0) blocks 10; 10 blocks 11
    backends = {10: b(10, [0], 5), 11: b(11, [10], 2)}
    tree = blocking_tree(backends, backends)
    assert len(tree) == 1
    assert tree[0]["root"]["pid"] == 0
    assert tree[0]["root"]["state"] == "prepared transaction"
    assert tree[0]["depth"] == 2 and tree[0]["waiting_count"] == 2

    # 20 and 21 wait on each other (deadlock not yet detected); 22 waits on 21
    backends = {20: b(20, [21], 3), 21: b(21, [20], 9), 22: b(22, [21], 1)}
    tree = blocking_tree(backends, backends)
    assert len(tree) == 1
    assert tree[0]["root"]["pid"] == 21  # the oldest transaction stands as root
    assert tree[0]["waiting_count"] == 2

    # two independent trees: the one waiting longest comes first
    backends = {
        1: {"pid": 1, "state": "idle in transaction", "query": "x"},
        2: b(2, [1], 0.5),
        3: {"pid": 3, "state": "active", "query": "y"},
        4: b(4, [3], 7.0),
        5: b(5, [3], 0.1),
    }
    waiters = {k: v for k, v in backends.items() if v.get("blocked_by")}
    tree = blocking_tree(backends, waiters)
    assert [n["root"]["pid"] for n in tree] == [3, 1]
    assert [n["waiting_count"] for n in tree] == [2, 1]
