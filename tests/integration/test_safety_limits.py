"""Limits are hard, checked on the real server: the workers' connections in
pg_stat_activity never exceed --max-concurrency whatever keys, plans and
mixes ask; a panic ends all load within 1 s even while every operation hangs
on a row lock (the operations are cancelled and their transactions roll
back); --rate never exceeds its rate."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from app.engine.engine import EngineConfig
from app.scenario import Context, Scenario
from app.session.runner import RunConfig, Session

pytestmark = [pytest.mark.integration]

# this database only: other runs may share the server
WORKER_CONNS = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'loadtop:%:w%'"
    " AND datname = current_database()"
)


class Touch(Scenario):
    """A short transaction on a row of the scenario's own table."""

    name = "touch"
    needs = ("postgres",)

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute(
            f'CREATE TABLE "{ctx.prefix}".t (id int PRIMARY KEY, n bigint NOT NULL);'
            f'INSERT INTO "{ctx.prefix}".t SELECT g, 0 FROM generate_series(1, 10) g'
        )

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        row = ctx.param("row", 0) or ctx.rng.randint(1, 10)
        async with ctx.conn.transaction():
            await ctx.conn.execute(f'UPDATE "{ctx.prefix}".t SET n = n + 1 WHERE id = $1', row)


class Touch2(Touch):
    name = "touch-two"


class Select(Scenario):
    name = "select"
    needs = ("postgres",)
    writes = False

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.fetchval("SELECT 1")


async def started(session: Session, timeout: float = 30) -> None:
    t_end = time.monotonic() + timeout
    while not session.ticks:
        assert time.monotonic() < t_end, "the run never started"
        await asyncio.sleep(0.02)


class Sampler:
    """Counts the run's worker connections on the server, as fast as it can."""

    def __init__(self, dsn: str, session: Session) -> None:
        self.dsn, self.session = dsn, session
        self.peak_pg = 0
        self.peak_live = 0
        self.samples = 0

    async def __call__(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not stop.is_set():
                n = await conn.fetchval(WORKER_CONNS)
                self.peak_pg = max(self.peak_pg, n)
                if self.session.engine is not None:
                    self.peak_live = max(self.peak_live, self.session.engine.live_workers)
                self.samples += 1
                await asyncio.sleep(0.005)
        finally:
            await conn.close()


async def test_max_concurrency_holds_under_keys_plans_and_mixes(pg_dsn: str) -> None:
    cap = 6
    cfg = RunConfig(
        scenarios=[(Touch, 3.0), (Touch2, 1.0), (Select, 2.0)],
        pg_dsn=pg_dsn,
        probes=False,
        engine=EngineConfig(concurrency=40, max_concurrency=cap, duration=30, interval=0.25,
                            plan=[2, 50, 1, 200, 6, 9], step_seconds=0.5),
    )  # fmt: skip
    session = Session(cfg)
    run = asyncio.create_task(session.run())
    await started(session)
    stop = asyncio.Event()
    sampler = Sampler(pg_dsn, session)
    sampling = asyncio.create_task(sampler(stop))
    await asyncio.sleep(3.2)  # the plan runs its steps, each asking for more than the cap
    # keys: rapid up/down, far past the cap, and steps
    for n in [100, 0, 7, 1, 64, 3, 1000, 5, 0, 12, 6, 2, 300]:
        session.set_concurrency(n)
        await asyncio.sleep(0.07)
    for _ in range(30):
        session.step_concurrency(+5)
        await asyncio.sleep(0.01)
        session.step_concurrency(-3)
    await asyncio.sleep(0.5)
    session.pause()
    await asyncio.sleep(0.2)
    session.resume()
    session.set_rate(500)  # the open model keeps the cap too
    await asyncio.sleep(0.8)
    session.stop()
    await asyncio.wait_for(run, 30)
    stop.set()
    await sampling
    assert sampler.samples > 100
    peak_tick = max(t.concurrency for t in session.ticks)
    print(f"cap {cap}: peak connections {sampler.peak_pg}, peak live {sampler.peak_live},"
          f" peak per tick {peak_tick} ({sampler.samples} samples)")  # fmt: skip
    assert sampler.peak_pg <= cap
    assert sampler.peak_live <= cap
    assert peak_tick <= cap
    assert sampler.peak_pg >= cap - 1  # it did run at the cap: the test tested something
    assert any(e.kind == "concurrency" and "capped" in e.note for t in session.ticks
               for e in t.events)  # fmt: skip


async def test_panic_ends_load_within_a_second_while_blocked_on_a_lock(pg_dsn: str) -> None:
    cfg = RunConfig(
        scenarios=[(Touch, 1.0)], pg_dsn=pg_dsn, probes=False, params={"row": "1"},
        engine=EngineConfig(concurrency=8, duration=60, interval=0.5),
    )  # fmt: skip
    session = Session(cfg)
    run = asyncio.create_task(session.run())
    await started(session)
    prefix = session.prefixes["touch"]
    holder = await asyncpg.connect(pg_dsn, server_settings={"application_name": "test:holder"})
    watcher = await asyncpg.connect(pg_dsn)
    try:
        tr = holder.transaction()
        await tr.start()
        n_locked = await holder.fetchval(f'SELECT n FROM "{prefix}".t WHERE id = 1 FOR UPDATE')
        # every worker is now stuck behind the row lock
        t_end = time.monotonic() + 10
        while True:
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE"
                " 'loadtop:touch:w%' AND wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            if waiting == 8:
                break
            assert time.monotonic() < t_end, f"only {waiting} workers waiting on the lock"
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        session.panic()
        workers_gone = backends_gone = None
        while time.monotonic() - t0 < 3:
            el = time.monotonic() - t0
            if workers_gone is None and session.engine.live_workers == 0:
                workers_gone = el
            if backends_gone is None:
                busy = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE"
                    " 'loadtop:%:w%' AND state IS DISTINCT FROM 'idle'"
                    " AND datname = current_database()"
                )
                if busy == 0:
                    backends_gone = el
            if workers_gone is not None and backends_gone is not None:
                break
            await asyncio.sleep(0.01)
        print(f"panic: workers gone in {workers_gone}, backends gone in {backends_gone} s")
        assert workers_gone is not None and workers_gone < 1.0
        assert backends_gone is not None and backends_gone < 1.0
        # the lock is still held: nothing of the cancelled operations committed
        await tr.rollback()
        await asyncio.sleep(0.2)
        n_after = await watcher.fetchval(f'SELECT n FROM "{prefix}".t WHERE id = 1')
        assert n_after == n_locked, "a cancelled operation's transaction committed"
        # the panic holds: no worker restarted while paused
        await asyncio.sleep(0.6)
        assert session.engine.live_workers == 0
        assert session.ticks[-1].concurrency == 0
    finally:
        session.stop()
        await asyncio.wait_for(run, 30)
        await holder.close()
        await watcher.close()
    assert any(e.kind == "panic" for t in session.ticks for e in t.events)


@pytest.mark.parametrize("rate", [50.0, 400.0])
async def test_rate_is_never_exceeded(pg_dsn: str, rate: float) -> None:
    cfg = RunConfig(
        scenarios=[(Select, 1.0)], pg_dsn=pg_dsn, probes=False,
        engine=EngineConfig(concurrency=16, rate=rate, duration=3.0, interval=0.5),
    )  # fmt: skip
    session = Session(cfg)
    await session.run()
    ticks = [t for t in session.ticks if t.interval >= 0.49]
    assert len(ticks) >= 5
    done = 0
    for t in session.ticks:
        starts = sum(s.started for s in t.scenarios)
        done += starts
        # never ahead of the schedule: by any tick, at most rate x elapsed (+1 at t=0)
        assert done <= rate * t.elapsed + 1, (t.index, done, t.elapsed)
        # and one window holds at most its share, plus starts that were due in the
        # previous window and caught up after a stall (bounded by the workers)
        assert starts <= rate * t.interval + 1 + 16, (t.index, starts, t.interval)
    total = sum(sum(s.started for s in t.scenarios) for t in session.ticks)
    seconds = sum(t.interval for t in session.ticks)
    assert total <= rate * seconds + 2
    assert total >= 0.9 * rate * seconds  # and it did keep the rate


async def test_rate_change_is_a_new_ceiling(pg_dsn: str) -> None:
    cfg = RunConfig(
        scenarios=[(Select, 1.0)], pg_dsn=pg_dsn, probes=False,
        engine=EngineConfig(concurrency=8, rate=300, duration=30, interval=0.5),
    )  # fmt: skip
    session = Session(cfg)
    run = asyncio.create_task(session.run())
    await started(session)
    await asyncio.sleep(1.0)
    session.set_rate(40)
    changed = time.time()
    await asyncio.sleep(2.0)
    session.stop()
    await asyncio.wait_for(run, 30)
    after = [t for t in session.ticks if t.t - t.interval > changed + 0.01 and t.interval >= 0.49]
    assert after
    for t in after:
        starts = sum(s.started for s in t.scenarios)
        assert starts <= 40 * t.interval + 1 + 8, (t.index, starts)
    assert (
        sum(sum(s.started for s in t.scenarios) for t in after[1:])
        <= 40 * sum(t.interval for t in after[1:]) + 2
    )
