"""Nothing left behind: after a clean run, a threshold abort, an interrupted run,
a panic, a scenario whose setup fails halfway, and one whose teardown raises,
no loadtop_* schema, table, connection or Redis key of the run remains on the
real targets (listed afterwards, not assumed)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.engine.engine import EngineConfig
from app.engine.thresholds import parse_thresholds
from app.scenario import Context, Scenario
from app.session.runner import RunConfig, Session, SetupError

pytestmark = [pytest.mark.integration]


class Writer(Scenario):
    """Creates a table, a sequence, a view and Redis keys of every type."""

    name = "leave-nothing"
    needs = ("postgres", "redis")

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None and ctx.redis is not None
        await ctx.conn.execute(
            f'CREATE TABLE "{ctx.prefix}".t (id bigserial PRIMARY KEY, w int);'
            f'CREATE VIEW "{ctx.prefix}".v AS SELECT * FROM "{ctx.prefix}".t;'
        )
        await ctx.redis.set(ctx.key("config"), "x")
        await ctx.redis.hset(ctx.key("h"), "a", 1)
        await ctx.redis.zadd(ctx.key("z"), {"a": 1})
        await ctx.redis.xadd(ctx.key("stream"), {"a": 1})

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None and ctx.redis is not None
        await ctx.conn.execute(f'INSERT INTO "{ctx.prefix}".t (w) VALUES ($1)', ctx.worker)
        await ctx.redis.rpush(ctx.key("q", ctx.worker % 3), 1)
        await ctx.redis.set(ctx.key("lock", ctx.worker), 1, px=60_000)


class SetupFailsHalfway(Writer):
    name = "setup-fails"

    async def setup(self, ctx: Context) -> None:
        await super().setup(ctx)
        raise RuntimeError("the fixture data is missing")


class TeardownRaises(Writer):
    name = "teardown-raises"

    async def teardown(self, ctx: Context) -> None:
        raise RuntimeError("teardown bug")


class Slow(Writer):
    """Operations that take a while, so an interrupt lands mid-operation."""

    name = "slow-writer"

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        async with ctx.conn.transaction():
            await ctx.conn.execute(f'INSERT INTO "{ctx.prefix}".t (w) VALUES ($1)', ctx.worker)
            await ctx.conn.execute("SELECT pg_sleep(0.2)")


async def what_is_left(pg_dsn: str, redis_url: str, run_id: str) -> dict:
    conn = await asyncpg.connect(pg_dsn)
    r = aioredis.from_url(redis_url)
    try:
        like = f"loadtop\\_{run_id}%"
        schemas = [x[0] for x in await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", like)]  # fmt: skip
        tables = [x[0] for x in await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname LIKE $1", like)]  # fmt: skip
        # connections may take a moment to be gone from pg_stat_activity
        for _ in range(20):
            sessions = [x[0] for x in await conn.fetch(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE application_name LIKE 'loadtop%'"
                " AND datname = current_database()")]  # fmt: skip
            if not sessions:
                break
            await asyncio.sleep(0.1)
        keys = [k async for k in r.scan_iter(match=f"loadtop_{run_id}*")]
        # this test's db only: other runs may share the server (their own db)
        db = str(r.connection_pool.connection_kwargs.get("db", 0))
        clients = [c for c in await r.client_list()
                   if c.get("name", "").startswith("loadtop") and c.get("db") == db]  # fmt: skip
    finally:
        await conn.close()
        await r.aclose()
    left = {"schemas": schemas, "tables": tables, "sessions": sessions, "keys": keys,
            "redis_clients": clients}  # fmt: skip
    return {k: v for k, v in left.items() if v}


def make(pg_dsn: str, redis_url: str, cls: type[Scenario], **engine) -> Session:
    engine.setdefault("concurrency", 4)
    engine.setdefault("duration", 1.5)
    engine.setdefault("interval", 0.5)
    cfg = RunConfig(scenarios=[(cls, 1.0)], pg_dsn=pg_dsn, redis_url=redis_url,
                    engine=EngineConfig(**engine))  # fmt: skip
    return Session(cfg)


async def test_clean_run_leaves_nothing(pg_dsn: str, redis_url: str) -> None:
    s = make(pg_dsn, redis_url, Writer)
    out = await s.run()
    assert out.reason == "duration" and sum(t.ok for t in s.ticks) > 10
    assert await what_is_left(pg_dsn, redis_url, s.cfg.run_id) == {}


async def test_threshold_abort_leaves_nothing(pg_dsn: str, redis_url: str) -> None:
    s = make(pg_dsn, redis_url, Writer, duration=30,
             thresholds=parse_thresholds(["ops<100000000/s"]))  # fmt: skip
    out = await s.run()
    assert out.tripped and out.exit_code == 1
    assert await what_is_left(pg_dsn, redis_url, s.cfg.run_id) == {}


@pytest.mark.parametrize("how", ["stop", "panic"])
async def test_interrupted_run_leaves_nothing(pg_dsn: str, redis_url: str, how: str) -> None:
    s = make(pg_dsn, redis_url, Slow, duration=30, concurrency=6)
    task = asyncio.create_task(s.run())
    while not s.ticks:
        await asyncio.sleep(0.05)
    getattr(s, how)()
    if how == "panic":
        await asyncio.sleep(0.3)
        s.stop("quit after panic")
    await asyncio.wait_for(task, 20)
    assert await what_is_left(pg_dsn, redis_url, s.cfg.run_id) == {}


async def test_setup_failing_halfway_leaves_nothing(pg_dsn: str, redis_url: str) -> None:
    s = make(pg_dsn, redis_url, SetupFailsHalfway)
    with pytest.raises(SetupError, match="the fixture data is missing"):
        await s.run()
    assert await what_is_left(pg_dsn, redis_url, s.cfg.run_id) == {}


async def test_teardown_raising_leaves_nothing(pg_dsn: str, redis_url: str) -> None:
    s = make(pg_dsn, redis_url, TeardownRaises)
    await s.run()
    assert any("teardown failed" in m for m in s.messages)
    assert await what_is_left(pg_dsn, redis_url, s.cfg.run_id) == {}


async def test_cancelled_session_task_leaves_nothing(pg_dsn: str, redis_url: str) -> None:
    """The task running the session is cancelled (what asyncio.run does on
    Ctrl-C before the signal handlers are in place): cleanup still runs."""
    s = make(pg_dsn, redis_url, Slow, duration=30)
    task = asyncio.create_task(s.run())
    while not s.ticks:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)
    assert await what_is_left(pg_dsn, redis_url, s.cfg.run_id) == {}
