"""Error classes of real failures, where the class matters to the reading: a
client-side pool with no connection to give is "pool timeout", not a slow
target and not an outage. Real PostgreSQL and Redis, real pools."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.engine.errors import (
    CONNECTION_LOST,
    PG_POOL_TIMEOUT,
    REDIS_POOL_TIMEOUT,
    TIMEOUT,
    classify,
    is_connection_error,
)
from app.scenario import Context, Scenario
from tests.helpers import run_session, totals


async def failure(aw) -> BaseException:
    try:
        await aw
    except BaseException as e:  # the point is what was raised
        return e
    raise AssertionError("expected the call to fail")


async def test_asyncpg_pool_timeouts_are_pool_timeouts_and_slow_queries_are_not(
    pg_dsn: str,
) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as held:
            # both ways of bounding the wait for a pooled connection
            e1 = await failure(pool.acquire(timeout=0.2))
            e2 = await failure(asyncio.wait_for(pool.acquire(), 0.2))
            # a query that is slow on the server is the target being slow
            e3 = await failure(asyncio.wait_for(held.fetchval("SELECT pg_sleep(2)"), 0.2))
        assert classify(e1) == PG_POOL_TIMEOUT, repr(e1)
        assert classify(e2) == PG_POOL_TIMEOUT, repr(e2)
        assert classify(e3) == TIMEOUT, repr(e3)
        assert not is_connection_error(PG_POOL_TIMEOUT)
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_redis_blocking_pool_timeout_is_not_a_lost_connection(redis_url: str) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.2)
    client = aioredis.Redis(connection_pool=pool)
    try:
        conn = await pool.get_connection()
        try:
            e = await failure(client.get("loadtop:never"))
        finally:
            await pool.release(conn)
        # before: "No connection available." counted as "connection lost", an outage
        assert classify(e) == REDIS_POOL_TIMEOUT, repr(e)
        assert classify(e) != CONNECTION_LOST and not is_connection_error(classify(e))
        assert await client.ping()  # the pool itself is fine once a connection is back
    finally:
        await client.aclose()
        await pool.disconnect()


class NestedAcquire(Scenario):
    """The classic pool deadlock: each operation holds one pooled connection and
    asks for a second. With the pool sized to the workers, every worker ends up
    holding one and waiting for another."""

    name = "nested-acquire"
    needs = ("postgres",)
    writes = False

    async def run(self, ctx: Context) -> None:
        assert ctx.pg is not None
        async with ctx.pg.acquire(timeout=0.5) as outer:
            await outer.fetchval("SELECT pg_sleep(0.05)")
            async with ctx.pg.acquire(timeout=0.5) as inner:
                await inner.fetchval("SELECT 1")


@pytest.mark.integration
async def test_nested_acquire_starves_the_pool_and_is_named(pg_dsn: str) -> None:
    # the load pool holds max-concurrency connections: 8 workers, 8 connections
    session, _ = await run_session(
        [(NestedAcquire, 1.0)], pg=pg_dsn, concurrency=8, max_concurrency=8, duration=4.0
    )
    _, _, errors = totals(session)
    assert errors.get(PG_POOL_TIMEOUT, 0) > 0, errors
    assert TIMEOUT not in errors, errors
    found = [a for tk in session.ticks for a in tk.anomalies if a.kind == "connection-saturation"]
    assert found, "connection-saturation was not raised for pool timeouts"
    a = found[0]
    assert a.subject == "pool:nested-acquire" and PG_POOL_TIMEOUT in a.evidence["errors"]
    assert a.severity == "critical" and "found no connection" in a.summary
