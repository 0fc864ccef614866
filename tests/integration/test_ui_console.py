"""The live console over a real Session on a real PostgreSQL: what only a
real session can show (load hung behind a real lock stopped within a second,
a backend really cancelled and terminated, the recording really closed).

Each test starts a Session on its own thread (as `loadtop run` does), drives
the app with Pilot, and asserts on the engine's state (through
`session.engine`) and on what the panes show. The keys and the layout are
tested without a server in tests/unit/test_ui_live.py (a fake SessionControl
and synthetic ticks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from app.engine.engine import EngineConfig
from app.scenario import Context, Scenario
from app.session.runner import RunConfig, Session
from app.ui.main import LiveConsole, make_live_app
from app.ui.probe_panes import PostgresPane
from app.ui.screens import BlockerScreen, ConfirmScreen
from app.ui.textshot import screen_text

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Sleepy(Scenario):
    """A cheap operation (10 ms on the server), so the tests stay light."""

    name = "sleepy"
    needs = ("postgres",)
    writes = False

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute("SELECT pg_sleep(0.01)")


class RowBump(Scenario):
    """Every operation updates row 1: hangs while a test holds that row lock."""

    name = "row-bump"
    needs = ("postgres",)

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute(f'CREATE TABLE "{ctx.prefix}".t (id int PRIMARY KEY, n int)')
        await ctx.conn.execute(f'INSERT INTO "{ctx.prefix}".t VALUES (1, 0)')

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute(f'UPDATE "{ctx.prefix}".t SET n = n + 1 WHERE id = 1')


async def until(pilot: Pilot[Any], cond: Callable[[], Any], timeout: float = 8.0) -> float:
    """Wait (letting the app run) until cond() is true; returns the seconds taken."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await pilot.pause(0.02)
    return time.monotonic() - t0


@contextlib.asynccontextmanager
async def row_held(pg_dsn: str, prefix: str, app_name: str = "test-holder") -> AsyncIterator[Any]:
    """A connection holding RowBump's row lock in an open transaction: every
    worker's UPDATE queues behind it until the transaction ends or the
    connection closes (on leaving)."""
    holder = await asyncpg.connect(pg_dsn, server_settings={"application_name": app_name})
    try:
        await holder.execute("BEGIN")
        await holder.execute(f'UPDATE "{prefix}".t SET n = n WHERE id = 1')
        yield holder
    finally:
        try:  # the test may have had the tool terminate it
            await asyncio.wait_for(holder.close(), 5)
        except Exception:
            holder.terminate()


async def open_blocker(live: Live, pilot: Pilot[Any], pid: int) -> None:
    """Wait for backend `pid` in the blocking tree, select it, press enter."""
    pane = live.app.query_one(PostgresPane)
    await until(pilot, lambda: f"r{pid}" in pane.backends, timeout=10)
    table = live.app.query_one("#blockers", DataTable)
    table.focus()
    table.move_cursor(row=table.get_row_index(f"r{pid}"))
    await pilot.press("enter")
    assert isinstance(live.app.screen, BlockerScreen)


class Live:
    def __init__(self, session: Session, app: LiveConsole) -> None:
        self.session = session
        self.app = app

    @property
    def engine(self) -> Any:
        assert self.session.engine is not None
        return self.session.engine

    def screen(self) -> str:
        return screen_text(self.app)

    def events(self) -> list[tuple[str, str]]:
        return [(e.kind, e.source) for t in list(self.session.ticks) for e in t.events]


async def start(
    pg_dsn: str,
    tmp_path: Path,
    scenario: type[Scenario] = Sleepy,
    **engine: Any,
) -> Live:
    cfg = RunConfig(
        scenarios=[(scenario, 1.0)],
        pg_dsn=pg_dsn,
        engine=EngineConfig(end_with_plan=False, max_concurrency=64, **engine),
        record=str(tmp_path / "run.jsonl"),
        probe_intervals={"postgres": 0.5},
    )
    session = Session(cfg)
    app = make_live_app(session, export_dir=str(tmp_path))
    await asyncio.to_thread(session.start_thread)
    assert session.error is None, session.error
    return Live(session, app)


@pytest.fixture
async def stop_later() -> AsyncIterator[list[Session]]:
    sessions: list[Session] = []
    yield sessions
    for s in sessions:
        s.stop("test over")
        await asyncio.to_thread(s.wait, 60)


async def test_panic_stops_hung_load_within_a_second_and_resume_asks(
    pg_dsn: str, tmp_path: Path, stop_later: list[Session]
) -> None:
    live = await start(pg_dsn, tmp_path, RowBump, concurrency=8)
    stop_later.append(live.session)
    prefix = live.session.prefixes["row-bump"]
    async with row_held(pg_dsn, prefix) as holder, live.app.run_test(size=(120, 40)) as pilot:
        # every worker is now stuck in its UPDATE, behind our lock
        await until(pilot, lambda: live.engine.live_workers == 8)
        await until(pilot, lambda: "waiting 8" in live.screen(), timeout=10)
        t0 = time.monotonic()
        await pilot.press("x")
        while live.engine.live_workers:
            await asyncio.sleep(0.005)
        took = time.monotonic() - t0
        assert took < 1.0, f"panic took {took:.3f} s"
        assert live.engine.panicked and live.engine.paused
        await until(pilot, lambda: "PANIC — load stopped" in live.screen())
        await holder.execute("ROLLBACK")
        await until(pilot, lambda: "waiting 0" in live.screen(), timeout=10)
        # resuming asks first; "n" keeps the load stopped
        await pilot.press("p")
        assert isinstance(live.app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause(0.3)
        assert live.engine.paused and live.engine.live_workers == 0
        await pilot.press("p", "y")
        await until(pilot, lambda: not live.engine.paused and live.engine.live_workers == 8)
        assert ("panic", "key") in live.events() or live.engine.panicked is False


async def test_panic_also_ends_the_statements_on_the_server(
    pg_dsn: str, tmp_path: Path, stop_later: list[Session]
) -> None:
    live = await start(pg_dsn, tmp_path, RowBump, concurrency=4)
    stop_later.append(live.session)
    prefix = live.session.prefixes["row-bump"]
    async with row_held(pg_dsn, prefix) as holder, live.app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: live.engine.live_workers == 4)
        await asyncio.sleep(0.5)
        await pilot.press("x")
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'loadtop:row-bump%'"
            " AND wait_event_type = 'Lock'"
        )
        for _ in range(40):
            if not await holder.fetchval(sql):
                break
            await asyncio.sleep(0.05)
        assert await holder.fetchval(sql) == 0


async def test_blocker_details_cancel_and_terminate(
    pg_dsn: str, tmp_path: Path, stop_later: list[Session]
) -> None:
    live = await start(pg_dsn, tmp_path, RowBump, concurrency=2)
    stop_later.append(live.session)
    prefix = live.session.prefixes["row-bump"]
    async with row_held(pg_dsn, prefix) as holder, live.app.run_test(size=(120, 40)) as pilot:
        pid = holder.get_server_pid()
        await open_blocker(live, pilot, pid)
        text = live.screen()
        assert f"backend {pid}" in text and "root blocker" in text and "test-holder" in text
        assert "waiting behind it" in text
        await pilot.press("c")
        assert isinstance(live.app.screen, ConfirmScreen)
        await pilot.press("n")  # no: nothing happens
        assert isinstance(live.app.screen, BlockerScreen)
        await pilot.press("c", "y")
        await until(pilot, lambda: f"cancelled backend {pid}" in live.screen())
        await pilot.press("k", "y")
        await until(pilot, lambda: f"terminated backend {pid}" in live.screen())
        alive = await asyncio.to_thread(_backend_alive, pg_dsn, pid)
        assert not alive
        await pilot.press("escape")
        # the lock is gone with its holder: the load runs again
        done = live.engine.runs[0].win.ok
        await until(
            pilot, lambda: live.engine.runs[0].win.ok != done or "waiting 0" in live.screen()
        )
        await until(pilot, lambda: ("backend-terminate", "key") in live.events())


def _backend_alive(dsn: str, pid: int) -> bool:
    async def go() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            for _ in range(40):
                n = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
                if not n:
                    return False
                await asyncio.sleep(0.05)
            return True
        finally:
            await conn.close()

    return asyncio.run(go())


async def test_quit_stops_the_session_and_closes_the_recording(
    pg_dsn: str, tmp_path: Path, stop_later: list[Session]
) -> None:
    live = await start(pg_dsn, tmp_path, concurrency=2)
    stop_later.append(live.session)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(live.session.ticks) >= 1)
        await pilot.press("q")
        await until(pilot, lambda: live.session.wait(0), timeout=30)
        await pilot.pause(0.2)
    assert live.app.return_code == 0 and live.app.return_value == 0
    assert live.session.outcome is not None and live.session.outcome.reason == "quit"
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "end"
