"""The Redis scenarios against a real Redis (embedded Valkey, or the server in
LOADTOP_TEST_REDIS_URL), driven through the real session and engine: each
unsafe mode really produces its violation, each safe mode never does, and
nothing is left under the run's prefix afterwards."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.engine.engine import EngineConfig
from app.scenario import Context, Scenario, ScenarioError, slug
from app.session.runner import Outcome, RunConfig, Session
from scenarios.redis import RateLimit, RedisGetSet, RedisLock, RedisQueue, SessionIsolation
from tests.helpers import totals

pytestmark = pytest.mark.integration


async def run(
    cls: type[Scenario],
    redis_url: str,
    params: dict[str, str] | None = None,
    *,
    concurrency: int = 8,
    duration: float = 2.0,
    run_id: str | None = None,
    slo: dict[str, float] | None = None,
) -> tuple[Session, Outcome, Any]:
    run_id = run_id or uuid.uuid4().hex[:8]
    cfg = RunConfig(
        scenarios=[(cls, 1.0)],
        redis_url=redis_url,
        params=dict(params or {}),
        engine=EngineConfig(concurrency=concurrency, duration=duration),
        probes=False,
        run_id=run_id,
        slo=slo,
    )
    session = Session(cfg)
    outcome = await session.run()
    r = aioredis.from_url(redis_url)
    try:
        left = [k async for k in r.scan_iter(match=f"loadtop_{run_id}_*", count=1000)]
    finally:
        await r.aclose()
    assert left == [], f"keys left under the run's prefix: {left[:5]}"
    assert session.ticks, "no tick emitted"
    return session, outcome, session.instances[0][0]


LAX_SLO = {"p95_ms": 60_000.0, "p99_ms": 60_000.0}


def violations(outcome: Outcome) -> list[str]:
    return [v for vs in outcome.invariants.values() for v in vs]


class _NeverSuspends(Scenario):
    """A run() that fails before its first await (found with a scenario whose
    per-worker state was missing): it must not starve the engine's loop."""

    name = "never-suspends"
    needs = ("redis",)

    async def run(self, ctx: Context) -> None:
        raise KeyError("no state")


async def test_a_run_that_never_awaits_does_not_freeze_the_engine(redis_url: str) -> None:
    session, outcome, _ = await asyncio.wait_for(
        run(_NeverSuspends, redis_url, concurrency=2, duration=1.0), 15
    )
    assert outcome.reason == "duration" and len(session.ticks) >= 2
    assert totals(session)[2].get("KeyError", 0) > 100


@pytest.mark.parametrize(
    ("cls", "params", "msg"),
    [(RedisLock, {"impl": "zookeeper"}, "impl=zookeeper is unknown"),
     (RedisQueue, {"kind": "kafka"}, "kind=kafka is unknown"),
     (RateLimit, {"limit": "0"}, "limit=0 must be positive"),
     (RateLimit, {"window_s": "soon"}, "window_s='soon' is not a valid float")],
)  # fmt: skip
async def test_bad_parameters_fail_before_load(
    redis_url: str, cls: type[Scenario], params: dict[str, str], msg: str
) -> None:
    with pytest.raises(ScenarioError, match=msg):
        await run(cls, redis_url, params)


# ---- redis-lock --------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["token", "redis-py"])
async def test_lock_holds_mutual_exclusion(redis_url: str, impl: str) -> None:
    # 8 workers poll one lock: redis-py's Lock retries on a sleep, so it is not fair and
    # its wait tail passed 1 s on a loaded CI box (p99 1016 ms). Exclusion is what this
    # test checks; the latency SLO is set out of the way so only invariants decide.
    session, outcome, inst = await run(
        RedisLock, redis_url, {"impl": impl, "work_ms": "1"}, slo=LAX_SLO
    )
    assert outcome.invariants == {} and outcome.exit_code == 0
    ok, failed, errors = totals(session)
    assert ok > 50 and failed == 0, errors
    s = inst.stats()
    assert s["double_holders"] == 0 and s["lost_locks"] == 0
    assert s["tenants"][0]["contended"] > 0  # 8 workers on one lock did wait on each other


@pytest.mark.parametrize("impl", ["token", "redis-py"])
async def test_lock_ttl_shorter_than_work_makes_double_holders(redis_url: str, impl: str) -> None:
    session, outcome, inst = await run(
        RedisLock, redis_url, {"impl": impl, "ttl_ms": "20", "work_ms": "60"}
    )
    found = violations(outcome)
    assert outcome.exit_code == 1
    assert any("mutual exclusion violated" in v and "lost updates" in v for v in found), found
    assert any("double holders" in v for v in found), found
    _, _, errors = totals(session)
    assert errors.get("lock expired while held", 0) > 0, errors
    assert inst.stats()["double_holders"] > 0


async def test_lock_tenants_never_wait_on_each_other(redis_url: str) -> None:
    """Tenant 0's lock is held elsewhere for the whole run: tenant 0's workers
    time out, every other tenant keeps going without waiting on it."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"loadtop_{run_id}_{slug(RedisLock.name)}"
    r = aioredis.from_url(redis_url)
    await r.set(f"{prefix}:lock:t0", "t0:external-holder", px=30_000)
    await r.aclose()
    session, outcome, inst = await run(
        RedisLock, redis_url,
        {"tenants": "4", "work_ms": "2", "acquire_timeout_ms": "300"},
        run_id=run_id,
    )  # fmt: skip
    assert outcome.invariants == {}, outcome.invariants
    s = inst.stats()["tenants"]
    assert s[0]["acquired"] == 0
    assert s[0]["wait_ms"] / s[0]["contended"] >= 290  # each of its waits ran to the timeout
    for t in (1, 2, 3):
        assert s[t]["acquired"] > 20, s
        assert s[t]["cross_tenant_waits"] == 0
        # a tenant waits only behind its own other worker (2 ms of work), never behind
        # the stuck tenant 0 (generous: this box is shared and its loop can stall)
        assert s[t]["wait_ms"] / max(s[t]["contended"], 1) < 100, s
    _, _, errors = totals(session)
    assert errors.get("lock timeout", 0) > 0


async def test_lock_global_scope_makes_tenants_wait_on_each_other(redis_url: str) -> None:
    _, outcome, inst = await run(
        RedisLock, redis_url, {"tenants": "4", "scope": "global", "work_ms": "2"}
    )
    found = violations(outcome)
    assert any("tenants wait on each other" in v for v in found), found
    assert not any("mutual exclusion" in v for v in found), found
    assert sum(t["cross_tenant_waits"] for t in inst.stats()["tenants"].values()) > 0


# ---- redis-queue -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "stream"])
async def test_queue_safe_consumes_every_job_once(redis_url: str, kind: str) -> None:
    session, outcome, inst = await run(RedisQueue, redis_url, {"kind": kind})
    assert outcome.invariants == {} and outcome.exit_code == 0
    s = inst.stats()
    assert s["produced"] > 100 and s["consumed"] > 50, s
    assert s["duplicates"] == 0
    # consumed jobs leave the queue (a stream's acked entries are deleted too)
    assert s["length"] < s["produced"] / 2, s
    ok, failed, _ = totals(session)
    assert failed == 0 and ok > 100


async def test_queue_list_unsafe_consumes_jobs_twice(redis_url: str) -> None:
    _, outcome, inst = await run(RedisQueue, redis_url, {"mode": "unsafe"})
    found = violations(outcome)
    assert any("consumed more than once" in v for v in found), found
    assert inst.stats()["duplicates"] > 0


async def test_queue_list_crash_loses_jobs(redis_url: str) -> None:
    session, outcome, _ = await run(RedisQueue, redis_url, {"crash": "0.05"})
    found = violations(outcome)
    assert any("jobs lost" in v and "at-most-once" in v for v in found), found
    assert totals(session)[2].get("consumer crashed", 0) > 0


async def test_queue_stream_crash_redelivers_and_loses_nothing(redis_url: str) -> None:
    _, outcome, inst = await run(
        RedisQueue, redis_url, {"kind": "stream", "crash": "0.05", "claim_ms": "100"},
        duration=2.5,
    )  # fmt: skip
    assert outcome.invariants == {}, outcome.invariants
    s = inst.stats()
    assert s["crashes"] > 0 and s["redeliveries"] > 0, s


async def test_queue_stream_ack_before_work_loses_jobs(redis_url: str) -> None:
    _, outcome, _ = await run(
        RedisQueue, redis_url, {"kind": "stream", "mode": "unsafe", "crash": "0.05"}
    )
    found = violations(outcome)
    assert any("jobs lost" in v and "acknowledged" in v for v in found), found


@pytest.mark.parametrize("kind", ["list", "stream"])
async def test_queue_produce_ratio_grows_the_backlog(redis_url: str, kind: str) -> None:
    _, outcome, inst = await run(RedisQueue, redis_url, {"kind": kind, "produce_ratio": "0.8"})
    assert outcome.invariants == {}
    s = inst.stats()
    # arrivals 4x the service attempts: most of what was produced is still queued
    assert s["backlog"] > 0.5 * s["produced"], s


async def test_queue_backlog_is_capped(redis_url: str) -> None:
    session, outcome, inst = await run(
        RedisQueue, redis_url, {"produce_ratio": "0.9", "max_backlog": "200"}, duration=1.5
    )
    assert outcome.invariants == {}
    assert inst.stats()["length"] <= 200
    assert totals(session)[2].get("queue full", 0) > 0


# ---- rate-limit --------------------------------------------------------------------

RL = {"limit": "5", "window_s": "1", "tenants": "1"}


@pytest.mark.parametrize("algo", ["fixed", "sliding"])
async def test_rate_limit_safe_never_over_admits(redis_url: str, algo: str) -> None:
    session, outcome, inst = await run(RateLimit, redis_url, {**RL, "algo": algo}, duration=2.5)
    assert outcome.invariants == {} and outcome.exit_code == 0
    s = inst.stats()
    assert s["admitted"] >= 5 and s["rejected"] > 100, s  # the limiter was really exercised
    # the same figures live, tick by tick, through ctx.count()
    live: dict[str, int] = {}
    for tk in session.ticks:
        for k, v in tk.counters().items():
            live[k] = live.get(k, 0) + v
    assert live == {"admitted": s["admitted"], "rejected": s["rejected"]}
    assert s["admitted"] <= 5 * 4  # at most 4 windows touched in 2.5 s


@pytest.mark.parametrize("algo", ["fixed", "sliding"])
async def test_rate_limit_unsafe_over_admits(redis_url: str, algo: str) -> None:
    _, outcome, inst = await run(
        RateLimit, redis_url, {**RL, "algo": algo, "mode": "unsafe"}, duration=2.5
    )
    found = violations(outcome)
    assert outcome.exit_code == 1
    assert any("rate limit exceeded" in v for v in found), found
    assert max(inst.stats()["worst"].values()) > 5


# ---- session-isolation ----------------------------------------------------------------


async def test_sessions_stay_isolated(redis_url: str) -> None:
    session, outcome, inst = await run(SessionIsolation, redis_url)
    assert outcome.invariants == {} and outcome.exit_code == 0
    ok, failed, _ = totals(session)
    assert ok > 100 and failed == 0
    assert inst.stats()["leaks"] == 0


async def test_shared_current_session_leaks_across_workers(redis_url: str) -> None:
    session, outcome, _ = await run(SessionIsolation, redis_url, {"mode": "unsafe"})
    found = violations(outcome)
    assert any("session isolation violated" in v for v in found), found
    assert totals(session)[2].get("session leak", 0) > 0


# ---- redis-getset ----------------------------------------------------------------------


@pytest.mark.parametrize("conn", ["own", "pool"])
async def test_getset_runs_clean(redis_url: str, conn: str) -> None:
    session, outcome, _ = await run(
        RedisGetSet, redis_url, {"conn": conn, "keys": "100"}, duration=1.5
    )
    assert outcome.invariants == {} and outcome.exit_code == 0
    ok, failed, _ = totals(session)
    assert ok > 500 and failed == 0
    r = aioredis.from_url(redis_url)
    try:
        names = [c.get("name") for c in await r.client_list()]
    finally:
        await r.aclose()
    assert "loadtop:load" not in names  # every worker's own connection was closed
