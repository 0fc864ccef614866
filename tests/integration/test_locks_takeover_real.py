"""Issue 11, lock takeover seen from outside: a lock that expires under its holder
and is taken by another process, with redis-py `Lock`, python-redis-lock,
pottery's Redlock and a hand-made `SET NX PX`, must raise `lock-takeover` within
2 ticks with old holder, new holder, TTL and last seen PTTL, with no application
errors to go on (as in `loadtop watch`). A release followed by a new acquire is
not a takeover. Where the server publishes expiries (set up on an embedded
Valkey by the test, never by the probe) the takeover is proven by the event.
Holders are recorded whole and shortened in the middle on screen."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.probes.redis_locks import elide_middle
from tests.integration.test_queues_real_libs import Watch, record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOLDER_A = "worker-host-42:pid-7731:" + "6f1c0e4a9b2d4c3e8f7a6b5c4d3e2f1a"


def redis_py_lock(r: redis.Redis, name: str, ttl: float) -> tuple[str, Callable[[], str]]:
    key = f"lock:{name}"
    a = r.lock(key, timeout=ttl)
    assert a.acquire(blocking=False)  # held, never released: its lease runs out

    def take() -> str:
        b = r.lock(key, timeout=10, blocking_timeout=ttl + 3, sleep=0.01)
        assert b.acquire()
        return b.local.token.decode()

    return key, take


def python_redis_lock(r: redis.Redis, name: str, ttl: float) -> tuple[str, Callable[[], str]]:
    import redis_lock

    a = redis_lock.Lock(r, name, expire=int(ttl), auto_renewal=False)
    assert a.acquire(blocking=False)

    def take() -> str:
        # acquire(timeout=) waits for the release signal, which an expiry never sends:
        # another process retrying is what takes an expired lock
        b = redis_lock.Lock(r, name, expire=10, auto_renewal=False)
        deadline = time.time() + ttl + 3
        while not b.acquire(blocking=False):
            assert time.time() < deadline
            time.sleep(0.01)
        return b.id

    return f"lock:{name}", take


def pottery_redlock(r: redis.Redis, name: str, ttl: float) -> tuple[str, Callable[[], str]]:
    from pottery import Redlock

    a = Redlock(key=name, masters={r}, auto_release_time=ttl)
    assert a.acquire(blocking=False)

    def take() -> str:
        b = Redlock(key=name, masters={r}, auto_release_time=10)
        assert b.acquire(timeout=ttl + 3)
        return b._uuid

    return f"redlock:{name}", take


def hand_made(r: redis.Redis, name: str, ttl: float) -> tuple[str, Callable[[], str]]:
    key = f"{name}:lock"
    assert r.set(key, HOLDER_A, nx=True, px=int(ttl * 1000))

    def take() -> str:
        mine = "worker-host-43:pid-99:" + uuid.uuid4().hex
        deadline = time.time() + ttl + 3
        while not r.set(key, mine, nx=True, px=10_000):
            assert time.time() < deadline
            time.sleep(0.005)
        return mine

    return key, take


LIBS: dict[str, Any] = {
    "redis-py": redis_py_lock,
    "python-redis-lock": python_redis_lock,
    "pottery": pottery_redlock,
    "set-nx-px": hand_made,
}


async def takeover_run(url: str, lib: str, ttl: float = 2.0) -> tuple[Watch, str, str, int, str]:
    """A lock held with a `ttl` lease that is never renewed, and another process
    retrying until it takes it: (watch, key, old holder, tick taken, new holder)."""
    r = redis.Redis.from_url(url)
    name = f"tk{uuid.uuid4().hex[:8]}"
    key, take = LIBS[lib](r, name, ttl)
    old = r.get(key)
    assert old is not None
    w = Watch(url)
    try:
        task = asyncio.create_task(asyncio.to_thread(take))
        while not task.done():
            await w.tick()
        new = await task
        taken_at_tick = len(w.ticks) - 1  # the window in which the new holder got it
        for _ in range(3):
            await w.tick()
    finally:
        await w.close()
        r.delete(key, f"lock-signal:{name}")
        r.close()
    return w, key, old.decode(), taken_at_tick, str(new)


@pytest.mark.parametrize("lib", list(LIBS))
async def test_lock_expired_and_taken_is_raised_within_two_ticks(lib: str, redis_url: str) -> None:
    w, key, old, taken_at, new = await takeover_run(redis_url, lib)
    hits = [
        (tk.index, a)
        for tk in w.ticks
        for a in tk.anomalies
        if a.kind == "lock-takeover" and a.evidence["key"] == key
    ]
    assert hits, f"{lib}: no lock-takeover for {key}"
    raised, a = hits[0]
    record({"lib": lib, "takeover_after_ticks": raised - taken_at,
            "last_pttl_ms": a.evidence["last_pttl_ms"], "ttl_ms": a.evidence["ttl_ms"],
            "gap_ms": a.evidence["gap_ms"], "old_holder": a.evidence["old_holder"],
            "new_holder": a.evidence["new_holder"]})  # fmt: skip
    assert raised - taken_at <= 2, (raised, taken_at)
    assert a.severity == "critical"
    assert a.evidence["old_holder"] == old and a.evidence["new_holder"] == str(new)
    assert 0 <= a.evidence["last_pttl_ms"] <= 250
    assert a.evidence["ttl_ms"] is not None and a.evidence["ttl_ms"] > 5000
    # the holders are whole in the recording (the probe no longer cuts them)
    locks = [lk for tk in w.ticks for lk in tk.readings["redis"].data["locks"] if lk["key"] == key]
    assert {lk["holder"] for lk in locks} <= {old, str(new)}
    assert any(lk["holder"] == old for lk in locks)
    # the redis-lock detector's error path is not needed for it
    assert not any(
        a.kind == "redis-lock" and "expired_holder" in a.evidence
        for tk in w.ticks
        for a in tk.anomalies
    )


async def test_release_then_acquire_is_not_a_takeover(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    key = f"lock:rel{uuid.uuid4().hex[:8]}"
    w = Watch(redis_url)
    try:
        for i in range(6):  # short leases released well before they run out, then re-taken
            lk = r.lock(key, timeout=3)
            assert lk.acquire(blocking=False)
            await w.tick()
            await asyncio.sleep(0.3)
            lk.release()
            assert i >= 0
        # a lease renewed before it runs out (python-redis-lock's auto renewal)
        import redis_lock

        renewing = redis_lock.Lock(r, key.split(":", 1)[1] + "r", expire=1, auto_renewal=True)
        assert renewing.acquire(blocking=False)
        for _ in range(4):
            await w.tick()
        renewing.release()
    finally:
        await w.close()
        r.close()
    assert not [a for tk in w.ticks for a in tk.anomalies if a.kind == "lock-takeover"]


async def test_keyspace_expired_event_is_proof(own_redis: Any) -> None:
    admin = aioredis.Redis.from_url(own_redis.url)
    await admin.config_set("notify-keyspace-events", "Ex")  # the test's own server
    await admin.aclose()
    w, key, old, taken_at, new = await takeover_run(own_redis.url, "set-nx-px")
    hit = next(
        a
        for tk in w.ticks
        for a in tk.anomalies
        if a.kind == "lock-takeover" and a.evidence["key"] == key
    )
    assert hit.evidence["proof"] == "keyspace-expired"
    assert (hit.evidence["old_holder"], hit.evidence["new_holder"]) == (old, new)
    assert hit.started_tick - taken_at <= 2
    assert "server reported the expiry" in hit.summary
    assert w.ticks[-1].readings["redis"].data["keyspace_events"] is True


def test_holders_elide_in_the_middle() -> None:
    assert elide_middle(HOLDER_A, 80) == HOLDER_A
    short = elide_middle(HOLDER_A, 40)
    assert len(short) == 40 and short.startswith("worker-host-42:pid-7731:") and "…" in short
    assert short.endswith(HOLDER_A[-4:])
    assert len(elide_middle("x" * 256, 24)) == 24
