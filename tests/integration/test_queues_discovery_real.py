"""Issue 11 discovery and false alarms, on a private Valkey (two databases of
our own, so no other engineer's clients are in the picture):

- hand-made queues found with no configuration: an LPUSH/BRPOP list, a BLMOVE
  `jobs:pending` with its `jobs:processing` / `jobs:failed` siblings (in flight
  and failed, not queues of their own), a sorted set scored by due time (due
  vs future), a stream with a consumer group;
- not queues: a stream with no group (an event log), python-redis-lock's signal
  list, a leaderboard zset; a key that looks like a lock or queue but matches
  nothing becomes a hint;
- an unrelated BLPOP client on ANOTHER database disconnecting raises nothing;
  the consumers of THIS database's queue going away raises consumers-gone;
- a consumer group whose consumer reads and never acknowledges raises
  queue-pending with the group and consumer names.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.integration.test_queues_real_libs import Watch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def db_url(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


async def test_hand_made_queues_and_false_alarms(own_redis: Any) -> None:
    url = db_url(own_redis.url, 0)
    r = aioredis.Redis.from_url(url)
    other = aioredis.Redis.from_url(db_url(own_redis.url, 1), socket_timeout=None)
    stop = asyncio.Event()
    stop_consumers = asyncio.Event()
    now = time.time()

    async def producer() -> None:
        c = aioredis.Redis.from_url(url)
        n = 0
        try:
            while not stop.is_set():  # ~40/s, a little more than the consumers serve
                for _ in range(4):
                    n += 1
                    await c.lpush("queue:emails", f"mail-{n}")
                    await c.rpush("jobs:pending", f"job-{n}")
                await asyncio.sleep(0.1)
        finally:
            await c.aclose()

    async def brpop_consumer() -> None:
        c = aioredis.Redis.from_url(url, socket_timeout=None)
        try:
            while not stop_consumers.is_set():
                if await c.brpop(["queue:emails"], timeout=0.3):
                    await asyncio.sleep(0.06)  # the work: ~16 jobs/s per consumer
        finally:
            await c.aclose()

    async def blmove_consumer() -> None:
        c = aioredis.Redis.from_url(url, socket_timeout=None)
        n = 0
        try:
            while not stop_consumers.is_set():
                job = await c.blmove("jobs:pending", "jobs:processing", 0.3, "LEFT", "RIGHT")
                if job is None:
                    continue
                n += 1
                await asyncio.sleep(0.03)
                if n % 10 == 0:
                    await c.rpush("jobs:failed", job)
                await c.lrem("jobs:processing", 1, job)
        finally:
            await c.aclose()

    async def unrelated_blpop() -> None:  # an idle client on database 1
        with contextlib.suppress(Exception):
            await other.blpop(["nothing:here"], timeout=0)

    # fixed structures
    await r.zadd("delayed:jobs", {f"due-{i}": now - 5 for i in range(4)})
    await r.zadd("delayed:jobs", {f"later-{i}": now + 600 for i in range(6)})
    await r.zadd("game:leaderboard", {f"player-{i}": i * 10 for i in range(50)})
    for i in range(30):
        await r.xadd("events:log", {"n": i})  # no consumer group: an event log
    await r.lpush("lock-signal:report", 1)
    await r.set("myapp_mutex_orders", "host-7:pid-12")  # a lock nobody configured
    # a loadtop run's own scenario keys look like locks too, but are never a hint
    await r.set("loadtop_0b9a85e4_redis_lock:lock:done:t0", 1)
    await r.set("loadtop_0b9a85e4_redis_queue:jobs:counter", 7)
    for i in range(5):
        await r.xadd("orders:stream", {"n": i})
    await r.xgroup_create("orders:stream", "billing", id="0")
    await r.rpush("jobs:failed", "old-failure")

    tasks = [
        asyncio.create_task(producer()),
        asyncio.create_task(brpop_consumer()),
        asyncio.create_task(brpop_consumer()),
        asyncio.create_task(blmove_consumer()),
    ]
    blpop = asyncio.create_task(unrelated_blpop())
    w = Watch(url)
    try:
        for _ in range(8):
            await w.tick()
        data = w.data
        names = {q["key"]: q for q in data["queues"]}
        assert set(names) == {"queue:emails", "jobs:pending", "delayed:jobs", "orders:stream"}, (
            sorted(names)
        )
        pend = names["jobs:pending"]
        # read while the consumer works: ground truth a moment later may have moved on
        assert abs(pend["in_flight"] - await r.llen("jobs:processing")) <= 1
        assert 0 <= await r.llen("jobs:failed") - pend["failed"] <= 4 and pend["failed"] >= 1
        dz = names["delayed:jobs"]
        assert (dz["depth"], dz["scheduled"]) == (4, 6)
        assert 4.0 <= dz["oldest_age_s"] <= 20.0
        em = names["queue:emails"]
        # blocked pops on database 0 (2 BRPOP + 1 BLMOVE), not the BLPOP on database 1;
        # the server does not say which key each waits on: indirect evidence
        # (a consumer busy with a job is not blocked, so the count moves between polls)
        counts = [
            q["consumers"]["count"]
            for tk in w.ticks
            for q in tk.readings["redis"].data["queues"]
            if q["key"] == "queue:emails"
        ]
        # the consumers are always busy here (arrivals outpace them), so none is blocked
        # at a poll: the BLPOP blocked all along on database 1 is never counted
        assert em["layout"] == "list" and max(counts) <= 3 and min(counts) == 0, counts
        assert em["consumers"]["evidence"] == "indirect" and em["consumers"]["db"] == 0
        rates = [
            q["consumed_per_s"]
            for tk in w.ticks
            for q in tk.readings["redis"].data["queues"]
            if q["key"] == "queue:emails" and q.get("consumed_per_s") is not None
        ]
        assert rates and max(rates) > 5  # about 20/s arrive and are consumed
        assert any("myapp_mutex_orders" in h for h in data.get("hints", ())), data.get("hints")
        assert data["unmatched_keys"] == ["myapp_mutex_orders"]

        # the unrelated client on database 1 goes away: nothing about our queues
        mark = len(w.ticks)
        await other.aclose()
        blpop.cancel()
        for _ in range(5):
            await w.tick()
        after = [a for tk in w.ticks[mark:] for a in tk.anomalies if ":queue:" in a.subject]
        stray = [a for a in after if a.evidence.get("queue") in ("queue:emails", "jobs:pending")]
        assert not stray, [a.summary for a in stray]

        # our consumers go away while the producer goes on
        stop_consumers.set()
        gone_at = len(w.ticks)
        for _ in range(9):
            await w.tick()
        first: dict[str, int] = {}
        for tk in w.ticks[gone_at:]:
            for a in tk.anomalies:
                first.setdefault(f"{a.kind}:{a.evidence.get('queue')}", tk.index)
        # busy consumers were never seen blocked, so their absence is not evidence;
        # what shows is a queue nobody consumes and a backlog that grows
        assert "queue-stuck:queue:emails" in first, first
        assert first["queue-stuck:queue:emails"] - gone_at <= 7
        series = [
            (tk.index, q["depth"], q.get("consumed_per_s"))
            for tk in w.ticks
            for q in tk.readings["redis"].data["queues"]
            if q["key"] == "jobs:pending"
        ]
        assert "queue-stuck:jobs:pending" in first, (series[gone_at:], gone_at)
        stuck = next(
            a
            for a in w.ticks[-1].anomalies
            if a.kind == "queue-stuck" and a.evidence["queue"] == "queue:emails"
        )
        assert stuck.severity == "critical" and stuck.evidence["consumed_per_s"] == 0
        assert "consumers-gone:queue:emails" not in first  # no evidence about them
        # never: the event log, the leaderboard, the signal list, the sibling lists
        listed = {q["key"] for tk in w.ticks for q in tk.readings["redis"].data["queues"]}
        assert not listed & {
            "events:log", "game:leaderboard", "lock-signal:report", "jobs:processing",
            "jobs:failed",
        }  # fmt: skip
        assert not [a for tk in w.ticks for a in tk.anomalies if "events:log" in a.subject]
    finally:
        stop.set()
        stop_consumers.set()
        await asyncio.wait(tasks, timeout=5)
        blpop.cancel()
        await w.close()
        with contextlib.suppress(Exception):
            await other.aclose()
        await r.aclose()


async def test_consumer_group_that_never_acks(own_redis: Any) -> None:
    url = own_redis.url
    r = aioredis.Redis.from_url(url)
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await r.xadd("payments", {"amount": 1})
            await asyncio.sleep(0.005)

    async def reader() -> None:  # reads, never XACKs
        c = aioredis.Redis.from_url(url, socket_timeout=None)
        try:
            while not stop.is_set():
                await c.xreadgroup("settle", "worker-7", {"payments": ">"}, count=50, block=200)
        finally:
            await c.aclose()

    await r.xgroup_create("payments", "settle", id="$", mkstream=True)
    tasks = [asyncio.create_task(produce()), asyncio.create_task(reader())]
    w = Watch(url)
    try:
        for _ in range(10):
            await w.tick()
            if any(a.kind == "queue-pending" for a in w.ticks[-1].anomalies):
                break
        a = next(a for a in w.ticks[-1].anomalies if a.kind == "queue-pending")
        assert a.evidence["group"] == "settle" and a.evidence["queue"] == "payments"
        assert "do not acknowledge" in a.summary
        q = next(q for q in w.data["queues"] if q["key"] == "payments")
        pending = (await r.xpending("payments", "settle"))["pending"]
        assert abs(q["in_flight"] - pending) <= 400  # read a moment apart while it grows
        cons = q["groups"][0]["consumer_list"]
        assert cons[0]["name"] == "worker-7" and cons[0]["pending"] > 0
        assert len(w.ticks) <= 8  # raised within a few ticks of the growth
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=5)
        await w.close()
        await r.aclose()
