"""Small helpers shared by tests: run a Session to completion."""

from __future__ import annotations

from typing import Any

from app.engine.engine import EngineConfig
from app.scenario import load_scenarios
from app.session.runner import Outcome, RunConfig, Session


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
