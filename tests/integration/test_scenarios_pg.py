"""Every built-in Postgres scenario against a real server: each unsafe mode
produces its violation, each safe mode never does, and nothing is left behind."""

from __future__ import annotations

import asyncpg
import pytest

from app.scenario import Context
from tests.helpers import run_session, totals


async def _leftovers(dsn: str, run_id: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"loadtop\\_{run_id}%"
        )
        apps = await conn.fetch(
            # this database only: other runs may share the server
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1"
            " AND datname = current_database()",
            "loadtop:%",
        )
        return [r[0] for r in rows] + [r[0] for r in apps]
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("scenario", "params", "violation"),
    [
        ("stock-reservation", {"products": "2", "stock": "200"}, None),
        ("stock-reservation", {"products": "2", "stock": "200", "mode": "unsafe"}, "oversold"),
        ("hot-counter", {}, None),
        ("hot-counter", {"mode": "unsafe"}, "lost updates"),
        ("unique-ids", {"scheme": "uuid4"}, None),
        ("unique-ids", {"scheme": "timestamp"}, "id collisions"),
        ("opposite-order", {"order": "sorted"}, None),
    ],
)
async def test_invariant(pg_dsn: str, scenario: str, params: dict, violation: str | None) -> None:
    session, out = await run_session(
        scenario, pg=pg_dsn, params=params, concurrency=8, duration=2.0
    )
    total_ok = sum(t.ok for t in session.ticks)
    assert total_ok > 50
    found = [v for vs in out.invariants.values() for v in vs]
    if violation is None:
        assert found == [], found
        assert out.exit_code == 0
    else:
        assert any(violation in v for v in found), found
        assert out.exit_code == 1
    assert await _leftovers(pg_dsn, session.cfg.run_id) == []


async def test_opposite_order_deadlocks_are_counted_as_40p01(pg_dsn: str) -> None:
    session, out = await run_session("opposite-order", pg=pg_dsn, concurrency=6, duration=3.0)
    _, _, errors = totals(session)
    assert errors.get("40P01 deadlock", 0) > 0, errors
    assert out.invariants == {}  # deadlocked transactions roll back: money is conserved


async def test_pg_select_workers_are_named_per_worker(pg_dsn: str) -> None:
    import asyncio

    from app.engine.engine import EngineConfig
    from app.scenario import load_scenarios
    from app.session.runner import RunConfig, Session

    cfg = RunConfig(
        scenarios=[(load_scenarios("pg-select")[0], 1.0)], pg_dsn=pg_dsn, probes=False,
        engine=EngineConfig(concurrency=3, duration=1.5),
    )  # fmt: skip
    session = Session(cfg)
    task = asyncio.create_task(session.run())
    await asyncio.sleep(0.8)
    conn = await asyncpg.connect(pg_dsn)
    names = sorted(
        r[0]
        for r in await conn.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'loadtop:pg-select:w%'"
        )
    )
    await conn.close()
    await task
    assert names == ["loadtop:pg-select:w0", "loadtop:pg-select:w1", "loadtop:pg-select:w2"]


async def test_closing_lines_show_the_final_checks_figures(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12.6: with several verify() checks during the load, the closing
    line and the end record carry the final check's figure (what the database
    holds at the end), with the first check's figure beside it when it grew."""
    from app.session.runner import print_outcome
    from scenarios.postgres import HotCounter, _q

    truth: dict[str, int] = {}

    class _Counted(HotCounter):
        async def teardown(self, ctx: Context) -> None:
            # after the final verify(), before the schema goes: the database's own figure
            assert ctx.conn is not None
            n = await ctx.conn.fetchval(f"SELECT n FROM {_q(ctx, 'counter')} WHERE id = 1")
            logged = await ctx.conn.fetchval(f"SELECT count(*) FROM {_q(ctx, 'oplog')}")
            truth["lost"] = logged - n
            await super().teardown(ctx)

    session, out = await run_session(
        [(_Counted, 1.0)], pg=pg_dsn, params={"mode": "unsafe"},
        concurrency=8, duration=3.0, verify_every=0.5,
    )  # fmt: skip
    lines = [v for vs in out.invariants.values() for v in vs]
    assert len(lines) == 1, lines  # one violation, not one line per check's figure
    assert truth["lost"] > 0
    assert lines[0].startswith("lost updates:") and f"({truth['lost']} lost)" in lines[0], (
        lines,
        truth,
    )
    checks = [t.invariants[n] for t in session.ticks for n in t.invariants]
    first = checks[0][0]
    if f"({truth['lost']} lost)" not in first:  # the figure grew after the first check
        assert f"(first check: {first})" in lines[0], lines
    assert session.end is not None and session.end["invariants"] == out.invariants
    print_outcome(session, out)
    closing = [ln for ln in capsys.readouterr().out.splitlines() if "invariant violated" in ln]
    # the violation's own line and the verdict's reason: both the final figure
    assert len(closing) == 2, "\n".join(closing)
    for ln in closing:
        assert f"({truth['lost']} lost)" in ln.split(" (first")[0], (ln, truth)
