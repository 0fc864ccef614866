"""Connection exhaustion, for real: a PostgreSQL with max_connections = 20 and a
load of 32 workers. The workers that find no slot count 53300 errors and back
off (no spin, bounded error rate), the run does not crash, and the report says
how many workers never got a connection."""

from __future__ import annotations

import time

import asyncpg
import psutil
import pytest

from app.embedded import EmbeddedPostgres, EmbeddedRedis
from app.engine.engine import EngineConfig
from app.session.report import build_summary, render_markdown
from app.session.runner import RunConfig, Session
from scenarios.postgres import PgSelect
from tests.helpers import RedisSetGet, recording_of, run_session, totals

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_CONNECTIONS = 20
WORKERS = 32


@pytest.fixture
def small_pg():
    with EmbeddedPostgres(
        settings={"max_connections": MAX_CONNECTIONS, "superuser_reserved_connections": 3}
    ) as pg:
        yield pg


async def test_exhaustion_counts_53300_and_reports_never_connected(small_pg) -> None:
    cfg = RunConfig(
        scenarios=[(PgSelect, 1.0)],
        pg_dsn=small_pg.dsn,
        engine=EngineConfig(concurrency=WORKERS, duration=5, interval=0.5),
    )
    session = Session(cfg)
    proc = psutil.Process()
    cpu0 = sum(proc.cpu_times()[:2])
    wall0 = time.monotonic()
    outcome = await session.run()
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    wall = time.monotonic() - wall0

    assert outcome.reason == "duration", outcome
    _, _, errors = totals(session)
    assert errors.get("53300 too many connections", 0) > 0, errors
    ok = sum(t.ok for t in session.ticks)
    assert ok > 1000, "the workers that got a slot kept working"

    never = session.end["never_connected"]
    n_never = sum(never.values())
    # the session's pool and the probe take a slot or two each; the rest are workers
    assert WORKERS - MAX_CONNECTIONS <= n_never < WORKERS, never
    peak = max(t.concurrency for t in session.ticks)
    assert peak == WORKERS  # the workers stayed (retrying), none crashed the run

    # backoff: each starved worker retries at most a few times a second
    for t in session.ticks[2:-1]:
        failed = sum(s.failed for s in t.scenarios)
        assert failed / t.interval <= n_never * 4, (t.index, failed, errors)
    # no spin: the generator stayed well under its two cores
    print(f"exhaustion: never connected {never}, errors {errors}, {cpu / wall:.2f} cores")
    assert cpu / wall < 1.6, f"{cpu / wall:.2f} cores"

    rec = recording_of(session)
    summary = build_summary(rec)
    assert summary["never_connected"] == never
    md = render_markdown(rec)
    assert f"{n_never} worker(s) never got a connection" in md
    assert "53300 too many connections" in md

    # and nothing of ours is left holding a slot
    conn = await asyncpg.connect(small_pg.dsn)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'loadtop%'"
        )
    finally:
        await conn.close()
    assert left == 0


async def test_redis_maxclients_is_counted_and_backed_off() -> None:
    """Redis's own exhaustion (maxclients): counted as 'redis maxclients', and
    the starved workers back off like Postgres's 53300 instead of retrying
    flat out (they did ~80 times a second each before)."""
    with EmbeddedRedis(maxclients=12) as r:
        workers = 24
        session, outcome = await run_session(
            [(RedisSetGet, 1.0)], redis=r.url, concurrency=workers, duration=4, interval=0.5
        )
    assert outcome.reason == "duration"
    _, _, errors = totals(session)
    assert errors.get("redis maxclients", 0) > 0, errors
    assert sum(t.ok for t in session.ticks) > 500
    # flat out, each starved worker failed ~80 times a second; backing off, a
    # worker that keeps failing tries at most ~1/s, but one that gets a pooled
    # connection now and then starts again at 50 ms: a few per second each,
    # so the bound is a tenth of flat out (3/s each flaked under a busy CI box)
    for t in session.ticks[2:-1]:
        failed = sum(s.failed for s in t.scenarios)
        assert failed / t.interval <= workers * 8, (t.index, failed)
