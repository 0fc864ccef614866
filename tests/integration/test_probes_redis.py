"""The Redis probe against a real Redis-protocol server: locks taken the way
redis-py and python-redis-lock take them, each queue layout populated with the
commands its library issues, INFO figures, the slow log, the latency monitor,
and a server that goes away and comes back."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.probes.base import ProbeSet, run_poll
from app.probes.redis import KOMBU_SEP, RedisProbe
from tests.helpers import wait_for_reading

pytestmark = pytest.mark.integration


@pytest.fixture
async def r(redis_url: str):
    c = aioredis.Redis.from_url(redis_url, client_name="loadtop:test:w1")
    yield c
    await c.aclose()


async def cleanup(c: aioredis.Redis, *patterns: str) -> None:
    for p in patterns:
        keys = [k async for k in c.scan_iter(match=p, count=500)]
        if keys:
            await c.delete(*keys)


def by_key(data: dict, run_id: str) -> dict[str, dict]:
    return {lk["key"]: lk for lk in data["locks"] if run_id in lk["key"]}


def queue(data: dict, layout: str, name: str) -> dict:
    for q in data["queues"]:
        if q["layout"] == layout and q["name"] == name:
            return q
    raise AssertionError(f"no {layout} queue {name!r} in {[q['name'] for q in data['queues']]}")


async def test_locks_with_and_without_ttl(r: aioredis.Redis, redis_url: str, run_id: str) -> None:
    probe = RedisProbe(redis_url)
    try:
        # redis-py Lock: SET name uuid1-hex NX PX ms; timeout=None means no expiry
        with_ttl = r.lock(f"lock:orders:{run_id}", timeout=30)
        no_ttl = r.lock(f"inventory:{run_id}:lock")
        assert await with_ttl.acquire(blocking=False)
        assert await no_ttl.acquire(blocking=False)
        # python-redis-lock style: lock:<name> with a base64 token and EX
        await r.set(f"lock:report:{run_id}", "Zm9vYmFyYmF6cXV4MTIzNDU2", nx=True, ex=60)
        # a hash under a lock pattern is not a lock token; a big value is read only in part
        await r.hset(f"locks:{run_id}", mapping={"a": "1"})
        await r.set(f"lock:big:{run_id}", "x" * 1_000_000, ex=60)

        r1 = await run_poll(probe)
        assert r1.ok, r1.error
        locks = by_key(r1.data, run_id)
        assert set(locks) == {
            f"lock:orders:{run_id}", f"inventory:{run_id}:lock", f"lock:report:{run_id}",
            f"lock:big:{run_id}",
        }  # fmt: skip
        # holders are read whole up to 256 bytes (issue 11: host and pid must survive)
        assert locks[f"lock:big:{run_id}"]["holder"] == "x" * 256
        assert locks[f"lock:big:{run_id}"]["holder_truncated"] is True
        t1 = with_ttl.local.token.decode()
        a = locks[f"lock:orders:{run_id}"]
        assert a["holder"] == t1 and "holder_truncated" not in a
        assert 25_000 < a["pttl_ms"] <= 30_000 and a["no_ttl"] is False
        b = locks[f"inventory:{run_id}:lock"]
        assert b["pttl_ms"] is None and b["no_ttl"] is True
        assert 0 <= a["token_age_s"] < 5  # read from redis-py's uuid1 token
        assert "token_age_s" not in locks[f"lock:report:{run_id}"]  # not a uuid1 token
        assert locks[f"lock:report:{run_id}"]["holder"] == "Zm9vYmFyYmF6cXV4MTIzNDU2"

        await asyncio.sleep(0.4)
        r2 = await run_poll(probe)
        locks = by_key(r2.data, run_id)
        assert locks[f"lock:orders:{run_id}"]["age_s"] >= 0.4  # same (key, token): held on

        # released and re-acquired by someone else: a new holder, a new age
        await with_ttl.release()
        other = r.lock(f"lock:orders:{run_id}", timeout=30)
        assert await other.acquire(blocking=False)
        await no_ttl.release()
        r3 = await run_poll(probe)
        locks = by_key(r3.data, run_id)
        assert f"inventory:{run_id}:lock" not in locks
        a = locks[f"lock:orders:{run_id}"]
        assert a["holder"] == other.local.token.decode()
        assert a["age_s"] < 0.3
        await other.release()
    finally:
        await cleanup(r, f"*{run_id}*")
        await probe.close()


async def test_lock_cap_and_scan_never_keys(r: aioredis.Redis, redis_url: str, run_id: str) -> None:
    probe = RedisProbe(redis_url, lock_patterns=[f"cap:{run_id}:*"], max_lock_keys=3)
    try:
        for i in range(6):
            await r.set(f"cap:{run_id}:{i}", f"holder-{i}", px=20_000)
        pipe = r.pipeline(transaction=False)
        for i in range(2000):  # keys the probe must walk past, in several SCAN calls
            pipe.set(f"noise:{run_id}:{i}", "x", ex=60)
        await pipe.execute()
        before = await r.info("commandstats")
        rd = await run_poll(probe)
        after = await r.info("commandstats")
        assert rd.ok, rd.error
        assert len(rd.data["locks"]) == 3 and rd.data["locks_truncated"] is True
        assert before.get("cmdstat_keys", {}).get("calls", 0) == after.get("cmdstat_keys", {}).get(
            "calls", 0
        )
        assert after["cmdstat_scan"]["calls"] > before.get("cmdstat_scan", {}).get("calls", 0)
    finally:
        await cleanup(r, f"cap:{run_id}:*", f"noise:{run_id}:*")
        await probe.close()


async def test_queue_layouts(r: aioredis.Redis, redis_url: str, run_id: str) -> None:
    now = time.time()
    cq, rq, sq, bq, st = (f"{x}_{run_id}" for x in ("celq", "rqq", "skq", "bq", "stream"))
    try:
        # Celery / kombu: binding set, LPUSH onto the queue list and its priority lists,
        # delivered-but-unacked messages in the `unacked` hash and `unacked_index` zset
        await r.sadd(f"_kombu.binding.{cq}", KOMBU_SEP.join([cq, "", cq]))
        for i in range(3):
            await r.lpush(cq, json.dumps({"body": "e30=", "headers": {"id": f"t{i}"}}))
        await r.lpush(f"{cq}{KOMBU_SEP}3", json.dumps({"body": "e30="}))
        await r.hset("unacked", f"tag-{run_id}", json.dumps([{"body": "e30="}, "", cq]))
        await r.zadd("unacked_index", {f"tag-{run_id}": now})

        # RQ: queue registered in rq:queues, job hash, RPUSH id; started and failed registries
        old = (datetime.now(UTC) - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await r.sadd("rq:queues", f"rq:queue:{rq}")
        for i in range(4):
            jid = f"{run_id}-{i}"
            await r.hset(f"rq:job:{jid}", mapping={"status": "queued", "origin": rq,
                                                    "enqueued_at": old})  # fmt: skip
            await r.rpush(f"rq:queue:{rq}", jid)
        await r.zadd(f"rq:wip:{rq}", {f"{run_id}-9:exec1": now + 180})
        await r.zadd(f"rq:failed:{rq}", {f"{run_id}-8": now, f"{run_id}-7": now})

        # Sidekiq: SADD queues, LPUSH queue:<q> JSON payloads (enqueued_at in ms, 8.x),
        # a process with busy workers, retry and dead sets
        await r.sadd("queues", sq)
        for i in range(5):
            payload = {"class": "HardJob", "jid": f"{run_id}{i}", "queue": sq,
                       "enqueued_at": int((now - 20 + i) * 1000)}  # fmt: skip
            await r.lpush(f"queue:{sq}", json.dumps(payload))
        await r.sadd("processes", f"host:1:{run_id}")
        await r.hset(f"host:1:{run_id}", mapping={"busy": 2, "beat": now})
        await r.zadd("retry", {f"r-{run_id}": now})
        await r.zadd("dead", {f"d-{run_id}": now})

        # BullMQ (prefix bull): meta hash, job hashes, LPUSH wait, active list with job lock,
        # prioritized/delayed zsets, failed zset, the events stream
        await r.hset(f"bull:{bq}:meta", mapping={"opts.maxLenEvents": 10000})
        for jid in range(1, 7):
            await r.hset(f"bull:{bq}:{jid}", mapping={"name": "job", "data": "{}",
                                                      "timestamp": int((now - 12) * 1000)})  # fmt: skip
        await r.lpush(f"bull:{bq}:wait", "1", "2", "3")
        await r.zadd(f"bull:{bq}:prioritized", {"4": 1})
        await r.zadd(f"bull:{bq}:delayed", {"5": (now + 60) * 1000 * 4096})
        await r.lpush(f"bull:{bq}:active", "6")
        await r.set(f"bull:{bq}:6:lock", f"worker-token-{run_id}", px=30_000)
        await r.zadd(f"bull:{bq}:failed", {"7": now * 1000})
        await r.xadd(f"bull:{bq}:events", {"event": "added", "jobId": "1"})

        # Streams: XADD; a group that read 3 and acked 1, a group that read nothing
        for i in range(5):
            await r.xadd(st, {"n": i})
        await r.xgroup_create(st, "workers", id="0")
        await r.xgroup_create(st, "audit", id="0")
        got = await r.xreadgroup("workers", "c1", {st: ">"}, count=3)
        await r.xack(st, "workers", got[0][1][0][0])

        probe = RedisProbe(redis_url)
        rd = await run_poll(probe)
        assert rd.ok, rd.error
        d = rd.data

        c = queue(d, "celery", cq)
        assert c["depth"] == 4 and c["in_flight"] >= 1

        q = queue(d, "rq", rq)
        assert (q["depth"], q["in_flight"], q["failed"]) == (4, 1, 2)
        assert 29 <= q["oldest_age_s"] <= 40

        s = queue(d, "sidekiq", sq)
        assert (s["depth"], s["in_flight"]) == (5, 2)
        assert s["failed"] >= 1 and s["retry"] >= 1  # dead is failed; retry is its own figure
        assert 19 <= s["oldest_age_s"] <= 30

        b = queue(d, "bullmq", bq)
        # 3 wait + 1 prioritized; the job delayed a minute is scheduled, not backlog (issue 11)
        assert (b["depth"], b["in_flight"], b["failed"], b["scheduled"]) == (4, 1, 1, 1)
        assert 11 <= b["oldest_age_s"] <= 25
        assert not any(x["name"] == f"bull:{bq}:events" for x in d["queues"])
        assert any(lk["key"] == f"bull:{bq}:6:lock" for lk in d["locks"])  # job lock

        x = queue(d, "stream", st)
        assert x["length"] == 5
        groups = {g["name"]: g for g in x["groups"]}
        assert groups["workers"]["pending"] == 2 and groups["workers"]["lag"] == 2
        assert groups["audit"]["pending"] == 0 and groups["audit"]["lag"] == 5
        assert x["depth"] == 5 and x["in_flight"] == 2

        # two layouts with a queue of the same name stay apart
        await r.sadd("rq:queues", f"rq:queue:{sq}")
        await r.rpush(f"rq:queue:{sq}", "x")
        d1 = (await run_poll(probe)).data
        assert queue(d1, "sidekiq", f"sidekiq:{sq}")["depth"] == 5
        assert queue(d1, "rq", f"rq:{sq}")["depth"] == 1
        await r.srem("rq:queues", f"rq:queue:{sq}")
        await r.delete(f"rq:queue:{sq}")
        probe.queues.rq.discard(sq)

        # growth shows on the next poll
        await r.rpush(f"rq:queue:{rq}", f"{run_id}-5")
        await r.xadd(st, {"n": 5})
        d2 = (await run_poll(probe)).data
        assert queue(d2, "rq", rq)["depth"] == 5
        assert queue(d2, "stream", st)["depth"] == 6
        await probe.close()
    finally:
        await cleanup(r, f"*{run_id}*")
        await r.srem("rq:queues", f"rq:queue:{rq}")
        await r.srem("queues", sq)
        await r.srem("processes", f"host:1:{run_id}")
        await r.hdel("unacked", f"tag-{run_id}")
        await r.zrem("unacked_index", f"tag-{run_id}")
        await r.zrem("retry", f"r-{run_id}")
        await r.zrem("dead", f"d-{run_id}")


async def test_generic_queue_patterns(r: aioredis.Redis, redis_url: str, run_id: str) -> None:
    probe = RedisProbe(redis_url, queue_patterns=[f"jobs:{run_id}:*"])
    try:
        await r.rpush(f"jobs:{run_id}:emails", *range(7))
        await r.zadd(f"jobs:{run_id}:scheduled", {"a": 1, "b": 2})
        await r.set(f"jobs:{run_id}:counter", 3)  # a string is not a queue
        d = (await run_poll(probe)).data
        assert queue(d, "list", f"jobs:{run_id}:emails")["depth"] == 7
        assert queue(d, "zset", f"jobs:{run_id}:scheduled")["depth"] == 2
        assert not any(q["name"] == f"jobs:{run_id}:counter" for q in d["queues"])
        await r.delete(f"jobs:{run_id}:emails")
        d = (await run_poll(probe)).data
        assert queue(d, "list", f"jobs:{run_id}:emails")["depth"] == 0  # drained, still shown
    finally:
        await cleanup(r, f"jobs:{run_id}:*")
        await probe.close()


async def test_info_figures_client_name_and_blocked_clients(
    r: aioredis.Redis, redis_url: str, run_id: str
) -> None:
    probe = RedisProbe(redis_url)
    blocker = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        first = await run_poll(probe)
        assert first.ok, first.error
        names = [c.get("name") for c in await r.client_list()]
        assert "loadtop:probe" in names
        task = asyncio.create_task(blocker.blpop([f"empty:{run_id}"], timeout=3))
        pipe = r.pipeline(transaction=False)
        for _ in range(2000):
            pipe.set(f"ops:{run_id}", 1)
        await pipe.execute()
        await asyncio.sleep(0.2)
        d = (await run_poll(probe)).data
        assert d["blocked_clients"] >= 1
        assert d["ops_per_sec"] > 100
        assert d["maxclients"] and d["maxclients"] >= 100
        assert d["used_memory"] > 0 and d["role"] == "master"
        assert d["version"] and d["evicted_keys_delta"] == 0
        await r.lpush(f"empty:{run_id}", "x")
        await task
    finally:
        await cleanup(r, f"*{run_id}*")
        await blocker.aclose()
        await probe.close()


async def test_slowlog_and_latency_monitor(own_redis) -> None:
    c = aioredis.Redis.from_url(own_redis.url, client_name="loadtop:slow:w1")
    probe = RedisProbe(own_redis.url)
    try:
        first = (await run_poll(probe)).data
        assert first["latency"] == "off" and first["slowlog"] == []
        await c.config_set("slowlog-log-slower-than", 0)
        await c.config_set("latency-monitor-threshold", 1)
        await c.eval("local i = 0 while i < 3000000 do i = i + 1 end return i", 0)
        await c.set("k", "v")
        probe2 = RedisProbe(own_redis.url)  # reads the latency monitor's config anew
        await run_poll(probe2)
        await c.get("k")
        d = (await run_poll(probe)).data
        cmds = [e["command"] for e in d["slowlog"]]
        assert any(x.startswith("GET k") for x in cmds), cmds
        assert all(e["client"] != "loadtop:probe" for e in d["slowlog"])
        assert "SLOWLOG" not in " ".join(cmds)  # its own commands are left out
        d2 = (await run_poll(probe2)).data
        assert isinstance(d2["latency"], list)
        assert any(e["event"] == "command" and e["max_ms"] >= 1 for e in d2["latency"])
        await probe2.close()
    finally:
        await c.aclose()
        await probe.close()


async def test_server_goes_away_and_comes_back(own_redis) -> None:
    ps = ProbeSet([RedisProbe(own_redis.url, interval=0.2, timeout=1.0)])

    def wait_for(ok: bool, timeout: float) -> Any:
        return wait_for_reading(ps, "redis", ok, timeout)

    await ps.start()
    try:
        await wait_for(True, 5)
        await asyncio.to_thread(own_redis.stop)
        await wait_for(False, 5)
        rd = ps.latest()["redis"]
        assert "redis" in rd.error and ("will" in rd.error or "check" in rd.error), rd.error
        await asyncio.to_thread(own_redis.start)
        await wait_for(True, 10)
    finally:
        await ps.stop()


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("lock:*", ["lock:a", "lock:", "lock:a:b"], ["locks:a", "xlock:a"]),
        ("*:lock", ["a:lock", ":lock"], ["a:lock:b", "a:locks"]),
        ("job?", ["job1", "jobs"], ["job", "job12"]),
        ("q[ab]", ["qa", "qb"], ["qc", "qab"]),
        ("q[^ab]", ["qc"], ["qa"]),
        ("q[a-c]x", ["qbx"], ["qdx"]),
        ("a\\*b", ["a*b"], ["axb"]),
        ("a.b+c", ["a.b+c"], ["axbbc"]),
    ],
)
def test_redis_glob_semantics(pattern: str, yes: list[str], no: list[str]) -> None:
    from app.probes.redis import glob_regex

    rx = glob_regex([pattern])
    assert all(rx.match(k) for k in yes), pattern
    assert not any(rx.match(k) for k in no), pattern
