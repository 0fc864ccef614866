"""The headless line and the per-step report section, from ticks built by hand
and from real probe readings round-tripped through the recording's JSON."""

from __future__ import annotations

import json

import pytest

from app.probes.base import ProbeSet
from app.probes.postgres import PostgresProbe
from app.probes.redis import RedisProbe
from app.probes.summary import format_reading_line, probe_report_section
from app.tick import Reading, Tick, steps, tick_from_json, tick_to_json


def pg(t: float, *, active: int, waiting: int, conns: int, deadlocks: int, tree=None) -> Reading:
    return Reading("postgres", t, True, 3.0, {
        "max_connections": 300, "connections": conns,
        "by_state": {"active": active, "idle": 2, "idle in transaction": 1},
        "waiting": waiting, "blocking_tree": tree or [], "oldest_xact_s": 4.0,
        "totals": {"deadlocks": deadlocks, "rollbacks": deadlocks * 2, "commits": 100},
        "rates": {},
    })  # fmt: skip


def rd(t: float, *, ops: float, depth: int, locks=None, mem: int = 10 * 2**20) -> Reading:
    return Reading("redis", t, True, 2.0, {
        "ops_per_sec": ops, "used_memory": mem, "maxmemory": 0, "connected_clients": 5,
        "evicted_keys_delta": 0, "rejected_connections_delta": 0,
        "locks": locks or [],
        "queues": [{"name": "emails", "layout": "rq", "depth": depth, "in_flight": 2, "failed": 1}],
    })  # fmt: skip


def pods(t: float, *, cpu: float, restarts: int, reason: str | None) -> Reading:
    return Reading("pods", t, True, 9.0, {"source": "kubernetes", "containers": [
        {"pod": "web-1", "container": "app", "cpu_cores": cpu, "memory_bytes": 200 * 2**20,
         "cpu_limit_cores": 0.5, "memory_limit_bytes": 256 * 2**20, "restarts": restarts,
         "last_reason": reason, "ready": True},
    ]})  # fmt: skip


def tick(i: int, conc: int, readings: dict[str, Reading]) -> Tick:
    return Tick(index=i, t=1000.0 + i, elapsed=float(i + 1), interval=1.0, mode="workers",
                target_concurrency=conc, concurrency=conc, readings=readings)  # fmt: skip


TREE = [{
    "root": {"pid": 4242, "application_name": "loadtop:checkout:w3", "state": "idle in transaction",
             "xact_age_s": 12.5, "query": "UPDATE stock SET n = n - 1 WHERE sku = $1"},
    "waiters": [], "depth": 2, "waiting_count": 7,
}]  # fmt: skip


def timeline() -> list[Tick]:
    ticks = []
    for i in range(3):  # step 1: 4 workers
        ticks.append(tick(i, 4, {
            "postgres": pg(1000 + i, active=3, waiting=0, conns=6, deadlocks=1),
            "redis": rd(1000 + i, ops=900 + i, depth=10),
            "pods": pods(1000, cpu=0.1, restarts=1, reason="Error"),
        }))  # fmt: skip
    for i in range(3, 7):  # step 2: 16 workers; locks pile up, a deadlock, an OOM kill
        ticks.append(tick(i, 16, {
            "postgres": pg(1000 + i, active=14, waiting=7 if i == 5 else 2, conns=20,
                           deadlocks=2, tree=TREE if i == 5 else None),
            "redis": rd(1000 + i, ops=4100, depth=10 + 30 * (i - 3), locks=[
                {"key": "lock:orders:7", "holder": "a1b2c3", "pttl_ms": None,
                 "age_s": float(i - 2), "no_ttl": True}]),
            "pods": pods(1005, cpu=0.48, restarts=2, reason="OOMKilled"),
        }))  # fmt: skip
    ticks.append(tick(7, 16, {"postgres": Reading("postgres", 1007, False, 1000.0, {},
                                                  "connection refused: check the server")}))  # fmt: skip
    return ticks


def test_steps_are_runs_of_the_same_target() -> None:
    ticks = timeline()
    assert [(s.concurrency, len(s.ticks)) for s in steps(ticks)] == [(4, 3), (16, 5)]
    back = [*ticks, tick(8, 4, {})]
    assert [s.concurrency for s in steps(back)] == [4, 16, 4]


def test_headless_line() -> None:
    t = timeline()[5]
    assert format_reading_line(t.readings) == (
        "pg 14 act/7 wait/300 max · redis 4.1k ops/s · q max 70 · pods cpu 0.48"
    )
    assert format_reading_line(timeline()[7].readings) == "pg ERR"
    assert format_reading_line({}) == ""


def test_report_section_per_step() -> None:
    md = probe_report_section(timeline())
    s1, s2 = md.split("### Step 2")
    assert "### Step 1: concurrency 4" in s1 and ": concurrency 16" in s2
    assert "peak 6 connections of 300 max (2%)" in s1
    assert "Deadlocks: 0" in s1 and "lock-wait chain" not in s1
    assert "peak 20 connections of 300 max (7%)" in s2
    assert "peak 14 active, 7 waiting" in s2
    assert "2 deep, 7 waiting behind pid 4242 (loadtop:checkout:w3, idle in transaction" in s2
    assert "`UPDATE stock SET n = n - 1 WHERE sku = $1`" in s2
    assert "Deadlocks: 1; rollbacks: 2" in s2  # the delta from step 1's last reading
    assert "peak 4.1k ops/s" in s2 and "peak 902 ops/s" in s1
    assert "| `lock:orders:7` | `a1b2c3` | 4.0s | 1 | **none** |" in s2
    assert "| `emails` | rq | 100 | +90 (+22.5/s) | 2 | 1 |" in s2
    assert "1 restarts, 1 OOM kills in this step" in s2
    assert "0.48 (96%)" in s2 and "200.0 MiB (78%)" in s2
    assert "postgres probe failing in 1 of 5 ticks: connection refused: check the server" in s2
    assert probe_report_section([tick(0, 1, {})]) == ""


@pytest.mark.integration
async def test_real_readings_survive_the_recording(pg_dsn: str, redis_url: str) -> None:
    ps = ProbeSet([PostgresProbe(pg_dsn), RedisProbe(redis_url)])
    try:
        first = await ps.poll_once()
        second = await ps.poll_once()
    finally:
        await ps.stop()
    assert all(r.ok for r in second.values()), second
    ticks = [tick(0, 2, first), tick(1, 2, second)]
    back = [tick_from_json(json.loads(json.dumps(tick_to_json(t)))) for t in ticks]
    assert back[1].readings["postgres"].data == json.loads(json.dumps(second["postgres"].data))
    line = format_reading_line(back[1].readings)
    assert line.startswith("pg ") and " wait/" in line and "redis " in line
    md = probe_report_section(back)
    assert "### Step 1: concurrency 2" in md and "- Postgres: peak" in md and "- Redis: peak" in md


def undeclared(data: dict, td: type) -> set[str]:
    return set(data) - set(td.__annotations__)


@pytest.mark.integration
async def test_readings_use_only_the_schema_keys(pg_dsn: str, redis_url: str, run_id: str) -> None:
    """Detectors and the console read `app.probes.schema`: a key a probe fills
    must be declared there."""
    import asyncio

    import asyncpg
    import redis.asyncio as aioredis

    from app.probes import schema

    holder = await asyncpg.connect(pg_dsn, server_settings={"application_name": "loadtop:s:w1"})
    waiter = await asyncpg.connect(pg_dsn, server_settings={"application_name": "loadtop:s:w2"})
    r = aioredis.Redis.from_url(redis_url)
    await holder.execute(f"CREATE TABLE schema_{run_id} (id int PRIMARY KEY)")
    await holder.execute(f"INSERT INTO schema_{run_id} VALUES (1)")
    await r.set(f"lock:schema:{run_id}", "tok", px=10_000)
    await r.xadd(f"stream:{run_id}", {"a": 1})
    await r.xgroup_create(f"stream:{run_id}", "g", id="0")
    await r.sadd("rq:queues", f"rq:queue:schema{run_id}")
    await r.rpush(f"rq:queue:schema{run_id}", "job")
    ps = ProbeSet([PostgresProbe(pg_dsn), RedisProbe(redis_url)])
    task = None
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(f"UPDATE schema_{run_id} SET id = 1")
        task = asyncio.create_task(waiter.execute(f"UPDATE schema_{run_id} SET id = 1"))
        for _ in range(50):
            got = await ps.poll_once()
            if got["postgres"].data.get("waiting"):
                break
            await asyncio.sleep(0.1)
        pg_d, rd_d = got["postgres"].data, got["redis"].data
        assert pg_d["blocking_tree"] and rd_d["locks"] and rd_d["queues"]
        assert undeclared(pg_d, schema.PgReading) == set()
        node = pg_d["blocking_tree"][0]
        assert undeclared(node, schema.PgBlockNode) == set()
        for b in [node["root"], *node["waiters"], *pg_d["idle_in_tx"], pg_d["oldest_xact"]]:
            assert undeclared(b, schema.PgBackend) == set()
        assert undeclared(rd_d, schema.RedisReading) == set()
        for lk in rd_d["locks"]:
            assert undeclared(lk, schema.RedisLock) == set()
        for q in rd_d["queues"]:
            assert undeclared(q, schema.RedisQueue) == set()
        await tx.rollback()
    finally:
        if task:
            task.cancel()
        await ps.stop()
        holder.terminate()
        waiter.terminate()
        admin = await asyncpg.connect(pg_dsn)
        await admin.execute(f"DROP TABLE IF EXISTS schema_{run_id}")
        await admin.close()
        await r.delete(f"lock:schema:{run_id}", f"stream:{run_id}", f"rq:queue:schema{run_id}")
        await r.srem("rq:queues", f"rq:queue:schema{run_id}")
        await r.aclose()


def test_report_queue_table_has_age_and_consumption_and_holders_whole() -> None:
    holder = "worker-host-42:pid-7731:6f1c0e4a9b2d4c3e8f7a6b5c4d3e2f1a"
    ticks = []
    for i in range(4):
        r = rd(1000 + i, ops=10, depth=100 + 50 * i,
               locks=[{"key": "lock:pay", "holder": holder, "age_s": float(i), "pttl_ms": 500}])  # fmt: skip
        q = dict(r.data["queues"][0], oldest_age_s=30.0 + i, consumed_per_s=0.0 if i else None)
        data = dict(r.data, queues=[q], hints=["1 key(s) look like queues or locks but ..."])
        ticks.append(tick(i, 4, {"redis": Reading("redis", r.t, True, 2.0, data)}))
    md = probe_report_section(ticks)
    assert "oldest age (peak)" in md and "consumed /s (mean)" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| `emails`"))
    assert row.rstrip().endswith("| 33.0s | 0 |"), row
    assert holder in md  # whole, not cut to 20 characters
    assert "look like queues or locks" in md
