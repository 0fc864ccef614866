"""Built-in Redis scenarios. Each has an invariant in `verify`; each unsafe
variant exists to show that invariant catching the bug it is named after.

Keys live under `ctx.prefix` (`ctx.key(...)`), which the engine deletes (SCAN
prefix*) after `teardown`. Lock keys are named `<prefix>:lock:<tenant>` so the
Redis probe's default lock patterns (`*:lock:*`) show their holders and PTTL.

Shared bookkeeping (operation logs, counts) lives on the scenario instance,
which all workers of a run share; `stats()` returns it for tests and tools.

Long by design: the six built-in Redis scenarios, each with its safe and unsafe
mode, its parameters and its verify(); one module per target kind is the layout
users read.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, cast

from redis.typing import EncodableT, FieldT

from app.engine.errors import OperationError
from app.scenario import Context, Param, Scenario, ScenarioError

MODE = ("safe", "unsafe")

# compare-and-delete: release the lock only if we still hold it
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# a fixed-window counter: INCR, and give a new window its expiry, atomically
FIXED_WINDOW_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""

# a sliding-window log in a sorted set, timed by the server's clock (µs)
SLIDING_WINDOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local win = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
local admitted = 0
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(win / 1000) + 1000)
  admitted = 1
end
return {admitted, string.format('%.0f', now)}
"""

# produce: a job id from a sequence and the push, in one round trip
# (a full queue refuses: -1, so a long run cannot grow it without bound)
PRODUCE_LIST_LUA = """
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[1]) then return -1 end
local id = redis.call('INCR', KEYS[1])
redis.call('LPUSH', KEYS[2], id)
return id
"""
PRODUCE_STREAM_LUA = """
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[1]) then return -1 end
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], '*', 'job', id)
return id
"""


def _choice(name: str, param: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ScenarioError(f"{name}: -p {param}={value} is unknown: use {' or '.join(allowed)}")
    return value


def _positive(name: str, param: str, value: float) -> None:
    if value <= 0:
        raise ScenarioError(f"{name}: -p {param}={value} must be positive")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ---- redis-lock ------------------------------------------------------------------


class _TenantLockStats:
    __slots__ = ("acquired", "contended", "cross_example", "cross_tenant", "max_wait_ms",
                 "wait_ms")  # fmt: skip

    def __init__(self) -> None:
        self.acquired = 0  # critical sections entered
        self.contended = 0  # acquisitions that found the lock held
        self.wait_ms = 0.0  # total time spent waiting for the lock
        self.max_wait_ms = 0.0
        self.cross_tenant = 0  # waits on a lock held by another tenant
        self.cross_example = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "acquired": self.acquired,
            "contended": self.contended,
            "wait_ms": round(self.wait_ms, 3),
            "max_wait_ms": round(self.max_wait_ms, 3),
            "cross_tenant_waits": self.cross_tenant,
        }


class RedisLock(Scenario):
    name = "redis-lock"
    description = (
        "distributed lock (SET NX PX + compare-and-delete) guarding a non-atomic counter;"
        " a TTL shorter than the work makes double holders"
    )
    needs = ("redis",)
    parameters = {
        "impl": Param(str, "token", "token: SET NX PX + Lua compare-and-delete; redis-py:"
                      " redis.asyncio.lock.Lock", choices=("token", "redis-py")),
        "ttl_ms": Param(int, 5000, "lock TTL in ms; shorter than work_ms: locks expire while held",
                        min=1, max=86_400_000),
        "work_ms": Param(float, 1.0, "ms inside the critical section, between reading and"
                         " writing the counter", min=0, max=60_000),
        "tenants": Param(int, 1, "worker i belongs to tenant i % tenants, each with its own lock",
                         min=1, max=1_000_000),
        "scope": Param(str, "tenant", "tenant: a lock key per tenant; global: one key for all"
                       " (tenants wait on each other)", choices=("tenant", "global")),
        "acquire_timeout_ms": Param(float, 10_000.0, "give up waiting for the lock after this"
                                    " long: error 'lock timeout'", min=1, max=3_600_000),
        "retry_ms": Param(float, 2.0, "pause between acquisition attempts, jittered",
                          min=0.1, max=60_000),
    }  # fmt: skip

    def __init__(self, params: dict[str, str] | None = None) -> None:
        super().__init__(params)
        self.tenant_stats: dict[int, _TenantLockStats] = {}
        self.inside: dict[int, int] = {}  # tenant -> holders in the critical section now
        self.double_holders = 0  # entries that found another holder inside
        self.lost_locks = 0  # releases that found the lock gone or taken over
        self.sections = 0

    def _cfg(self, ctx: Context) -> dict[str, Any]:
        st = ctx.state
        cfg = st.get("cfg")
        if cfg is None:
            impl = _choice(self.name, "impl", ctx.param("impl", "token"), ("token", "redis-py"))
            scope = _choice(self.name, "scope", ctx.param("scope", "tenant"), ("tenant", "global"))
            tenants = ctx.param("tenants", 1)
            _positive(self.name, "tenants", tenants)
            ttl = ctx.param("ttl_ms", 5000)
            _positive(self.name, "ttl_ms", ttl)
            cfg = st["cfg"] = {
                "impl": impl,
                "scope": scope,
                "tenants": tenants,
                "ttl_ms": ttl,
                "work_s": max(ctx.param("work_ms", 1.0), 0.0) / 1000.0,
                "timeout_s": max(ctx.param("acquire_timeout_ms", 10_000.0), 1.0) / 1000.0,
                "retry_s": max(ctx.param("retry_ms", 2.0), 0.1) / 1000.0,
            }
        return cfg

    async def setup(self, ctx: Context) -> None:
        self._cfg(ctx)  # bad parameters fail before any load

    def _lock_key(self, ctx: Context, cfg: dict[str, Any], tenant: int) -> str:
        return ctx.key("lock", "all" if cfg["scope"] == "global" else f"t{tenant}")

    async def _note_holder(self, ctx: Context, key: str, tenant: int, ts: _TenantLockStats) -> None:
        """The lock was busy: whose is it? A holder of another tenant means
        tenants wait on each other."""
        assert ctx.redis is not None
        holder = await ctx.redis.get(key)
        if holder is None:
            return
        h = _text(holder)
        if h.startswith("t") and not h.startswith(f"t{tenant}:"):
            ts.cross_tenant += 1
            if not ts.cross_example:
                ts.cross_example = (
                    f"tenant {tenant} waited on {key} held by tenant {h.split(':')[0][1:]}"
                )

    async def _acquire_token(
        self, ctx: Context, cfg: dict[str, Any], key: str, token: str, tenant: int,
        ts: _TenantLockStats,
    ) -> None:  # fmt: skip
        r = ctx.redis
        assert r is not None
        if await r.set(key, token, nx=True, px=cfg["ttl_ms"]):
            return
        t0 = time.perf_counter()
        ts.contended += 1
        ctx.count("contended")
        await self._note_holder(ctx, key, tenant, ts)
        retry = cfg["retry_s"]
        while True:
            waited = time.perf_counter() - t0
            if waited > cfg["timeout_s"]:
                self._waited(ts, waited)
                raise OperationError("lock timeout", f"{key} not acquired in {waited:.2f}s")
            await asyncio.sleep(retry * (0.5 + ctx.rng.random()))
            if await r.set(key, token, nx=True, px=cfg["ttl_ms"]):
                self._waited(ts, time.perf_counter() - t0)
                return

    @staticmethod
    def _waited(ts: _TenantLockStats, seconds: float) -> None:
        ms = seconds * 1000.0
        ts.wait_ms += ms
        ts.max_wait_ms = max(ts.max_wait_ms, ms)

    async def run(self, ctx: Context) -> None:
        r = ctx.redis
        assert r is not None
        cfg = self._cfg(ctx)
        st = ctx.state
        tenant = ctx.worker % cfg["tenants"]
        ts = self.tenant_stats.get(tenant)
        if ts is None:
            ts = self.tenant_stats[tenant] = _TenantLockStats()
        key = self._lock_key(ctx, cfg, tenant)
        token = f"t{tenant}:w{ctx.worker}:{uuid.uuid4().hex[:12]}"
        lock: Any = None
        if cfg["impl"] == "token":
            if "release" not in st:
                st["release"] = r.register_script(RELEASE_LUA)
            await self._acquire_token(ctx, cfg, key, token, tenant, ts)
        else:
            from redis.asyncio.lock import Lock

            lock = Lock(r, key, timeout=cfg["ttl_ms"] / 1000.0, sleep=cfg["retry_s"],
                        blocking_timeout=cfg["timeout_s"], thread_local=False)  # fmt: skip
            if not await lock.acquire(blocking=False, token=token):
                ts.contended += 1
                ctx.count("contended")
                t0 = time.perf_counter()
                await self._note_holder(ctx, key, tenant, ts)
                ok = await lock.acquire(token=token)
                self._waited(ts, time.perf_counter() - t0)
                if not ok:
                    raise OperationError("lock timeout", f"{key} not acquired")
        ts.acquired += 1
        # the critical section: a read-modify-write the lock must protect
        counter, done = ctx.key("counter", f"t{tenant}"), ctx.key("done", f"t{tenant}")
        if cfg["scope"] == "global":
            counter, done = ctx.key("counter", "all"), ctx.key("done", "all")
        guard = -1 if cfg["scope"] == "global" else tenant
        inside = self.inside.get(guard, 0) + 1
        self.inside[guard] = inside
        if inside > 1:
            self.double_holders += 1
        try:
            n = int(await r.get(counter) or 0)
            if cfg["work_s"]:
                await asyncio.sleep(cfg["work_s"])
            async with r.pipeline(transaction=True) as p:
                p.set(counter, n + 1)
                p.incr(done)
                await p.execute()
            self.sections += 1
        finally:
            self.inside[guard] -= 1
            if lock is None:
                released = await st["release"](keys=[key], args=[token])
            else:
                from redis.exceptions import LockError

                try:
                    await lock.release()
                    released = 1
                except LockError:
                    released = 0
        if not released:
            self.lost_locks += 1
            raise OperationError(
                "lock expired while held",
                f"{key}: TTL {cfg['ttl_ms']} ms ran out inside the critical section",
            )

    async def verify(self, ctx: Context) -> list[str]:
        r = ctx.redis
        assert r is not None
        cfg = self._cfg(ctx)
        out: list[str] = []
        groups = ["all"] if cfg["scope"] == "global" else [f"t{t}" for t in range(cfg["tenants"])]
        lost_total = 0
        for g in groups:
            # one atomic read: the counter write and its `done` count commit together
            counter, done = await r.mget(ctx.key("counter", g), ctx.key("done", g))
            c, d = int(counter or 0), int(done or 0)
            if c != d:
                lost_total += d - c
                if len(out) < 5:
                    out.append(
                        f"mutual exclusion violated on {ctx.key('lock', g)}: guarded counter is {c}"
                        f" but {d} critical sections completed ({d - c} lost updates)"
                    )
        if lost_total and (self.double_holders or self.lost_locks):
            out.append(
                f"double holders: {self.double_holders} critical sections entered while another"
                f" holder was inside; {self.lost_locks} locks expired while held"
                f" (ttl_ms={cfg['ttl_ms']})"
            )
        for t, ts in sorted(self.tenant_stats.items()):
            if ts.cross_tenant:
                out.append(
                    f"tenants wait on each other: tenant {t} waited {ts.cross_tenant} times on a"
                    f" lock held by another tenant ({ts.cross_example})"
                )
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "sections": self.sections,
            "double_holders": self.double_holders,
            "lost_locks": self.lost_locks,
            "tenants": {t: s.as_dict() for t, s in sorted(self.tenant_stats.items())},
        }


# ---- redis-queue -----------------------------------------------------------------


class RedisQueue(Scenario):
    name = "redis-queue"
    description = (
        "producers and consumers over a list (LPUSH/BRPOP) or a stream consumer group;"
        " every job consumed exactly once (list), none lost (stream)"
    )
    needs = ("redis",)
    parameters = {
        "kind": Param(str, "list", "list: LPUSH / BRPOP; stream: XADD / XREADGROUP / XACK,"
                      " consumer group", choices=("list", "stream")),
        "produce_ratio": Param(float, 0.5, "share of operations that produce; above 0.5 the"
                               " backlog grows", min=0, max=1),
        "mode": Param(str, "safe", "unsafe: list consumers peek (LINDEX) then LREM, so two take"
                      " the same job; stream consumers XACK before processing, so a crash"
                      " loses the job", choices=MODE),
        "crash": Param(float, 0.0, "probability a consumer dies mid-job: a list loses the job"
                       " (BRPOP is at-most-once), a stream redelivers it to another consumer"
                       " (XAUTOCLAIM)", min=0, max=1),
        "block_ms": Param(int, 100, "how long a consumer blocks on an empty queue",
                          min=1, max=60_000),
        "claim_ms": Param(int, 1000, "stream: idle time before a pending job is claimed by"
                          " another consumer", min=1, max=3_600_000),
        "max_backlog": Param(int, 1_000_000, "a producer finding this many jobs queued is"
                             " refused: error 'queue full' (so a long run with produce_ratio"
                             " > 0.5 stays bounded)", min=1, max=1_000_000_000),
    }  # fmt: skip

    def __init__(self, params: dict[str, str] | None = None) -> None:
        super().__init__(params)
        self.produced = 0
        self.consumed = 0
        self.duplicates = 0  # a job processed again (list: a violation)
        self.redeliveries = 0  # stream: jobs claimed from a dead consumer
        self.crashes = 0
        self.active: set[int] = set()  # workers inside run() now (may hold a job in flight)
        self.last_backlog = 0
        self.max_backlog = 0
        self.last_pending = 0
        self.last_length = 0  # LLEN / XLEN at the last verify
        self.dup_example = ""

    def _cfg(self, ctx: Context) -> dict[str, Any]:
        cfg = ctx.state.get("cfg")
        if cfg is None:
            ratio = ctx.param("produce_ratio", 0.5)
            if not 0.0 <= ratio <= 1.0:
                raise ScenarioError(f"{self.name}: -p produce_ratio={ratio} must be in 0..1")
            cfg = ctx.state["cfg"] = {
                "kind": _choice(self.name, "kind", ctx.param("kind", "list"), ("list", "stream")),
                "mode": _choice(self.name, "mode", ctx.param("mode", "safe"), ("safe", "unsafe")),
                "ratio": ratio,
                "crash": ctx.param("crash", 0.0),
                "block_ms": max(ctx.param("block_ms", 100), 1),
                "claim_ms": max(ctx.param("claim_ms", 1000), 1),
                "max_backlog": max(ctx.param("max_backlog", 1_000_000), 1),
                "seq": ctx.key("seq"),
                "queue": ctx.key("queue", "jobs"),
                "done": ctx.key("consumed"),
                "group": "loadtop",
            }
        return cfg

    async def setup(self, ctx: Context) -> None:
        cfg = self._cfg(ctx)
        assert ctx.redis is not None
        if cfg["kind"] == "stream":
            await ctx.redis.xgroup_create(cfg["queue"], cfg["group"], id="0", mkstream=True)

    async def worker_stop(self, ctx: Context) -> None:
        self.active.discard(ctx.worker)

    async def run(self, ctx: Context) -> None:
        r = ctx.redis
        assert r is not None
        cfg = self._cfg(ctx)
        st = ctx.state
        if "produce" not in st:
            lua = PRODUCE_STREAM_LUA if cfg["kind"] == "stream" else PRODUCE_LIST_LUA
            st["produce"] = r.register_script(lua)
            st["ops"] = 0
        st["ops"] += 1
        self.active.add(ctx.worker)
        if ctx.rng.random() < cfg["ratio"]:
            job = await st["produce"](keys=[cfg["seq"], cfg["queue"]], args=[cfg["max_backlog"]])
            if int(job) < 0:
                raise OperationError("queue full", f"{cfg['max_backlog']} jobs queued")
            self.produced += 1
            return
        if cfg["kind"] == "list":
            await self._consume_list(ctx, cfg)
        else:
            await self._consume_stream(ctx, cfg)

    def _crash(self, ctx: Context, cfg: dict[str, Any], job: int) -> None:
        if cfg["crash"] and ctx.rng.random() < cfg["crash"]:
            self.crashes += 1
            raise OperationError("consumer crashed", f"worker {ctx.worker} died holding job {job}")

    async def _process(self, ctx: Context, cfg: dict[str, Any], job: int) -> bool:
        """Mark the job processed; False if it had been processed before."""
        assert ctx.redis is not None
        old = await ctx.redis.setbit(cfg["done"], job, 1)
        self.consumed += 1
        if old:
            self.duplicates += 1
            ctx.count("duplicate")
            if not self.dup_example:
                self.dup_example = f"job {job} (again by worker {ctx.worker})"
            return False
        return True

    async def _consume_list(self, ctx: Context, cfg: dict[str, Any]) -> None:
        r = ctx.redis
        assert r is not None
        q = cfg["queue"]
        if cfg["mode"] == "unsafe":
            raw = await r.lindex(q, -1)  # peek the oldest job ...
            if raw is None:
                await asyncio.sleep(cfg["block_ms"] / 1000.0)
                return
            job = int(raw)
            self._crash(ctx, cfg, job)
            await self._process(ctx, cfg, job)
            # ... and remove it later: two consumers got it. (redis-py types lrem's value
            # as str, but it sends bytes as they are, like every other value.)
            await r.lrem(q, -1, cast(str, raw))
            return
        got = await r.brpop([q], timeout=cfg["block_ms"] / 1000.0)
        if got is None:
            return
        job = int(got[1])
        self._crash(ctx, cfg, job)  # BRPOP already removed it: a crash loses it
        await self._process(ctx, cfg, job)

    async def _consume_stream(self, ctx: Context, cfg: dict[str, Any]) -> None:
        r = ctx.redis
        assert r is not None
        q, g, me = cfg["queue"], cfg["group"], f"w{ctx.worker}"
        messages: list[Any] = []
        if ctx.state["ops"] % 20 == 0:  # now and then, take over jobs of dead consumers
            claimed = await r.xautoclaim(q, g, me, min_idle_time=cfg["claim_ms"],
                                         start_id="0-0", count=10)  # fmt: skip
            messages = [m for m in claimed[1] if m and m[1]]
            self.redeliveries += len(messages)
            if messages:
                ctx.count("redelivered", len(messages))
        if not messages:
            got = await r.xreadgroup(g, me, {q: ">"}, count=1, block=cfg["block_ms"])
            if not got:
                return
            # redis-py types the RESP2 and RESP3 shapes together; this client speaks
            # RESP2 (the default): a list of [stream, messages]
            messages = cast(list[list[Any]], got)[0][1]
        for msg_id, fields in messages:
            job = int(fields.get(b"job", fields.get("job", 0)))
            if cfg["mode"] == "unsafe":
                await self._ack(r, q, g, msg_id)  # acknowledged before the work: a crash loses it
                self._crash(ctx, cfg, job)
                await self._process(ctx, cfg, job)
            else:
                await self._process(ctx, cfg, job)
                self._crash(ctx, cfg, job)  # processed, not acked: redelivered later
                await self._ack(r, q, g, msg_id)

    @staticmethod
    async def _ack(r: Any, stream: str, group: str, msg_id: Any) -> None:
        """XACK and XDEL together: acknowledged entries leave the stream, so an
        hour-long run does not grow it without bound, and XLEN is what is
        still owed (undelivered plus pending)."""
        async with r.pipeline(transaction=True) as p:
            p.xack(stream, group, msg_id)
            p.xdel(stream, msg_id)
            await p.execute()

    async def verify(self, ctx: Context) -> list[str]:
        r = ctx.redis
        assert r is not None
        cfg = self._cfg(ctx)
        in_flight = len(self.active)  # each live worker may hold one job
        async with r.pipeline(transaction=True) as p:
            p.get(cfg["seq"])
            p.bitcount(cfg["done"])
            if cfg["kind"] == "list":
                p.llen(cfg["queue"])
            else:
                p.xlen(cfg["queue"])
            seq, distinct, length = await p.execute()
        produced, distinct = int(seq or 0), int(distinct or 0)
        out: list[str] = []
        if cfg["kind"] == "list":
            backlog = self.last_length = int(length)
            lost = produced - distinct - backlog
            if self.duplicates:
                out.append(
                    f"jobs consumed more than once: {self.duplicates} duplicate deliveries"
                    f" (e.g. {self.dup_example})"
                )
        else:
            summary = await r.xpending(cfg["queue"], cfg["group"])
            pending = int(summary.get("pending", 0) or 0)
            owed = int(length)  # acked entries are deleted: the rest is undelivered or pending
            backlog = max(owed - pending, 0)
            self.last_pending = pending
            self.last_length = owed
            # every job not yet processed must still be in the stream
            lost = (produced - distinct) - owed
        self.last_backlog = backlog
        self.max_backlog = max(self.max_backlog, backlog)
        if lost > in_flight:
            why = (
                "popped by a consumer that died before processing it (BRPOP is at-most-once)"
                if cfg["kind"] == "list"
                else "acknowledged but never processed"
            )
            out.append(
                f"jobs lost: {lost} of {produced} produced were neither processed nor queued"
                f" ({why}; {in_flight} may be in flight)"
            )
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "consumed": self.consumed,
            "duplicates": self.duplicates,
            "redeliveries": self.redeliveries,
            "crashes": self.crashes,
            "backlog": self.last_backlog,
            "max_backlog": self.max_backlog,
            "pending": self.last_pending,
            "length": self.last_length,
        }


# ---- rate-limit ------------------------------------------------------------------


class RateLimit(Scenario):
    name = "rate-limit"
    description = "per-tenant rate limiter (fixed or sliding window); unsafe mode (GET, then INCR) over-admits"
    needs = ("redis",)
    parameters = {
        "limit": Param(int, 60, "admissions per tenant per window", min=1, max=1_000_000_000),
        "window_s": Param(float, 60.0, "window length in seconds", min=0.001, max=86_400),
        "algo": Param(str, "fixed", "fixed: INCR a per-window counter; sliding: sorted-set log,"
                      " server clock", choices=("fixed", "sliding")),
        "mode": Param(str, "safe", "safe: one atomic script; unsafe: read the count, then add"
                      " (over-admits)", choices=MODE),
        "tenants": Param(int, 10, "tenants; each operation picks one at random",
                         min=1, max=1_000_000),
    }  # fmt: skip

    def __init__(self, params: dict[str, str] | None = None) -> None:
        super().__init__(params)
        self.admitted = 0
        self.rejected = 0
        self.fixed: dict[tuple[int, int], int] = {}  # (tenant, window) -> admissions
        self.log: dict[int, list[int]] = {}  # sliding: tenant -> admission times, µs
        self.found: dict[tuple[int, int], int] = {}  # (tenant, window start) -> admitted
        self.worst: dict[int, int] = {}  # tenant -> most admissions seen in one window

    def _cfg(self, ctx: Context) -> dict[str, Any]:
        cfg = ctx.state.get("cfg")
        if cfg is None:
            limit, window = ctx.param("limit", 60), ctx.param("window_s", 60.0)
            tenants = ctx.param("tenants", 10)
            for p, v in (("limit", limit), ("window_s", window), ("tenants", tenants)):
                _positive(self.name, p, v)
            cfg = ctx.state["cfg"] = {
                "limit": limit,
                "window_ms": max(int(window * 1000), 1),
                "window_s": window,
                "tenants": tenants,
                "algo": _choice(
                    self.name, "algo", ctx.param("algo", "fixed"), ("fixed", "sliding")
                ),
                "mode": _choice(self.name, "mode", ctx.param("mode", "safe"), ("safe", "unsafe")),
            }
        return cfg

    async def setup(self, ctx: Context) -> None:
        self._cfg(ctx)

    async def run(self, ctx: Context) -> None:
        r = ctx.redis
        assert r is not None
        cfg = self._cfg(ctx)
        st = ctx.state
        tenant = ctx.rng.randrange(cfg["tenants"])
        limit, wms = cfg["limit"], cfg["window_ms"]
        if cfg["algo"] == "fixed":
            window = int(time.time() * 1000) // wms
            key = ctx.key("rl", f"t{tenant}", window)
            if cfg["mode"] == "safe":
                if "fixed" not in st:
                    st["fixed"] = r.register_script(FIXED_WINDOW_LUA)
                ok = int(await st["fixed"](keys=[key], args=[wms * 2])) <= limit
            else:
                ok = int(await r.get(key) or 0) < limit  # check ...
                if ok:  # ... then act: another worker may have counted meanwhile
                    async with r.pipeline(transaction=False) as p:
                        p.incr(key)
                        p.pexpire(key, wms * 2)
                        await p.execute()
            if ok:
                k = (tenant, window)
                self.fixed[k] = self.fixed.get(k, 0) + 1
        else:
            key = ctx.key("rl", f"t{tenant}")
            member = f"{ctx.worker}:{uuid.uuid4().hex[:10]}"
            if cfg["mode"] == "safe":
                if "sliding" not in st:
                    st["sliding"] = r.register_script(SLIDING_WINDOW_LUA)
                adm, now = await st["sliding"](keys=[key], args=[wms * 1000, limit, member])
                ok, at = bool(int(adm)), int(now)
            else:
                now_us = time.time_ns() // 1000
                async with r.pipeline(transaction=False) as p:
                    p.zremrangebyscore(key, "-inf", now_us - wms * 1000)
                    p.zcard(key)
                    _, count = await p.execute()
                ok = count < limit
                if ok:
                    at = time.time_ns() // 1000
                    async with r.pipeline(transaction=False) as p:
                        p.zadd(key, {member: at})
                        p.pexpire(key, wms + 1000)
                        await p.execute()
            if ok:
                self.log.setdefault(tenant, []).append(at)
        if ok:
            self.admitted += 1
            ctx.count("admitted")
        else:
            self.rejected += 1
            ctx.count("rejected")

    async def verify(self, ctx: Context) -> list[str]:
        cfg = self._cfg(ctx)
        limit = cfg["limit"]
        if cfg["algo"] == "fixed":
            newest = max((w for _, w in self.fixed), default=0)
            for (t, w), n in list(self.fixed.items()):
                if n > limit:
                    self.found[(t, w * cfg["window_ms"] * 1000)] = n
                    self.worst[t] = max(self.worst.get(t, 0), n)
                if w < newest - 2:
                    del self.fixed[(t, w)]
        else:
            wus = cfg["window_ms"] * 1000
            for t, times in self.log.items():
                times.sort()
                # limit + 1 admissions closer together than one window is an over-admission
                for i in range(len(times) - limit):
                    if times[i + limit] - times[i] < wus:
                        end = times[i] + wus
                        j = i + limit
                        while j + 1 < len(times) and times[j + 1] < end:
                            j += 1
                        n = j - i + 1
                        if n > self.found.get((t, times[i]), 0):
                            self.found[(t, times[i])] = n
                        self.worst[t] = max(self.worst.get(t, 0), n)
                if times:  # keep what a later, slightly out-of-order admission could join
                    keep_from = times[-1] - wus - 5_000_000
                    cut = 0
                    while cut < len(times) - limit and times[cut] < keep_from:
                        cut += 1
                    del times[:cut]
            if len(self.found) > 10_000:
                self.found = dict(list(self.found.items())[-1000:])
        if not self.worst:
            return []
        total = len(self.found)
        out = [
            f"rate limit exceeded: tenant {t} admitted up to {n} requests in one"
            f" {cfg['window_s']:g}s window (limit {limit})"
            for t, n in sorted(self.worst.items(), key=lambda kv: -kv[1])[:5]
        ]
        out.append(f"over-admitting windows so far: {total} ({cfg['algo']} window, {cfg['mode']})")
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "rejected": self.rejected,
            "over_admitting_windows": len(self.found),
            "worst": dict(self.worst),
        }


# ---- session-isolation -------------------------------------------------------------


class SessionIsolation(Scenario):
    name = "session-isolation"
    description = (
        "each worker writes and reads back its own session hash; no read may return another's"
    )
    needs = ("redis",)
    parameters = {
        "mode": Param(str, "safe", "unsafe: the current session id is shared state across an"
                      " await (a module-level 'current session'), so reads pick up another"
                      " worker's session", choices=MODE),
        "ttl_s": Param(int, 300, "session TTL in seconds", min=1, max=30 * 86_400),
        "fields": Param(int, 4, "payload fields per session", min=0, max=10_000),
    }  # fmt: skip

    def __init__(self, params: dict[str, str] | None = None) -> None:
        super().__init__(params)
        self.current = ""  # unsafe mode: the shared "current session"
        self.reads = 0
        self.leaks = 0
        self.stale = 0
        self.example = ""

    async def setup(self, ctx: Context) -> None:
        _choice(self.name, "mode", ctx.param("mode", "safe"), ("safe", "unsafe"))

    async def run(self, ctx: Context) -> None:
        r = ctx.redis
        assert r is not None
        st = ctx.state
        if "key" not in st:
            st["key"] = ctx.key("session", f"w{ctx.worker}")
            st["unsafe"] = ctx.param("mode", "safe") == "unsafe"
            st["ttl"] = max(ctx.param("ttl_s", 300), 1)
            st["fields"] = max(ctx.param("fields", 4), 0)
            st["n"] = 0
        st["n"] += 1
        nonce = f"{st['n']}:{ctx.rng.getrandbits(32):08x}"
        mine = st["key"]
        data: dict[FieldT, EncodableT] = {"owner": str(ctx.worker), "nonce": nonce}
        for i in range(st["fields"]):
            data[f"f{i}"] = f"w{ctx.worker}-{i}"
        if st["unsafe"]:
            self.current = mine
        async with r.pipeline(transaction=False) as p:
            p.hset(mine, mapping=data)
            p.expire(mine, st["ttl"])
            await p.execute()
        read_key = self.current if st["unsafe"] else mine
        got = await r.hgetall(read_key)
        self.reads += 1
        owner = _text(got.get(b"owner", got.get("owner", "")))
        if owner != str(ctx.worker):
            self.leaks += 1
            whose = f"worker {owner}'s session" if owner else f"{read_key} (not written yet)"
            if not self.example:
                self.example = f"worker {ctx.worker} read {whose}"
            raise OperationError("session leak", f"worker {ctx.worker} read {whose}")
        if _text(got.get(b"nonce", got.get("nonce", ""))) != nonce:
            self.stale += 1
            raise OperationError("stale session read", f"worker {ctx.worker} read an old write")

    async def verify(self, ctx: Context) -> list[str]:
        out = []
        if self.leaks:
            out.append(
                f"session isolation violated: {self.leaks} of {self.reads} reads returned another"
                f" worker's session (e.g. {self.example})"
            )
        if self.stale:
            out.append(
                f"read-your-writes violated: {self.stale} reads missed the worker's own write"
            )
        return out

    def stats(self) -> dict[str, Any]:
        return {"reads": self.reads, "leaks": self.leaks, "stale": self.stale}


# ---- redis-getset ------------------------------------------------------------------


class RedisGetSet(Scenario):
    name = "redis-getset"
    processes_ok = True
    description = "plain GET/SET on random keys: the generator's own cost against redis-benchmark"
    needs = ("redis",)
    writes = True
    parameters = {
        "keys": Param(int, 10_000, "key space (the key names are kept in memory)",
                      min=1, max=5_000_000),
        "set_ratio": Param(float, 0.5, "share of operations that SET", min=0, max=1),
        "value_size": Param(int, 3, "bytes per value (as redis-benchmark -d)",
                            min=0, max=1_048_576),
        "conn": Param(str, "own", "own: each worker keeps one connection (the fast path);"
                      " pool: borrow per command", choices=("own", "pool")),
        "socket_timeout_s": Param(float, 0.0, "conn=own: per-command socket timeout (0 = none:"
                                  " on Python 3.11 redis-py's timeout costs ~25 µs per command,"
                                  " ~20% here; a hung server then shows as throughput falling"
                                  " to zero, and stop/panic still end the workers)",
                                  min=0, max=3600),
    }  # fmt: skip

    def __init__(self, params: dict[str, str] | None = None) -> None:
        super().__init__(params)
        self.keys: list[str] = []

    async def prepare(self, ctx: Context) -> None:
        _choice(self.name, "conn", ctx.param("conn", "own"), ("own", "pool"))
        # built once per process for all its workers: a per-worker list costs
        # seconds at 50+ workers
        self.keys = [ctx.key("k", i) for i in range(max(ctx.param("keys", 10_000), 1))]

    async def run(self, ctx: Context) -> None:
        st = ctx.state
        r = st.get("r")
        if r is None:
            r = ctx.redis
            assert r is not None
            if ctx.param("conn", "own") == "own":
                import redis.asyncio as aioredis

                # the worker's own connection for its whole life (like ctx.conn for
                # Postgres), with the run's connection settings but its own timeout
                kwargs = dict(r.connection_pool.connection_kwargs)
                kwargs["socket_timeout"] = ctx.param("socket_timeout_s", 0.0) or None
                pool = aioredis.ConnectionPool(max_connections=1, **kwargs)
                r = aioredis.Redis(connection_pool=pool, single_connection_client=True)
            st["r"] = r
            st["keys"] = self.keys or [ctx.key("k", 0)]
            st["value"] = b"x" * max(ctx.param("value_size", 3), 0)
            st["ratio"] = ctx.param("set_ratio", 0.5)
        rnd = ctx.rng.random()
        key = st["keys"][int(rnd * 1_000_003) % len(st["keys"])]
        if rnd < st["ratio"]:
            await r.set(key, st["value"])
        else:
            await r.get(key)

    async def worker_stop(self, ctx: Context) -> None:
        r = ctx.state.pop("r", None)
        if r is not None and r is not ctx.redis:
            await r.aclose(close_connection_pool=True)
