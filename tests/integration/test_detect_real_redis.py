"""Redis and pod anomalies created for real: redis-py locks that outlive their
usual hold, have no TTL, or expire under a holder that is still working; a
queue whose producers outrun its consumers, then loses them; a Redis that hits
maxmemory; a pod restarted by an OOM kill, served by a loopback Kubernetes API.
The real probes read them; the detectors must raise each within 5 ticks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from app.engine.engine import EngineConfig
from app.probes.base import run_poll
from app.probes.kube import KubeConfig
from app.probes.pods import KubernetesPodsProbe
from app.scenario import Context, Scenario
from app.session.runner import RunConfig, Session
from tests.detect_support import (
    Run,
    drive,
    first,
    kinds,
    next_tick,
    only,
    record_ttd,
    tick,
    wait_ticks,
)

pytestmark = pytest.mark.integration


class RedisPing(Scenario):
    name = "redis-ping"
    needs = ("redis",)

    async def run(self, ctx: Context) -> None:
        assert ctx.redis is not None
        await ctx.redis.incr(f"{ctx.prefix}:n")
        await asyncio.sleep(0.01)


def lock_worker(ttl_s: float, work_s: float) -> type[Scenario]:
    """Workers take one redis-py Lock (SET NX PX), work, and release it; the
    test changes `work_s` on the class to make holds long."""

    class LockWorker(Scenario):
        name = "lock-worker"
        needs = ("redis",)
        work = work_s

        async def run(self, ctx: Context) -> None:
            assert ctx.redis is not None
            lock = ctx.redis.lock(
                f"{ctx.prefix}:lock", timeout=ttl_s, blocking_timeout=8, sleep=0.02
            )
            if not await lock.acquire():
                raise TimeoutError("lock not acquired")
            try:
                await asyncio.sleep(type(self).work)
            finally:
                await lock.release()  # LockNotOwnedError when it expired under us

    return LockWorker


def redis_cfg(url: str, scenario: type[Scenario], *, detect: dict | None = None,
              queues: list[str] | None = None, **engine: Any) -> RunConfig:  # fmt: skip
    engine.setdefault("concurrency", 3)
    engine.setdefault("duration", 40.0)
    return RunConfig(
        scenarios=[(scenario, 1.0)],
        redis_url=url,
        engine=EngineConfig(**engine),
        probes=True,
        probe_intervals={"redis": 0.5},
        redis_queue_patterns=queues,
        detect=detect,
    )


# ---- redis-lock: held far past its usual hold, and a lock with no TTL ---------------


async def test_lock_held_too_long_and_lock_without_ttl(redis_url: str, run_id: str) -> None:
    scen = lock_worker(ttl_s=30.0, work_s=0.1)
    stray = f"lock:{run_id}:nightly-report"
    no_ttl_after = 3.0
    r = aioredis.Redis.from_url(redis_url)
    marks: dict[str, int] = {}

    async def fault(session: Session) -> None:
        await wait_ticks(session, 2)
        await r.set(stray, "cron-host-7")  # SETNX-style lock with no expiry
        set_at = time.monotonic()
        await wait_ticks(session, 10)  # the usual hold is learnt meanwhile
        assert time.monotonic() - set_at < no_ttl_after + 8
        marks["slow"] = next_tick(session)
        scen.work = 8.0  # the next holder works 8 s instead of 0.1
        await wait_ticks(session, len(session.ticks) + 6)
        scen.work = 0.1
        await r.delete(stray)

    detect = {"redis-lock": {"no_ttl_after_s": no_ttl_after}}
    session = Session(redis_cfg(redis_url, scen, detect=detect))
    # the no-TTL onset is the first tick that closes after the key is 3 s old
    set_tick: dict[str, float] = {}

    def on_tick(tk) -> None:
        if "t" not in set_tick:
            return
        if "nottl" not in marks and tk.t >= set_tick["t"] + no_ttl_after:
            marks["nottl"] = tk.index

    async def watch_set() -> None:
        while "t" not in set_tick:
            if await r.exists(stray):
                set_tick["t"] = time.time()
            await asyncio.sleep(0.02)

    session.subscribe(on_tick)
    watcher = asyncio.create_task(watch_set())
    try:
        session, _ = await drive(session, fault)
    finally:
        watcher.cancel()
        await r.delete(stray)
        await r.aclose()
    ticks = session.ticks
    stray_subject = f"redis:lock:{stray}"
    raised = next((tk.index for tk in ticks for a in tk.anomalies if a.subject == stray_subject),
                  None)  # fmt: skip
    record_ttd("redis-lock (no TTL)", marks["nottl"], raised)
    a = next(a for tk in ticks for a in tk.anomalies if a.subject == stray_subject)
    assert a.evidence["holder"] == "cron-host-7" and "no TTL" in a.summary
    slow_subject = f"redis:lock:{session.prefixes['lock-worker']}:lock"
    early = [a.summary for tk in ticks[: marks["slow"]] for a in tk.anomalies
             if a.subject == slow_subject]  # fmt: skip
    assert early == [], "short holds of a lock with a TTL must raise nothing"
    raised = next((tk.index for tk in ticks for a in tk.anomalies if a.subject == slow_subject),
                  None)  # fmt: skip
    record_ttd("redis-lock (held too long)", marks["slow"], raised)
    a = next(a for tk in ticks for a in tk.anomalies if a.subject == slow_subject)
    assert "usual_hold_s" in a.evidence and a.evidence["usual_hold_s"] < 1.5
    assert a.evidence["age_s"] >= 2 and "usually" in a.summary


# ---- redis-lock: expired under a working holder and taken by another ----------------


async def test_lock_expired_under_its_holder_and_taken(redis_url: str) -> None:
    scen = lock_worker(ttl_s=1.0, work_s=0.05)

    async def fault(session: Session) -> int:
        await wait_ticks(session, 6)
        onset = next_tick(session)
        scen.work = 1.6  # work outlives the 1 s lease
        await wait_ticks(session, len(session.ticks) + 6)
        scen.work = 0.05
        return onset

    session, onset = await drive(Session(redis_cfg(redis_url, scen)), fault)
    ticks = session.ticks
    assert "redis-lock" not in kinds(ticks[:onset])
    raised = next((tk.index for tk in ticks for a in tk.anomalies
                   if a.kind == "redis-lock" and "expired_holder" in a.evidence), None)  # fmt: skip
    record_ttd("redis-lock (expired, new holder)", onset, raised)
    a = next(a for tk in ticks for a in tk.anomalies if "expired_holder" in a.evidence)
    assert a.severity == "critical" and a.evidence["expired_holder"] != a.evidence["new_holder"]
    assert any("LockNotOwnedError" in e for e in a.evidence["errors"])


# ---- queue-backlog: producers outrun consumers, then the consumers die --------------


async def test_queue_backlog_then_consumers_gone(redis_url: str, run_id: str) -> None:
    qkey = f"jobs:{run_id}"
    rate = {"per_s": 20.0}
    marks: dict[str, int] = {}
    # producer and consumers stop on these flags and close their own clients:
    # cancelling a client mid-BRPOP left a CI run waiting on its teardown
    stop_consumers, stop_all = asyncio.Event(), asyncio.Event()

    async def producer() -> None:
        r = aioredis.Redis.from_url(redis_url)
        try:
            while not stop_all.is_set():
                n = max(1, int(rate["per_s"] * 0.05))
                await r.lpush(qkey, *[b"job"] * n)
                await asyncio.sleep(0.05)
        finally:
            await r.aclose()

    async def consumer() -> None:
        r = aioredis.Redis.from_url(redis_url)
        try:
            while not (stop_consumers.is_set() or stop_all.is_set()):
                got = await r.brpop(qkey, timeout=0.2)
                if got:
                    await asyncio.sleep(0.02)  # ~50 jobs/s per consumer
        finally:
            await r.aclose()  # the disconnect is what "consumers gone" sees

    async def settle(tasks: list[asyncio.Task]) -> None:
        _, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} helper clients did not stop within 5 s"

    async def fault(session: Session) -> None:
        prod = asyncio.create_task(producer())
        cons = [asyncio.create_task(consumer()) for _ in range(3)]
        try:
            await wait_ticks(session, 8)
            marks["burst"] = next_tick(session)
            rate["per_s"] = 400.0  # arrivals 400/s against ~150/s of service
            async with asyncio.timeout(20):
                while not any(a.kind == "queue-backlog" for a in session.ticks[-1].anomalies):
                    await asyncio.sleep(0.05)
            marks["gone"] = next_tick(session)
            stop_consumers.set()
            await settle(cons)
            await wait_ticks(session, len(session.ticks) + 6)
        finally:
            stop_all.set()
            await settle([prod, *cons])
            r = aioredis.Redis.from_url(redis_url)
            await r.delete(qkey)
            await r.aclose()

    cfg = redis_cfg(redis_url, RedisPing, concurrency=1, queues=[qkey], duration=90.0)
    session, _ = await drive(Session(cfg), fault)
    ticks = session.ticks
    assert "queue-backlog" not in kinds(ticks[: marks["burst"]])
    raised, a = first(ticks, "queue-backlog")
    record_ttd("queue-backlog", marks["burst"], raised)
    assert a is not None and a.evidence["queue"] == qkey
    assert a.evidence["growth_per_s"] > 50 and not a.evidence["consumers_gone"]
    gone = next((tk.index for tk in ticks for a in tk.anomalies
                 if a.kind == "queue-backlog" and a.evidence["consumers_gone"]), None)  # fmt: skip
    record_ttd("queue-backlog (consumers gone)", marks["gone"], gone)
    last = next(a for a in ticks[-1].anomalies if a.kind == "queue-backlog")
    assert last.severity == "critical" and "consumers gone" in last.summary


# ---- redis-pressure: a private Valkey driven into maxmemory -------------------------


async def test_redis_pressure_evictions(own_redis: Any) -> None:
    url = own_redis.url

    async def fault(session: Session) -> int:
        r = aioredis.Redis.from_url(url)
        try:
            await wait_ticks(session, 4)
            used = int((await r.info("memory"))["used_memory"])
            await r.config_set("maxmemory-policy", "allkeys-lru")
            await r.config_set("maxmemory", str(used + 2 * 2**20))
            onset = next_tick(session)
            blob = b"x" * 10_000
            for i in range(400):  # 4 MB into 2 MB of headroom
                await r.set(f"filler:{i}", blob)
            await wait_ticks(session, len(session.ticks) + 3)
            await r.config_set("maxmemory", "0")
            await r.flushall()
            await wait_ticks(session, len(session.ticks) + 5)
            return onset
        finally:
            await r.aclose()

    session, onset = await drive(Session(redis_cfg(url, RedisPing, concurrency=1)), fault)
    ticks = session.ticks
    assert "redis-pressure" not in kinds(ticks[:onset])
    raised, a = first(ticks, "redis-pressure")
    record_ttd("redis-pressure", onset, raised)
    assert a is not None and a.severity == "critical"
    assert a.evidence["evicted_keys_delta"] > 0 and "evicted" in a.summary
    assert any(c.kind == "redis-pressure" for tk in ticks for c in tk.cleared)


# ---- pod: a loopback Kubernetes API whose pod gets OOM-killed -----------------------


def _pod_list(restarts: int, reason: str) -> dict:
    return {
        "kind": "PodList", "apiVersion": "v1", "metadata": {},
        "items": [{
            "metadata": {"name": "api-1", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "resources": {
                "limits": {"cpu": "500m", "memory": "256Mi"}}}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "app", "ready": True, "restartCount": restarts,
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 137, "reason": reason}}}]},
        }],
    }  # fmt: skip


def _metrics(cpu: str, mem: str) -> dict:
    return {
        "kind": "PodMetricsList",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": "api-1", "namespace": "shop"},
                "containers": [{"name": "app", "usage": {"cpu": cpu, "memory": mem}}],
            }
        ],
    }
    # fmt: skip


async def test_pod_oom_restart_cpu_and_memory_through_a_loopback_api() -> None:
    state = {"pods": _pod_list(2, "Error"), "metrics": _metrics("100m", "100Mi")}

    async def pods(_: web.Request) -> web.Response:
        return web.json_response(state["pods"])

    async def metrics(_: web.Request) -> web.Response:
        return web.json_response(state["metrics"])

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods", pods)
    app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    probe = KubernetesPodsProbe(
        config=KubeConfig(server=f"http://127.0.0.1:{port}", namespace="shop", token="t")
    )
    r = Run(only(None, "pod"))
    i = 0

    async def step(n: int) -> None:
        nonlocal i
        for _ in range(n):
            reading = await run_poll(probe)
            assert reading.ok, reading.error
            r.feed(tick(i, readings={"pods": reading}, t=time.time()))
            i += 1
            await asyncio.sleep(0.05)

    try:
        await step(3)
        assert r.kinds_ever() == set()  # two restarts before the run are history
        onset = i
        state["pods"] = _pod_list(3, "OOMKilled")
        await step(3)
        record_ttd("pod (OOM kill)", onset, r.first_raised("pod"))
        a = r.of("pod")[0]
        assert "OOM" in a.summary and a.evidence["restarts"] == 3
        await step(12)  # the restart ages out
        assert r.first_cleared("pod") is not None
        onset = i
        state["metrics"] = _metrics("490m", "240Mi")
        await step(3)
        hot = [t.index for t, act in zip(r.ticks, r.active, strict=True)
               if t.index >= onset and any(x.kind == "pod" for x in act)]  # fmt: skip
        record_ttd("pod (CPU/memory at limit)", onset, hot[0] if hot else None)
        problems = " ".join(r.of("pod")[0].evidence["problems"])
        assert "CPU" in problems and "memory" in problems
    finally:
        await probe.close()
        await runner.cleanup()
