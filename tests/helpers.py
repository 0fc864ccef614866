"""Small helpers shared by tests: run a Session to completion, and read what it
recorded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.engine.engine import EngineConfig
from app.scenario import Context, Scenario, load_scenarios
from app.session.recording import Recording
from app.session.runner import Outcome, RunConfig, Session


class RedisSetGet(Scenario):
    """A minimal Redis scenario: SET then GET one key of the run's prefix."""

    name = "redis-setget"
    needs = ("redis",)

    async def run(self, ctx: Context) -> None:
        assert ctx.redis is not None
        k = ctx.key("k", ctx.rng.randint(1, 50))
        await ctx.redis.set(k, ctx.worker)
        await ctx.redis.get(k)


async def run_session(
    scenario: str | list[tuple[Any, float]],
    *,
    pg: str | None = None,
    redis: str | None = None,
    http: str | None = None,
    params: dict[str, str] | None = None,
    probes: bool = False,
    **engine: Any,
) -> tuple[Session, Outcome]:
    mix = [(c, 1.0) for c in load_scenarios(scenario)] if isinstance(scenario, str) else scenario
    engine.setdefault("duration", 2.0)
    engine.setdefault("concurrency", 4)
    cfg = RunConfig(
        scenarios=mix, pg_dsn=pg, redis_url=redis, http_url=http, params=params or {},
        engine=EngineConfig(**engine), probes=probes,
    )  # fmt: skip
    session = Session(cfg)
    outcome = await session.run()
    return session, outcome


async def started(session: Session, ticks: int = 1, timeout: float = 30.0) -> asyncio.Task[Outcome]:
    """Runs `session` in a task and returns the task once the engine has emitted
    `ticks` ticks (the load is running); fails if the run ends or never starts."""
    run = asyncio.create_task(session.run())
    t_end = time.monotonic() + timeout
    while session.engine is None or session.engine.ticks_emitted < ticks:
        assert not run.done(), run.exception()
        assert time.monotonic() < t_end, "the run never started"
        await asyncio.sleep(0.05)
    return run


def recording_of(session: Session) -> Recording:
    """What an ended session recorded (header, ticks, end record), as the report reads it."""
    return Recording(header=session.header, ticks=list(session.ticks), end=session.end)


def totals(session: Session) -> tuple[int, int, dict[str, int]]:
    """A session's ok and failed operations and its errors by class, over every tick."""
    ok = failed = 0
    errors: dict[str, int] = {}
    for tick in session.ticks:
        for w in tick.scenarios:
            ok += w.ok
            failed += w.failed
            for k, v in w.errors.items():
                errors[k] = errors.get(k, 0) + v
    return ok, failed, errors


def require_password(pg: Any, role: str, password: str, *, superuser: bool = False) -> None:
    """On an embedded PostgreSQL (trust auth), add a LOGIN role that must
    authenticate with its password (scram-sha-256 over TCP)."""
    import asyncio
    import os

    import asyncpg

    hba = pg.pgdata / "pg_hba.conf"
    st = hba.stat()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    os.chown(hba, st.st_uid, st.st_gid)

    async def go() -> None:
        conn = await asyncpg.connect(pg.dsn)
        try:
            su = " SUPERUSER" if superuser else ""
            await conn.execute(f"CREATE ROLE {role} LOGIN{su} PASSWORD '{password}'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    asyncio.run(go())


async def wait_for_reading(ps: Any, probe: str, ok: bool, timeout: float) -> None:
    """Wait until the ProbeSet's latest `probe` reading has `ok`, or fail."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = ps.latest().get(probe)
        if r is not None and r.ok == ok:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"probe never became ok={ok}: {ps.latest()}")
