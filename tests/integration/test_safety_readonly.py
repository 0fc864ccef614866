"""Read-only where it should be, on real servers: --readonly refuses writing
scenarios (one line, exit 2, before anything starts), creates no schema, makes
the server itself refuse writes on the load's sessions, and disables backend
cancel/terminate; the probes never write (the Postgres probe's session is
read-only, and every command the Redis probe sends, seen with MONITOR, is a
read command); `loadtop watch` watches a target someone else is loading,
with no load and nothing created."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import pytest
import redis as syncredis

from app.cli import main
from app.engine.engine import EngineConfig
from app.probes.base import run_poll
from app.probes.postgres import PostgresProbe
from app.probes.redis import RedisProbe
from app.scenario import Context, Scenario
from app.session.runner import RunConfig, Session
from scenarios.postgres import PgSelect

pytestmark = [pytest.mark.integration]

CLI = [sys.executable, "-m", "app.cli"]


class SneakyWriter(Scenario):
    """Declares itself read-only but writes: the server must refuse."""

    name = "sneaky"
    needs = ("postgres",)
    writes = False

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute("CREATE TEMP TABLE IF NOT EXISTS sneaky (id int)")


def test_readonly_refuses_a_writing_scenario_before_anything_starts(capsys, tmp_path) -> None:
    assert main(["run", "--headless", "-s", "stock-reservation", "--readonly"]) == 2
    err = capsys.readouterr().err.strip()
    assert "writes to its target and --readonly is set" in err
    assert len(err.splitlines()) == 1, err  # no embedded server was started
    (tmp_path / "loadtop.toml").write_text("readonly = true\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["run", "--headless", "-s", "hot-counter"]) == 2
    finally:
        os.chdir(cwd)
    assert "--readonly" in capsys.readouterr().err


async def test_readonly_run_creates_nothing_and_the_server_refuses_writes(pg_dsn: str) -> None:
    cfg = RunConfig(
        scenarios=[(PgSelect, 1.0), (SneakyWriter, 1.0)], pg_dsn=pg_dsn, readonly=True,
        probes=False, engine=EngineConfig(concurrency=4, duration=1.5, interval=0.5),
    )  # fmt: skip
    session = Session(cfg)
    run = asyncio.create_task(session.run())
    conn = await asyncpg.connect(pg_dsn)
    try:
        seen_schemas = 0
        while not run.done():
            seen_schemas += await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1",
                f"loadtop\\_{cfg.run_id}%",
            )
            await asyncio.sleep(0.05)
        await run
    finally:
        await conn.close()
    assert seen_schemas == 0, "a read-only run created its schema"
    errors: dict[str, int] = {}
    ok = {}
    for t in session.ticks:
        for s in t.scenarios:
            ok[s.name] = ok.get(s.name, 0) + s.ok
            for k, v in s.errors.items():
                errors[k] = errors.get(k, 0) + v
    assert ok["pg-select"] > 100
    assert ok.get("sneaky", 0) == 0
    assert any(k.startswith("25006") for k in errors), errors  # read_only_sql_transaction


def test_readonly_never_cancels_or_terminates_a_backend(pg_dsn: str) -> None:
    async def victim_pid() -> tuple[asyncpg.Connection, int]:
        c = await asyncpg.connect(pg_dsn)
        return c, await c.fetchval("SELECT pg_backend_pid()")

    loop = asyncio.new_event_loop()
    victim, pid = loop.run_until_complete(victim_pid())
    cfg = RunConfig(scenarios=[(PgSelect, 1.0)], pg_dsn=pg_dsn, readonly=True, probes=False,
                    engine=EngineConfig(concurrency=1, duration=30))  # fmt: skip
    session = Session(cfg)
    session.start_thread()
    try:
        assert session.error is None, session.error
        for call in (session.cancel_backend, session.terminate_backend):
            msg = call(pid)
            assert "read-only" in msg, msg
    finally:
        session.stop()
        assert session.wait(30)
    alive = loop.run_until_complete(victim.fetchval("SELECT 1"))
    assert alive == 1, "the backend was touched"
    loop.run_until_complete(victim.close())
    loop.close()


async def test_postgres_probe_session_is_read_only(pg_dsn: str) -> None:
    probe = PostgresProbe(pg_dsn)
    try:
        r = await run_poll(probe)
        assert r.ok, r.error
        conn = probe._conn
        assert conn is not None
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TABLE loadtop_probe_must_not_write (id int)")
    finally:
        await probe.close()


def test_redis_probe_sends_only_read_commands(own_redis) -> None:
    r = syncredis.Redis(host="127.0.0.1", port=own_redis.port, decode_responses=True)
    # something for it to look at: locks, a queue, a stream
    r.set("lock:order:1", "worker-7", px=30_000)
    r.rpush("celery", *range(20))
    r.xadd("jobs", {"a": 1})
    commands: list[str] = []
    stop = threading.Event()

    def monitor() -> None:
        with r.monitor() as m:
            for cmd in m.listen():
                text = cmd.get("command", "")
                if text:
                    commands.append(text.split()[0].upper())
                if stop.is_set():
                    return

    t = threading.Thread(target=monitor, daemon=True)
    t.start()
    time.sleep(0.3)

    async def polls() -> None:
        probe = RedisProbe(own_redis.url, lock_patterns=["lock:*"], queue_patterns=["*"])
        try:
            for _ in range(3):
                reading = await run_poll(probe)
                assert reading.ok, reading.error
        finally:
            await probe.close()

    asyncio.run(polls())
    time.sleep(0.3)
    stop.set()
    r.ping()  # wakes the monitor loop
    t.join(5)
    seen = set(commands) - {"PING"}
    assert len(seen) >= 3, commands
    writes = []
    for name in seen:
        info = r.execute_command("COMMAND", "INFO", name)  # parsed: {name: {...}}
        entry = next(iter(info.values()), None) if isinstance(info, dict) else None
        flags = set((entry or {}).get("flags", []))
        assert entry, f"unknown command {name}"
        if "write" in flags:
            writes.append(name)
    assert not writes, f"the Redis probe sent write commands: {writes}"
    r.close()


def test_watch_watches_a_target_someone_else_loads(own_pg, tmp_path: Path) -> None:
    rec = tmp_path / "watch.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    other = subprocess.Popen(
        [*CLI, "run", "--headless", "-s", "hot-counter", "--pg", own_pg.dsn, "-c", "5",
         "-d", "12s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert other.stdout is not None
        while "ops/s" not in other.stdout.readline():
            assert other.poll() is None, other.stderr.read() if other.stderr else ""
        w = subprocess.run(
            [*CLI, "watch", "--headless", "--pg", own_pg.dsn, "-d", "3s", "--interval", "0.5s",
             "--record", str(rec), "--export", str(tmp_path / "watch.md")],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    finally:
        other.terminate()
        other.wait(30)
    assert "Traceback" not in w.stderr
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["load"]["mode"] == "watch"
    assert lines[-1]["type"] == "end"
    ticks = [x for x in lines if x["type"] == "tick"]
    # a watch is judged on what it saw: five workers on one hot row may well raise
    # a critical lock anomaly (then FAIL, 1); anything else must be a PASS (0)
    critical = {a["kind"] for t in ticks for a in t.get("anomalies", [])
                if a.get("severity") == "critical"}  # fmt: skip
    assert w.returncode == (1 if critical else 0), (critical, w.stdout[-500:], w.stderr)
    assert lines[-1]["exit_code"] == w.returncode
    assert lines[-1]["verdict"] == ("FAIL" if critical else "PASS")
    assert len(ticks) >= 3
    assert all(not t.get("scenarios") for t in ticks), "a watch ran load"
    pg = [t["readings"]["postgres"] for t in ticks if "postgres" in t.get("readings", {})]
    assert pg and all(x["ok"] for x in pg)
    # it saw the other tool's five workers
    assert max(x["data"]["connections"] for x in pg) >= 5
    tick_lines = [ln for ln in w.stdout.splitlines() if "watch" in ln]
    assert len(tick_lines) >= 3
    # the watch's report renders
    rep = subprocess.run([*CLI, "report", str(rec)], capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "watch.md").exists()
    # and the watch created nothing on the target
    schemas = asyncio.run(_schemas(own_pg.dsn, lines[0]["run_id"]))
    assert schemas == 0


async def _schemas(dsn: str, run_id: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1", f"loadtop\\_{run_id}%"
        )
    finally:
        await conn.close()


def test_watch_of_an_unreachable_target_is_one_line(capsys) -> None:
    code = main(["watch", "--headless", "--pg", "postgresql://postgres@127.0.0.1:1/x", "-d", "1s"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "cannot watch postgres" in err and "connection refused" in err
    assert len(err.splitlines()) == 1, err
