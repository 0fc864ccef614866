"""The Redis probe: server health, lock holders and queue backlogs.

One connection of its own (`CLIENT SETNAME loadtop:probe`, `CLIENT NO-TOUCH
ON` where the server has it, so reading lock values does not change their
LRU age), a handful of round trips per poll:

- discovery: SCAN with COUNT 500 (never KEYS), a bounded number of calls per
  poll, resumed on the next poll, so a large keyspace costs the same per poll
  as a small one (a small one is swept completely every poll). One cursor
  classifies key names (lock patterns, queue patterns, Celery/RQ/Sidekiq/BullMQ
  layouts); a second one (`TYPE stream`) finds streams. Keys once found are
  re-read every poll until they are gone.
- INFO figures, SLOWLOG entries new since the last poll, LATENCY LATEST.
- lock keys: value (the holder's token, shortened) and PTTL; the hold age is
  the time since this (key, value) pair was first seen.
- queues: depth, in flight, failed, oldest item's age where the layout stores
  it, and for streams each consumer group's pending and lag.

Figures leave the probe out: its connection, its commands and its slow-log
entries. The data's shape is `RedisReading` in `app.probes.schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.probes.base import PROBE_APP_NAME, Probe, describe_exception
from app.probes.schema import RedisLock, RedisQueue

DEFAULT_LOCK_PATTERNS = ("lock:*", "*:lock", "*:lock:*", "locks:*")
SCAN_COUNT = 500
SCAN_CALLS_PER_POLL = 8
MAX_LOCK_KEYS = 200
MAX_QUEUES = 100
HOLDER_CHARS = 16
TOKEN_BYTES = 128
UUID1_EPOCH = 0x01B21DD213814000  # 100-ns intervals from 1582-10-15 to 1970-01-01
CONFIG_EVERY_S = 30.0
IRRELEVANT_CACHE = 200_000  # key names known to match nothing (cleared when full)
FORGET_EMPTY_S = 60.0  # a drained queue shows depth 0 this long, then is forgotten
# Keys SCAN found and the probe follows, at most this many of each kind (the
# first in name order, the ones it polls, are kept; a dropped key that still
# exists is found again by a later sweep). A lock or a queue per order id
# would otherwise grow these sets for as long as the session runs.
KEEP_LOCK_KEYS = 10 * MAX_LOCK_KEYS
KEEP_QUEUE_KEYS = 10 * MAX_QUEUES

KOMBU_SEP = "\x06\x16"
KOMBU_PRIORITIES = ("", "3", "6", "9")
BULL_SUFFIXES = (
    "wait", "paused", "active", "meta", "prioritized", "delayed", "failed", "completed",
    "id", "events", "marker", "stalled", "stalled-check", "waiting-children", "limiter",
    "repeat", "pc", "de",
)  # fmt: skip
_BULL_RE = re.compile(
    rf"^(?P<prefix>[^:]+):(?P<q>.+):(?:{'|'.join(map(re.escape, BULL_SUFFIXES))})$"
)
_RQ_RE = re.compile(r"^rq:queue:(?P<q>.+)$")


def glob_regex(patterns: Sequence[str]) -> re.Pattern[str]:
    """Redis glob patterns (`*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\\x`) as one regex."""
    alts = []
    for pat in patterns:
        out, i = [], 0
        while i < len(pat):
            c = pat[i]
            if c == "\\" and i + 1 < len(pat):
                out.append(re.escape(pat[i + 1]))
                i += 2
                continue
            if c == "*":
                out.append(".*")
            elif c == "?":
                out.append(".")
            elif c == "[":
                j = pat.find("]", i + 1)
                if j == -1:
                    out.append(re.escape(c))
                else:
                    body = pat[i + 1 : j]
                    neg = body.startswith("^")
                    body = body[1:] if neg else body
                    out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]")
                    i = j + 1
                    continue
            else:
                out.append(re.escape(c))
            i += 1
        alts.append("".join(out))
    return re.compile("(?s:" + "|".join(f"(?:{a})" for a in alts) + r")\Z")


def redis_target(url: str) -> str:
    try:
        u = urlsplit(url)
        return f"{u.hostname or 'localhost'}:{u.port or 6379}"
    except ValueError:
        return "the configured server"


def shorten(token: str, n: int = HOLDER_CHARS) -> str:
    return token if len(token) <= n else token[: n - 1] + "…"


def _s(b: Any) -> str:
    if isinstance(b, bytes):
        return b.decode("utf-8", "backslashreplace")
    return "" if b is None else str(b)


def _int(x: Any) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) else 0


class _Batch:
    """A pipeline whose replies are read back by the index `add` returned."""

    def __init__(self, r: aioredis.Redis) -> None:
        self.pipe = r.pipeline(transaction=False)
        self.n = 0
        self.res: list[Any] = []

    def add(self, *args: Any) -> int:
        self.pipe.execute_command(*args)
        self.n += 1
        return self.n - 1

    async def run(self) -> list[Any]:
        self.res = await self.pipe.execute(raise_on_error=False) if self.n else []
        return self.res

    def get(self, i: int | None, default: Any = None) -> Any:
        if i is None:
            return default
        v = self.res[i]
        return default if isinstance(v, Exception) else v


class RedisProbe(Probe):
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        lock_patterns: Sequence[str] | None = None,
        queue_patterns: Sequence[str] | None = None,
        max_lock_keys: int = MAX_LOCK_KEYS,
        scan_calls_per_poll: int = SCAN_CALLS_PER_POLL,
        bullmq_prefixes: Sequence[str] = ("bull",),
    ) -> None:
        super().__init__(interval=interval, timeout=timeout)
        self.url = url
        self.target = redis_target(url)
        self.lock_patterns = tuple(lock_patterns or DEFAULT_LOCK_PATTERNS)
        self.queue_patterns = tuple(queue_patterns or ())
        self.max_lock_keys = max_lock_keys
        self.scan_calls = max(1, scan_calls_per_poll)
        self.bullmq_prefixes = tuple(bullmq_prefixes)
        self._lock_re = glob_regex(self.lock_patterns)
        self._queue_re = glob_regex(self.queue_patterns) if self.queue_patterns else None
        self._bull_starts = tuple(f"{p}:" for p in self.bullmq_prefixes)
        self._irrelevant: set[bytes] = set()
        self._r: aioredis.Redis | None = None
        self._cursor = 0
        self._stream_cursor = 0
        self._lock_keys: set[bytes] = set()
        self._generic: dict[bytes, str | None] = {}  # key -> TYPE (None until known)
        self._streams: set[bytes] = set()
        self._generic_alive: dict[bytes, float] = {}  # key -> last seen non-empty
        self._celery_bindings: set[bytes] = {b"_kombu.binding.celery"}
        self._rq: set[str] = set()
        self._sidekiq: set[str] = set()
        self._bull: set[tuple[str, str]] = set()
        self._first_seen: dict[bytes, tuple[bytes, float]] = {}  # key -> (token, first seen)
        self._prev: tuple[float, dict[str, int]] | None = None
        self._own_cmds = 0  # commands the probe sent since the last INFO
        self._slowlog_last: int | None = None
        self._config: dict[str, Any] = {}
        self._config_at = 0.0

    # ---- connection -------------------------------------------------------------
    async def _client(self) -> aioredis.Redis:
        if self._r is None:
            r = aioredis.Redis.from_url(
                self.url,
                single_connection_client=True,
                client_name=PROBE_APP_NAME,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                protocol=2,
                decode_responses=False,
            )
            try:
                with contextlib.suppress(rexc.ResponseError):  # 7.2+ / Valkey 8+
                    await r.execute_command("CLIENT", "NO-TOUCH", "ON")
            except Exception:
                await r.aclose()
                raise
            self._r = r
        return self._r

    async def reset(self) -> None:
        r, self._r = self._r, None
        if r is not None:
            # bounded: redis-py's disconnect awaits wait_closed(), which can hang
            # on a half-closed socket (redis/redis-py#3941)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(r.aclose(), 2)

    async def close(self) -> None:
        await self.reset()

    def describe(self, exc: BaseException) -> str:
        return describe_redis_error(exc, self.target)

    # ---- one poll ---------------------------------------------------------------
    async def poll(self) -> dict[str, Any]:
        r = await self._client()
        cmds = 0
        now_mono = time.monotonic()
        cmds += await self._discover(r)

        b1 = _Batch(r)
        i_info = b1.add("INFO")
        refresh_config = now_mono - self._config_at > CONFIG_EVERY_S
        i_cfg = [b1.add("CONFIG GET", k) for k in ("maxclients", "latency-monitor-threshold")]
        if not refresh_config:
            i_cfg = []
        i_slow = b1.add("SLOWLOG GET", 128)
        i_lat = b1.add("LATENCY", "LATEST")
        i_rqset = b1.add("SMEMBERS", "rq:queues")
        i_skset = b1.add("SMEMBERS", "queues")
        i_skproc = b1.add("SMEMBERS", "processes")
        i_bind = {k: b1.add("SMEMBERS", k) for k in sorted(self._celery_bindings)}
        untyped = [k for k, t in self._generic.items() if t is None][:MAX_QUEUES]
        i_type = {k: b1.add("TYPE", k) for k in untyped}
        locks = sorted(self._lock_keys)
        truncated = len(locks) > self.max_lock_keys
        locks = locks[: self.max_lock_keys]
        # GETRANGE, not GET: a token is short, a big value under a lock pattern is not read
        i_lock = {k: (b1.add("PTTL", k), b1.add("GETRANGE", k, 0, TOKEN_BYTES - 1)) for k in locks}
        await b1.run()
        cmds += b1.n
        seen_at = time.time()

        info = b1.get(i_info, {})
        if isinstance(info, bytes | str):
            info = {}
        if i_cfg:
            self._config_at = now_mono
            for i in i_cfg:
                v = b1.get(i, [])
                if isinstance(v, dict):
                    self._config.update({_s(k): _s(x) for k, x in v.items()})
                elif isinstance(v, list) and len(v) == 2:
                    self._config[_s(v[0])] = _s(v[1])

        data: dict[str, Any] = self._info_figures(info, now_mono)
        data["locks"], data["locks_truncated"] = self._locks(b1, i_lock, seen_at), truncated
        data["slowlog"] = self._slowlog(b1.res[i_slow])
        data["latency"] = self._latency(b1.res[i_lat])

        # queue layouts
        for m in b1.get(i_rqset, set()) or ():
            mm = _RQ_RE.match(_s(m))
            if mm:
                self._rq.add(mm["q"])
        # capped: a `queues` or `processes` set of some other application must not
        # turn into thousands of reads per poll
        self._sidekiq |= set(sorted(_s(m) for m in b1.get(i_skset, set()) or ())[:MAX_QUEUES])
        processes = sorted(b1.get(i_skproc, set()) or ())[:MAX_QUEUES]
        celery: dict[str, str] = {}  # queue name -> key prefix
        for key, i in i_bind.items():
            members = b1.get(i, set()) or ()
            if not members and key != b"_kombu.binding.celery":
                self._celery_bindings.discard(key)
            prefix = _s(key)[: _s(key).index("_kombu.binding.")]
            for m in members:
                parts = _s(m).split(KOMBU_SEP)
                if len(parts) == 3 and parts[2]:
                    celery[parts[2]] = prefix
        for k, i in i_type.items():
            t = _s(b1.get(i, b"none"))
            if t in ("list", "zset", "stream"):
                self._generic[k] = t
            else:
                self._generic.pop(k, None)

        queues, cmds2 = await self._queues(r, celery, processes, seen_at)
        cmds += cmds2
        data["queues"] = queues
        self._own_cmds = cmds
        return data

    async def _discover(self, r: aioredis.Redis) -> int:
        """Advance both SCAN cursors (names, and TYPE stream) by at most
        `scan_calls` steps, the two cursors sharing one round trip per step."""
        calls = 0
        names_done = streams_done = False
        for _ in range(self.scan_calls):
            b = _Batch(r)
            i_names = None if names_done else b.add("SCAN", self._cursor, "COUNT", SCAN_COUNT)
            i_streams = (
                None
                if streams_done
                else b.add("SCAN", self._stream_cursor, "COUNT", SCAN_COUNT, "TYPE", "stream")
            )
            res = await b.pipe.execute()  # a SCAN error fails the poll, as it should
            b.res = res
            calls += b.n
            if i_names is not None:
                self._cursor, keys = int(res[i_names][0]), res[i_names][1]
                for k in keys:
                    self._classify(k)
                names_done = self._cursor == 0
            if i_streams is not None:
                self._stream_cursor, keys = int(res[i_streams][0]), res[i_streams][1]
                for k in keys:
                    if not self._bull_match(_s(k)):
                        self._streams.add(k)
                streams_done = self._stream_cursor == 0
            if names_done and streams_done:
                break
        self._bound_discovered()
        return calls

    def _bound_discovered(self) -> None:
        """Cap what discovery keeps (see KEEP_LOCK_KEYS)."""
        if len(self._lock_keys) > KEEP_LOCK_KEYS:
            self._lock_keys = set(sorted(self._lock_keys)[:KEEP_LOCK_KEYS])
        if len(self._streams) > KEEP_QUEUE_KEYS:
            self._streams = set(sorted(self._streams)[:KEEP_QUEUE_KEYS])
        if len(self._generic) > KEEP_QUEUE_KEYS:
            keep = sorted(self._generic)[:KEEP_QUEUE_KEYS]
            self._generic = {k: self._generic[k] for k in keep}
        for k in [k for k in self._generic_alive if k not in self._generic]:
            del self._generic_alive[k]
        if len(self._rq) > KEEP_QUEUE_KEYS:
            self._rq = set(sorted(self._rq)[:KEEP_QUEUE_KEYS])
        if len(self._bull) > KEEP_QUEUE_KEYS:
            self._bull = set(sorted(self._bull)[:KEEP_QUEUE_KEYS])
        if len(self._celery_bindings) > KEEP_QUEUE_KEYS:
            self._celery_bindings = set(sorted(self._celery_bindings)[:KEEP_QUEUE_KEYS])

    def _bull_match(self, name: str) -> re.Match[str] | None:
        m = _BULL_RE.match(name)
        return m if m and m["prefix"] in self.bullmq_prefixes else None

    def _classify(self, key: bytes) -> None:
        if key in self._irrelevant:
            return
        name = _s(key)
        if "_kombu.binding." in name:
            self._celery_bindings.add(key)
            return
        if name.startswith(self._bull_starts):
            m = self._bull_match(name)
            if m and ":" not in m["q"]:
                self._bull.add((m["prefix"], m["q"]))
                return
            # BullMQ job locks (bull:<q>:<id>:lock) go on to the lock patterns
        if name.startswith("rq:queue:"):
            self._rq.add(name[len("rq:queue:") :])
            return
        if self._lock_re.match(name):
            self._lock_keys.add(key)
            return
        if self._queue_re is not None and self._queue_re.match(name):
            self._generic.setdefault(key, None)
            return
        # a name that matches nothing never will: skip it on the next sweeps
        if len(self._irrelevant) > IRRELEVANT_CACHE:
            self._irrelevant.clear()
        self._irrelevant.add(key)

    # ---- INFO -------------------------------------------------------------------
    def _info_figures(self, info: dict[str, Any], now: float) -> dict[str, Any]:
        def num(k: str) -> int:
            v = info.get(k)
            try:
                return int(v) if v is not None else 0
            except (TypeError, ValueError):
                return 0

        counters = {
            k: num(k)
            for k in (
                "total_commands_processed", "evicted_keys", "rejected_connections",
                "keyspace_hits", "keyspace_misses", "expired_keys",
            )
        }  # fmt: skip
        version = info.get("valkey_version") or info.get("redis_version") or ""
        out: dict[str, Any] = {
            "version": _s(version),
            "server": "valkey" if info.get("valkey_version") or info.get("server_name") == "valkey"
            else "redis",
            "role": _s(info.get("role", "")),
            "connected_clients": max(0, num("connected_clients") - 1),  # not the probe
            "blocked_clients": num("blocked_clients"),
            "used_memory": num("used_memory"),
            "maxmemory": num("maxmemory"),
            "maxmemory_policy": _s(info.get("maxmemory_policy", "")),
            "mem_fragmentation_ratio": info.get("mem_fragmentation_ratio"),
        }  # fmt: skip
        maxclients = info.get("maxclients") or self._config.get("maxclients")
        out["maxclients"] = int(maxclients) if maxclients not in (None, "") else None
        if info.get("master_link_status") is not None:
            out["master_link_status"] = _s(info["master_link_status"])
        if self._prev is None:
            out["ops_per_sec"] = float(info.get("instantaneous_ops_per_sec") or 0)
            for k in ("evicted_keys", "rejected_connections", "keyspace_hits", "keyspace_misses"):
                out[f"{k}_delta"] = 0
        else:
            t0, prev = self._prev
            dt = max(now - t0, 1e-6)
            d = {k: counters[k] - prev.get(k, 0) for k in counters}
            if any(v < 0 for v in d.values()):  # restart or CONFIG RESETSTAT
                d = dict.fromkeys(counters, 0)
            own = self._own_cmds
            out["ops_per_sec"] = round(max(0, d["total_commands_processed"] - own) / dt, 1)
            for k in ("evicted_keys", "rejected_connections", "keyspace_hits", "keyspace_misses"):
                out[f"{k}_delta"] = d[k]
        self._prev = (now, counters)
        return out

    # ---- locks ------------------------------------------------------------------
    def _locks(self, b: _Batch, idx: dict[bytes, tuple[int, int]], now: float) -> list[RedisLock]:
        out: list[RedisLock] = []
        for key, (ip, ig) in idx.items():
            pttl, val = b.res[ip], b.res[ig]
            if isinstance(pttl, int) and pttl == -2:  # gone
                self._lock_keys.discard(key)
                self._first_seen.pop(key, None)
                continue
            if isinstance(val, Exception) or val is None:
                if isinstance(val, rexc.ResponseError) and "WRONGTYPE" in str(val):
                    self._lock_keys.discard(key)  # a hash or a set: not a lock token
                continue
            prev = self._first_seen.get(key)
            if prev is None or prev[0] != val:
                prev = self._first_seen[key] = (val, now)
            p = pttl if isinstance(pttl, int) else None
            lock: RedisLock = {
                "key": _s(key),
                "holder": shorten(_s(val)),
                "pttl_ms": None if p is None or p < 0 else p,
                "age_s": round(now - prev[1], 3),
                "no_ttl": p == -1,
            }
            t = uuid1_time(val)
            if t is not None and 0 <= now - t < 7 * 86400:
                lock["token_age_s"] = round(now - t, 3)
            out.append(lock)
        for k in list(self._first_seen):
            if k not in self._lock_keys:
                del self._first_seen[k]
        out.sort(key=lambda lk: (-lk["age_s"], lk["key"]))
        return out

    # ---- slow log and latency monitor --------------------------------------------
    def _slowlog(self, res: Any) -> list[dict[str, Any]] | str:
        if isinstance(res, Exception):
            return "unavailable"
        entries = res if isinstance(res, list) else []
        last = self._slowlog_last
        ids = [int(e["id"]) for e in entries if isinstance(e, dict) and "id" in e]
        if ids:
            self._slowlog_last = max(ids) if last is None else max(last, *ids)
        elif last is None:
            self._slowlog_last = -1
        if last is None:
            return []  # older entries predate this session
        new = []
        for e in entries:
            if not isinstance(e, dict) or int(e.get("id", -1)) <= last:
                continue
            if _s(e.get("client_name")) == PROBE_APP_NAME:
                continue
            cmd = e.get("command")
            cmd = _s(b" ".join(cmd) if isinstance(cmd, list) else cmd)
            new.append(
                {
                    "id": int(e["id"]),
                    "ts": int(e.get("start_time", 0)),
                    "duration_us": int(e.get("duration", 0)),
                    "command": cmd[:200],
                    "client": _s(e.get("client_name")) or _s(e.get("client_address")),
                }
            )
        new.sort(key=lambda x: x["id"])
        return new

    def _latency(self, res: Any) -> list[dict[str, Any]] | str:
        if isinstance(res, Exception):
            return "unavailable"
        rows = res if isinstance(res, list) else []
        if not rows and str(self._config.get("latency-monitor-threshold", "0")) == "0":
            return "off"
        out = []
        for row in rows:
            if isinstance(row, list) and len(row) >= 4:
                out.append(
                    {
                        "event": _s(row[0]),
                        "ts": int(row[1]),
                        "latest_ms": int(row[2]),
                        "max_ms": int(row[3]),
                    }
                )
        return out

    # ---- queues -----------------------------------------------------------------
    async def _queues(
        self, r: aioredis.Redis, celery: dict[str, str], processes: list[Any], now: float
    ) -> tuple[list[RedisQueue], int]:
        b = _Batch(r)
        plans: list[tuple[RedisQueue, dict[str, Any]]] = []
        claimed: set[str] = set()

        if celery:
            prefixes = sorted(set(celery.values()))
            i_unacked = {p: b.add("HLEN", f"{p}unacked") for p in prefixes}
            for q, p in sorted(celery.items()):
                keys = [f"{p}{q}{KOMBU_SEP + pri if pri else ''}" for pri in KOMBU_PRIORITIES]
                claimed |= set(keys)
                plans.append(
                    (
                        {"name": q, "layout": "celery", "key": f"{p}{q}",
                         "note": "in flight (unacked) is shared by all Celery queues"},
                        {"depth": [b.add("LLEN", k) for k in keys], "in_flight": [i_unacked[p]]},
                    )
                )  # fmt: skip
        for q in sorted(self._rq):
            key = f"rq:queue:{q}"
            claimed.add(key)
            plans.append(
                (
                    {"name": q, "layout": "rq", "key": key},
                    {
                        "depth": [b.add("LLEN", key)],
                        "in_flight": [b.add("ZCARD", f"rq:wip:{q}")],
                        "failed": [b.add("ZCARD", f"rq:failed:{q}")],
                        "head": b.add("LINDEX", key, 0),
                    },
                )
            )
        if self._sidekiq:
            i_retry, i_dead = b.add("ZCARD", "retry"), b.add("ZCARD", "dead")
            for q in sorted(self._sidekiq):
                key = f"queue:{q}"
                claimed.add(key)
                plans.append(
                    (
                        {"name": q, "layout": "sidekiq", "key": key,
                         "note": "in flight (busy) and failed (retry + dead) are shared by all "
                                 "Sidekiq queues"},
                        {"depth": [b.add("LLEN", key)], "failed": [i_retry, i_dead],
                         "head": b.add("LINDEX", key, -1)},
                    )
                )  # fmt: skip
        for prefix, q in sorted(self._bull):
            base = f"{prefix}:{q}"
            claimed |= {f"{base}:wait", f"{base}:active", f"{base}:events"}
            plans.append(
                (
                    {"name": q, "layout": "bullmq", "key": base},
                    {
                        "depth": [
                            b.add("LLEN", f"{base}:wait"),
                            b.add("LLEN", f"{base}:paused"),
                            b.add("ZCARD", f"{base}:prioritized"),
                            b.add("ZCARD", f"{base}:delayed"),
                            b.add("ZCARD", f"{base}:waiting-children"),
                        ],
                        "in_flight": [b.add("LLEN", f"{base}:active")],
                        "failed": [b.add("ZCARD", f"{base}:failed")],
                        "head": b.add("LINDEX", f"{base}:wait", -1),
                        "exists": b.add("EXISTS", f"{base}:meta", f"{base}:wait", f"{base}:id"),
                    },
                )
            )
        streams = set(self._streams)
        for k, t in self._generic.items():
            if _s(k) in claimed or t is None:
                continue
            if t == "stream":
                streams.add(k)
            else:
                cmd = "LLEN" if t == "list" else "ZCARD"
                plans.append(
                    ({"name": _s(k), "layout": t, "key": _s(k)}, {"depth": [b.add(cmd, k)]})
                )
        for k in sorted(streams)[:MAX_QUEUES]:
            plans.append(
                (
                    {"name": _s(k), "layout": "stream", "key": _s(k)},
                    {"length": b.add("XLEN", k), "groups": b.add("XINFO GROUPS", k)},
                )
            )
        if self._sidekiq:
            i_busy = [b.add("HGET", p, "busy") for p in processes]
        await b.run()
        cmds = b.n

        out: list[RedisQueue] = []
        heads: list[tuple[RedisQueue, str, bytes]] = []
        busy = sum(int(b.get(i, 0) or 0) for i in i_busy) if self._sidekiq else 0
        for q, idx in plans:
            if "exists" in idx and not b.get(idx["exists"], 0):
                self._bull.discard((q["key"].split(":", 1)[0], q["name"]))
                continue
            if "length" in idx:  # stream
                length = b.get(idx["length"], 0)
                groups_raw = b.get(idx["groups"], [])
                if isinstance(b.res[idx["length"]], Exception) or (
                    length == 0 and isinstance(b.res[idx["groups"]], Exception)
                ):
                    self._streams.discard(q["key"].encode())
                    continue
                groups = []
                for g in groups_raw or []:
                    groups.append(
                        {
                            "name": _s(g.get("name")),
                            "consumers": _int(g.get("consumers")),
                            "pending": _int(g.get("pending")),
                            "lag": g.get("lag") if isinstance(g.get("lag"), int) else None,
                            "last_delivered_id": _s(g.get("last-delivered-id")),
                        }
                    )
                q["length"] = length
                q["groups"] = groups
                lags = [g["lag"] for g in groups]
                q["depth"] = max(lags) if groups and all(x is not None for x in lags) else length
                q["in_flight"] = sum(g["pending"] for g in groups) if groups else None
                q["failed"] = None
                q["oldest_age_s"] = None
                out.append(q)
                continue
            q["depth"] = sum(_int(b.get(i, 0)) for i in idx["depth"])
            q["in_flight"] = (
                sum(_int(b.get(i, 0)) for i in idx["in_flight"]) if "in_flight" in idx else None
            )
            if q["layout"] == "sidekiq":
                q["in_flight"] = busy
            q["failed"] = sum(_int(b.get(i, 0)) for i in idx["failed"]) if "failed" in idx else None
            q["oldest_age_s"] = None
            if q["layout"] in ("list", "zset"):
                k = q["key"].encode()
                if q["depth"]:
                    self._generic_alive[k] = now
                elif now - self._generic_alive.setdefault(k, now) > FORGET_EMPTY_S:
                    # an empty list or zset no longer exists: forget it after a while
                    self._generic.pop(k, None)
                    self._generic_alive.pop(k, None)
                    continue
            head = b.get(idx.get("head"))
            if head:
                heads.append((q, q["layout"], head))
            out.append(q)

        cmds += await self._oldest(r, heads, now)
        # names are what detectors and panes key on: make them unique across layouts
        count: dict[str, int] = {}
        for q in out:
            count[q["name"]] = count.get(q["name"], 0) + 1
        for q in out:
            if count[q["name"]] > 1:
                q["name"] = f"{q['layout']}:{q['name']}"
        out.sort(key=lambda q: (-(q.get("depth") or 0), q["name"]))
        return out[:MAX_QUEUES], cmds

    async def _oldest(
        self, r: aioredis.Redis, heads: list[tuple[RedisQueue, str, bytes]], now: float
    ) -> int:
        """Age of each queue's oldest item, where the layout stores an enqueue time."""
        b = _Batch(r)
        lookups: list[tuple[RedisQueue, str, int]] = []
        for q, layout, head in heads:
            if layout == "sidekiq":
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    ts = float(json.loads(head)["enqueued_at"])
                    q["oldest_age_s"] = round(max(0.0, now - (ts / 1000 if ts > 1e11 else ts)), 3)
            elif layout == "rq":
                lookups.append((q, "rq", b.add("HGET", f"rq:job:{_s(head)}", "enqueued_at")))
            elif layout == "bullmq":
                lookups.append((q, "bullmq", b.add("HGET", f"{q['key']}:{_s(head)}", "timestamp")))
        if not lookups:
            return 0
        await b.run()
        for q, layout, i in lookups:
            v = b.get(i)
            if v is None:
                continue
            with contextlib.suppress(ValueError, TypeError):
                if layout == "rq":
                    ts = datetime.fromisoformat(_s(v).replace("Z", "+00:00")).timestamp()
                else:
                    ts = int(v) / 1000.0
                q["oldest_age_s"] = round(max(0.0, now - ts), 3)
        return b.n


def uuid1_time(token: bytes) -> float | None:
    """The Unix time inside a redis-py Lock token (`uuid1().hex`): when its
    acquire attempt started, so an upper bound on how long it has been held."""
    if len(token) != 32:
        return None
    try:
        u = uuid.UUID(hex=token.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if u.version != 1:
        return None
    return (u.time - UUID1_EPOCH) / 1e7


def describe_redis_error(exc: BaseException, target: str) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError):
        return f"{msg}: check the user and password in the Redis URL for {target}"
    if isinstance(exc, rexc.NoPermissionError) or msg.startswith("NOPERM"):
        return (
            f"{msg}: allow the probe's ACL user +info +scan +type +get +pttl +llen +zcard +xlen "
            "+xinfo +smembers +hlen +hget +lindex +slowlog|get +latency|latest +client|setname"
        )
    if isinstance(exc, rexc.BusyLoadingError):
        return f"{msg}: {target} is loading its dataset; the probe will retry"
    if isinstance(exc, rexc.TimeoutError):
        return f"redis at {target} did not answer in time: it is overloaded or unreachable; the probe will retry"
    if isinstance(exc, rexc.ConnectionError):
        low = msg.lower()
        if "refused" in low:
            return (
                f"cannot connect to redis at {target} (connection refused): "
                "check that the server is up and the URL's host and port"
            )
        if "max number of clients" in low:
            return f"{target} has reached maxclients: the probe will retry; raise maxclients"
        return f"connection to redis at {target} failed ({msg}): the probe will reconnect"
    if isinstance(exc, rexc.ResponseError):
        return f"{msg}: the redis probe will retry"
    return describe_exception("redis", exc)
