"""The probe runner: polls never overlap, time out, fail as readings that say
what to do, back off and recover; `latest()` is a cheap copy; `build_probes`
picks the sources."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.probes.base import Probe, ProbeError, ProbeSet, run_poll
from app.probes.factory import build_probes
from app.probes.pg_queues import PgQueuesProbe
from app.probes.pods import KubernetesPodsProbe, LocalProcessesProbe, PrometheusPodsProbe
from app.probes.postgres import PostgresProbe
from app.probes.redis import RedisProbe


class SlowProbe(Probe):
    """Takes longer than its interval; counts how many polls run at once."""

    name = "slow"

    def __init__(self, poll_s: float, **kw) -> None:
        super().__init__(**kw)
        self.poll_s = poll_s
        self.running = 0
        self.max_running = 0
        self.polls = 0
        self.fail_next = 0
        self.resets = 0
        self.closed = False
        self.starts: list[float] = []

    async def poll(self) -> dict:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.starts.append(time.monotonic())
        try:
            await asyncio.sleep(self.poll_s)
            self.polls += 1
            if self.fail_next:
                self.fail_next -= 1
                raise ProbeError("target is down: start it again")
            return {"n": self.polls}
        finally:
            self.running -= 1

    async def reset(self) -> None:
        self.resets += 1

    async def close(self) -> None:
        self.closed = True


async def test_polls_never_overlap_and_record_their_duration() -> None:
    p = SlowProbe(0.12, interval=0.05, timeout=1.0)
    ps = ProbeSet([p])
    await ps.start()
    await asyncio.sleep(0.7)
    await ps.stop()
    assert p.max_running == 1
    assert p.polls >= 3
    gaps = [b - a for a, b in zip(p.starts, p.starts[1:], strict=False)]
    assert min(gaps) >= 0.12  # the next poll starts only after the last one ended
    r = ps.latest()["slow"]
    assert r.ok and r.duration_ms >= 110 and r.data["n"] >= 3
    assert p.closed


async def test_timeout_and_failure_are_readings_then_recovery() -> None:
    p = SlowProbe(1.0, interval=0.05, timeout=0.1)
    r = await run_poll(p)
    assert not r.ok and "longer than 0.1 s" in r.error and "retry" in r.error
    assert 90 <= r.duration_ms < 900 and p.resets == 1  # cut at the timeout, not at 1 s

    p = SlowProbe(0.01, interval=0.05, timeout=1.0)
    p.fail_next = 2
    ps = ProbeSet([p])
    await ps.start()
    seen_fail = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r = ps.latest().get("slow")
        if r is not None and not r.ok:
            seen_fail = seen_fail or r
        if r is not None and r.ok and seen_fail:
            break
        await asyncio.sleep(0.01)
    await ps.stop()
    assert seen_fail is not None
    assert seen_fail.error == "target is down: start it again"
    assert seen_fail.data["failures"] >= 1 and seen_fail.data["failing_since"] > 0
    assert ps.latest()["slow"].ok  # recovered by itself
    assert p.resets == 2


async def test_an_unexpected_exception_is_a_reading() -> None:
    class Broken(Probe):
        name = "broken"

        async def poll(self) -> dict:
            raise KeyError("items")

    r = await run_poll(Broken())
    assert not r.ok and "items" in r.error and "retry" in r.error


async def test_latest_is_a_copy_and_cheap() -> None:
    p = SlowProbe(0.0, interval=10)
    ps = ProbeSet([p])
    await ps.poll_once()
    snap = ps.latest()
    snap.clear()
    assert "slow" in ps.latest()
    t = time.perf_counter()
    for _ in range(10_000):
        ps.latest()
    assert (time.perf_counter() - t) / 10_000 < 20e-6
    with pytest.raises(ValueError):
        ps.add(SlowProbe(0.0))


def test_build_probes_picks_sources() -> None:
    assert build_probes().probes == []
    ps = build_probes(
        pg_dsn="postgresql://u:pw@db:5432/app",
        redis_url="redis://cache:6379/0",
        k8s_namespace="shop",
        k8s_selector="app=web",
        intervals={"pods": 7, "postgres": 2},
        redis_lock_patterns=["mylock:*"],
        redis_queue_patterns=["jobs:*"],
    )
    pg, pgq, rd, pods = ps.probes
    assert isinstance(pg, PostgresProbe) and pg.interval == 2 and pg.target == "db:5432/app"
    # Postgres-native queues ride along with the Postgres target, at its interval
    assert isinstance(pgq, PgQueuesProbe) and pgq.interval == 2 and pgq.dsn == pg.dsn
    assert isinstance(rd, RedisProbe) and rd.interval == 1 and rd.lock_patterns == ("mylock:*",)
    assert rd.queue_patterns == ("jobs:*",)
    assert isinstance(pods, KubernetesPodsProbe) and pods.interval == 7
    assert pods.selector == "app=web"
    assert ps.names == ["postgres", "pg_queues", "redis", "pods"]
    prom = build_probes(prometheus_url="http://prom:9090", k8s_namespace="shop").probes[0]
    assert isinstance(prom, PrometheusPodsProbe) and prom.namespace == "shop"
    local = build_probes(local_pids=[1, "valkey-server"]).probes[0]
    assert isinstance(local, LocalProcessesProbe) and local.interval == 5
    named = build_probes(local_pids={"postgres": 1, "service": "demo-service"}).probes[0]
    assert named.targets == [("postgres", 1), ("service", "demo-service")]


async def test_a_broken_describe_does_not_end_the_probe() -> None:
    class BadDescribe(Probe):
        name = "bad"

        async def poll(self) -> dict:
            raise ConnectionRefusedError()

        def describe(self, exc: BaseException) -> str:
            raise RuntimeError("bug")

    r = await run_poll(BadDescribe())
    assert not r.ok and r.error.startswith("connection refused")
