"""--processes N: workers in worker processes, steered and collected by the
session's engine. Real PostgreSQL: every operation a worker process completes
is in exactly one tick, the hard cap holds across processes (counted in
pg_stat_activity), panic reaches every process, a lost worker process is a
reading and its share moves to the others, and a killed main process takes
its worker processes (and their backends) with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from app.engine.engine import EngineConfig
from app.engine.procs import split_shares
from app.scenario import Context, Scenario, load_scenarios
from app.session.runner import RunConfig, Session
from tests.detect_support import drive, wait_ticks
from tests.helpers import totals

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_split_shares_deals_round_robin_within_caps() -> None:
    assert split_shares([5], [3, 3]) == [[3], [2]]
    assert split_shares([3, 3], [4, 4]) == [[2, 1], [1, 2]]  # within one of each other
    assert split_shares([10], [3, 2]) == [[3], [2]]  # never above a cap
    per = split_shares([7, 4, 9], [7, 7, 6])
    assert [sum(p) for p in per] == [7, 7, 6]
    assert [sum(p[i] for p in per) for i in range(3)] == [7, 4, 9]


def cfg(pg_dsn: str, scenario: str, **engine: Any) -> RunConfig:
    engine.setdefault("duration", None)
    return RunConfig(
        scenarios=[(c, 1.0) for c in load_scenarios(scenario)],
        pg_dsn=pg_dsn,
        engine=EngineConfig(**engine),
        probes=False,
        processes=2,
    )


async def loadtop_backends(conn: asyncpg.Connection, scenario: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
        f"loadtop:{scenario}:w%",
    )
    return [r[0] for r in rows]


async def test_every_operation_lands_in_one_tick_and_the_cap_holds(pg_dsn: str) -> None:
    """hot-counter from two processes: no lost update (its verify), and never
    more than --max-concurrency backends, whatever is asked."""
    session = Session(cfg(pg_dsn, "hot-counter", concurrency=4, max_concurrency=6))
    seen: dict[str, Any] = {"max": 0, "names": set()}
    mon = await asyncpg.connect(pg_dsn)

    async def body(s: Session) -> None:
        await wait_ticks(s, 1)

        async def watch(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                names = await loadtop_backends(mon, "hot-counter")
                seen["max"] = max(seen["max"], len(names))
                seen["names"].update(names)
                await asyncio.sleep(0.02)

        await watch(1.5)
        s.set_concurrency(20)  # capped at 6 across both processes
        await watch(2.5)
        s.set_concurrency(2)
        await watch(1.5)
        s.set_concurrency(6)
        await watch(1.5)

    try:
        await drive(session, body)
    finally:
        await mon.close()
    assert session.outcome is not None and session.outcome.invariants == {}
    ok, failed, errors = totals(session)
    assert ok > 200 and failed == 0, errors
    assert 0 < seen["max"] <= 6, seen["max"]
    # both processes ran workers: the second's numbers start at its slice (3)
    idx = {int(n.rsplit(":w", 1)[1]) for n in seen["names"]}
    assert idx & {0, 1, 2} and idx & {3, 4, 5}, idx
    achieved = [t.concurrency for t in session.ticks]
    assert 6 in achieved and 2 in achieved, achieved
    assert max(achieved) <= 6


class Counted(Scenario):
    """Inserts one row per operation: the rows are the truth the ticks must match."""

    name = "counted"
    needs = ("postgres",)
    processes_ok = True

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute(f'CREATE TABLE "{ctx.prefix}".ops (w int)')

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute(f'INSERT INTO "{ctx.prefix}".ops VALUES ($1)', ctx.worker)
        ctx.count("rows")

    async def verify(self, ctx: Context) -> list[str]:
        assert ctx.conn is not None
        n = await ctx.conn.fetchval(f'SELECT count(*) FROM "{ctx.prefix}".ops')
        Counted.rows_seen = n  # type: ignore[attr-defined]
        return []


async def test_ticks_match_the_rows_written_by_both_processes(pg_dsn: str) -> None:
    session = Session(
        RunConfig(
            scenarios=[(Counted, 1.0)], pg_dsn=pg_dsn, probes=False, processes=2,
            engine=EngineConfig(concurrency=6, duration=3.0),
        )
    )  # fmt: skip
    await session.run()
    ok, failed, _ = totals(session)
    counted = sum(t.counters().get("rows", 0) for t in session.ticks)
    # the final verify ran after every worker process had drained
    assert ok == Counted.rows_seen == counted > 100  # type: ignore[attr-defined]
    assert failed == 0
    assert session.ticks[-1].is_drain


async def test_panic_reaches_every_process(pg_dsn: str) -> None:
    session = Session(cfg(pg_dsn, "hot-counter", concurrency=6))
    holder = await asyncpg.connect(pg_dsn)
    took: dict[str, float] = {}

    async def body(s: Session) -> None:
        await wait_ticks(s, 1)
        prefix = s.prefixes["hot-counter"]
        await holder.execute("BEGIN")
        await holder.execute(f'UPDATE "{prefix}".counter SET n = n WHERE id = 1')
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE"
            " 'loadtop:hot-counter:w%' AND wait_event_type = 'Lock'"
        )
        async with asyncio.timeout(10):
            while await holder.fetchval(sql) < 6:
                await asyncio.sleep(0.05)
        t0 = time.monotonic()
        s.panic()
        async with asyncio.timeout(5):
            while await holder.fetchval(sql):
                await asyncio.sleep(0.02)
        took["s"] = time.monotonic() - t0
        await holder.execute("ROLLBACK")

    try:
        await drive(session, body)
    finally:
        await holder.close()
    assert took["s"] < 1.0, took
    assert any(e.kind == "panic" for t in session.ticks for e in t.events)


async def test_a_lost_worker_process_is_an_event_and_its_share_moves(pg_dsn: str) -> None:
    session = Session(cfg(pg_dsn, "pg-select", concurrency=4))
    marks: dict[str, int] = {}

    async def body(s: Session) -> None:
        await wait_ticks(s, 1)
        assert s.procs is not None
        victim = s.procs.pids[1]
        os.kill(victim, signal.SIGKILL)
        marks["kill"] = len(s.ticks)
        async with asyncio.timeout(10):
            while len(s.ticks) < marks["kill"] + 4:
                await asyncio.sleep(0.05)

    await drive(session, body)
    events = [e for t in session.ticks for e in t.events if e.kind == "worker-process-lost"]
    assert events and "process 1" in events[0].note, events
    after = session.ticks[marks["kill"] + 2 :]
    # the survivor took the whole share (its slice of the default cap is 128)
    assert after and all(t.concurrency == 4 for t in after[:-1]), [t.concurrency for t in after]
    assert all(t.ok > 0 for t in after[:-1])


def test_killing_the_main_process_ends_its_worker_processes(pg_dsn: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select", "--pg", pg_dsn,
         "-c", "4", "--processes", "2", "--duration", "60s", "--no-probes"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the first tick: the worker processes are running
        kids = psutil.Process(proc.pid).children(recursive=True)
        workers = [k for k in kids if "multiprocessing" in " ".join(k.cmdline())]
        assert len(workers) >= 2, [k.cmdline() for k in kids]
        proc.kill()
        proc.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, [p.pid for p in alive]

        async def backends() -> list[str]:
            conn = await asyncpg.connect(pg_dsn)
            try:
                for _ in range(50):
                    names = await loadtop_backends(conn, "pg-select")
                    if not names:
                        return names
                    await asyncio.sleep(0.1)
                return names
            finally:
                await conn.close()

        assert asyncio.run(backends()) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


async def test_open_model_rate_is_split_and_never_exceeded(pg_dsn: str) -> None:
    session = Session(cfg(pg_dsn, "pg-select", concurrency=8, rate=400.0, duration=4.0))
    await session.run()
    full = [t for t in session.ticks if not t.is_drain][1:]
    assert full and all(t.mode == "rate" for t in full)
    for t in full:
        # each process lays its half of the starts; together never above the rate
        assert t.completed <= 400 * t.interval * 1.05 + 2, (t.completed, t.interval)
    total = sum(t.completed for t in full) / sum(t.interval for t in full)
    assert total > 400 * 0.9, total


async def test_an_orderly_stop_loses_no_process(pg_dsn: str) -> None:
    """The worker processes exit after their final window: that is no loss."""
    session = Session(cfg(pg_dsn, "pg-select", concurrency=4, duration=2.0))
    await session.run()
    await asyncio.sleep(0.5)  # any late EOF from the exited processes is read by now
    kinds = [e.kind for t in session.ticks for e in t.events]
    assert "worker-process-lost" not in kinds, kinds
    assert session.procs is not None and session.procs.live_total() == 0
