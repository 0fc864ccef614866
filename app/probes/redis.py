"""The Redis probe: server health, lock holders and queue backlogs.

One connection of its own (`CLIENT SETNAME loadtop:probe`, `CLIENT NO-TOUCH
ON` where the server has it, so reading lock values does not change their
LRU age), a handful of round trips per poll:

- discovery: SCAN with COUNT 500 (never KEYS), a bounded number of calls per
  poll, resumed on the next poll, so a large keyspace costs the same per poll
  as a small one (a small one is swept completely every poll). One cursor
  classifies key names (lock patterns, queue patterns, library layouts); three
  more (`TYPE list|zset|stream`) find queues by what their keys are
  (app/probes/redis_queues.py). Keys once found are re-read every poll until
  they are gone.
- INFO figures, SLOWLOG entries new since the last poll, LATENCY LATEST,
  CLIENT LIST (clients blocked in a pop on this database, client names).
- lock keys: value (the holder, whole up to 256 bytes) and PTTL; the hold age
  is the time since this (key, value) pair was first seen. Locks about to
  expire are watched every 50 ms for a takeover (app/probes/redis_locks.py).
- queues: depth (ready items), scheduled, in flight, failed, retry, the oldest
  ready item's age where the layout stores a time, the consumption rate
  measured between polls, and evidence about the queue's consumers.

Figures leave the probe out: its connection, its commands and its slow-log
entries. The data's shape is `RedisReading` in `app.probes.schema`.

Long by design: the Redis probe's poll (INFO, SLOWLOG, LATENCY, client list),
lock discovery and the fast lock watch; queue readers are in
app.probes.redis_queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.probes.base import PROBE_APP_NAME, Probe, describe_exception
from app.probes.redis_locks import LockWatch, keyspace_expired_on
from app.probes.redis_queues import (
    KOMBU_SEP,
    KOMBU_SYSTEM_EXCHANGES,
    MAX_QUEUES,
    QueueFinder,
    _Batch,
    _s,
    parse_client_list,
)
from app.probes.schema import RedisLock

DEFAULT_LOCK_PATTERNS = ("lock:*", "*:lock", "*:lock:*", "locks:*", "redlock:*")
SCAN_COUNT = 500
SCAN_CALLS_PER_POLL = 8
MAX_LOCK_KEYS = 200
HOLDER_BYTES = 256  # a holder is read (and recorded) up to this many bytes
UUID1_EPOCH = 0x01B21DD213814000  # 100-ns intervals from 1582-10-15 to 1970-01-01
CONFIG_EVERY_S = 30.0
IRRELEVANT_CACHE = 200_000  # key names known to match nothing (cleared when full)
# Lock keys SCAN found and the probe follows, at most this many (the first in name
# order, the ones it polls, are kept; a dropped key that still exists is found
# again by a later sweep). A lock per order id would otherwise grow the set for
# as long as the session runs. The queue finder bounds its own sets likewise.
KEEP_LOCK_KEYS = 10 * MAX_LOCK_KEYS


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


def redis_db(url: str) -> int:
    """The database number in a redis:// URL (path or ?db=), 0 by default."""
    try:
        u = urlsplit(url)
        path = (u.path or "/").strip("/")
        if path.isdigit():
            return int(path)
        for part in (u.query or "").split("&"):
            k, _, v = part.partition("=")
            if k == "db" and v.isdigit():
                return int(v)
    except ValueError:
        pass
    return 0


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
        self._irrelevant: set[bytes] = set()
        self._r: aioredis.Redis | None = None
        self._cursors = {"names": 0, "list": 0, "zset": 0, "stream": 0}
        self._lock_keys: set[bytes] = set()
        self._pattern_keys: dict[bytes, str | None] = {}  # user queue patterns -> TYPE
        # a pattern with no glob character names one key: it is a queue even while empty
        # (a well-served list has no key most of the time)
        self._exact = {p.encode() for p in self.queue_patterns if not any(c in p for c in "*?[\\")}
        for k in self._exact:
            self._pattern_keys[k] = None
        self.db = redis_db(url)
        self.queues = QueueFinder(db=self.db, queue_patterns=self._queue_re,
                                  bullmq_prefixes=self.bullmq_prefixes)  # fmt: skip
        self._first_seen: dict[bytes, tuple[bytes, float]] = {}  # key -> (token, first seen)
        self._prev: tuple[float, dict[str, int]] | None = None
        self._own_cmds = 0  # commands the probe sent since the last INFO
        self._slowlog_last: int | None = None
        self._config: dict[str, Any] = {}
        self._config_at = 0.0
        self.watch = LockWatch(url, self.db, PROBE_APP_NAME, HOLDER_BYTES)
        self._lock_raw: list[tuple[bytes, bytes, int | None]] = []

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
        await self.watch.close()
        await self.reset()

    def describe(self, exc: BaseException) -> str:
        return redis_poll_error(exc, self.target)

    # ---- one poll ---------------------------------------------------------------
    async def poll(self) -> dict[str, Any]:
        r = await self._client()
        cmds = 0
        now_mono = time.monotonic()
        cmds += await self._discover(r)

        b1 = _Batch(r)
        i_info = b1.add("INFO")
        refresh_config = now_mono - self._config_at > CONFIG_EVERY_S
        i_cfg = [
            b1.add("CONFIG GET", k)
            for k in ("maxclients", "latency-monitor-threshold", "notify-keyspace-events")
        ]
        if not refresh_config:
            i_cfg = []
        i_slow = b1.add("SLOWLOG GET", 128)
        i_lat = b1.add("LATENCY", "LATEST")
        i_rqset = b1.add("SMEMBERS", "rq:queues")
        i_skset = b1.add("SMEMBERS", "queues")
        i_skproc = b1.add("SMEMBERS", "processes")
        qf = self.queues
        i_bind = {k: b1.add("SMEMBERS", k) for k in sorted(qf.celery_bindings)}
        untyped = [k for k, t in self._pattern_keys.items() if t is None][:MAX_QUEUES]
        i_clients = b1.add("CLIENT", "LIST")
        i_type = {k: b1.add("TYPE", k) for k in untyped}
        locks = sorted(self._lock_keys)
        truncated = len(locks) > self.max_lock_keys
        locks = locks[: self.max_lock_keys]
        # GETRANGE, not GET: a token is short, a big value under a lock pattern is not read
        i_lock = {k: (b1.add("PTTL", k), b1.add("GETRANGE", k, 0, HOLDER_BYTES - 1)) for k in locks}
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
        keyspace = keyspace_expired_on(str(self._config.get("notify-keyspace-events", "")))
        data["keyspace_events"] = keyspace
        data["takeovers"] = self.watch.drain()
        self.watch.feed(self._lock_raw, self.interval * 1000.0 + 500.0, keyspace)
        cmds += self.watch.cmds
        self.watch.cmds = 0
        data["slowlog"] = self._slowlog(b1.res[i_slow])
        data["latency"] = self._latency(b1.res[i_lat])

        # queue layouts
        for m in b1.get(i_rqset, set()) or ():
            if _s(m).startswith("rq:queue:"):
                qf.rq.add(_s(m)[len("rq:queue:") :])
        # capped: a `queues` or `processes` set of some other application must not
        # turn into thousands of reads per poll
        qf.sidekiq |= set(sorted(_s(m) for m in b1.get(i_skset, set()) or ())[:MAX_QUEUES])
        processes = sorted(b1.get(i_skproc, set()) or ())[:MAX_QUEUES]
        celery: dict[str, str] = {}  # queue name -> key prefix
        for key, i in i_bind.items():
            members = b1.get(i, set()) or ()
            if not members and key != b"_kombu.binding.celery":
                qf.celery_bindings.discard(key)
            prefix, _, exchange = _s(key).partition("_kombu.binding.")
            if exchange in KOMBU_SYSTEM_EXCHANGES:
                continue  # pidbox, celeryev and reply queues are Celery's plumbing
            for m in members:
                parts = _s(m).split(KOMBU_SEP)
                q = parts[2] if len(parts) == 3 else ""
                if q and not q.endswith(".pidbox") and not q.startswith("celeryev."):
                    celery[q] = prefix
        for k, i in i_type.items():
            t = _s(b1.get(i, b"none"))
            if t in ("list", "zset", "stream"):
                self._pattern_keys[k] = t
                qf.note_pattern(k, t)
            elif k in self._exact:
                qf.note_pattern(k, "list")  # absent for now: an empty list reads as depth 0
            else:
                self._pattern_keys.pop(k, None)
        raw_clients = b1.get(i_clients)
        clients = (
            parse_client_list(_s(raw_clients), self.db, PROBE_APP_NAME)
            if isinstance(raw_clients, bytes | str)
            else {}
        )
        queues, hints, cmds2 = await qf.read(
            r, celery=celery, sidekiq_processes=processes, clients=clients, now=seen_at
        )
        cmds += cmds2
        data["queues"] = queues
        if hints:
            data["hints"] = [
                f"{len(hints)} key(s) look like queues or locks but match no known layout or "
                f"pattern (e.g. {', '.join(hints[:3])}): name them with --redis-queue-pattern / "
                f"--redis-lock-pattern or redis_queue_patterns / redis_lock_patterns in loadtop.toml"
            ]
            data["unmatched_keys"] = hints
        self._own_cmds = cmds
        return data

    async def _discover(self, r: aioredis.Redis) -> int:
        """Advance the four SCAN cursors (all names; TYPE list, zset, stream) by
        at most `scan_calls` steps, sharing one round trip per step."""
        calls = 0
        done = {k: False for k in self._cursors}
        for _ in range(self.scan_calls):
            b = _Batch(r)
            idx = {}
            for kind, cur in self._cursors.items():
                if done[kind]:
                    continue
                args = ["SCAN", cur, "COUNT", SCAN_COUNT]
                if kind != "names":
                    args += ["TYPE", kind]
                idx[kind] = b.add(*args)
            res = await b.pipe.execute()  # a SCAN error fails the poll, as it should
            calls += b.n
            for kind, i in idx.items():
                cur, keys = int(res[i][0]), res[i][1]
                self._cursors[kind] = cur
                for k in keys:
                    if kind == "names":
                        self._classify(k)
                    else:
                        self.queues.note_typed(k, kind)
                done[kind] = cur == 0
            if all(done.values()):
                break
        self._bound_discovered()
        return calls

    def _bound_discovered(self) -> None:
        """Cap what discovery keeps (see KEEP_LOCK_KEYS)."""
        if len(self._lock_keys) > KEEP_LOCK_KEYS:
            self._lock_keys = set(sorted(self._lock_keys)[:KEEP_LOCK_KEYS])
        if len(self._pattern_keys) > KEEP_LOCK_KEYS:
            keep = sorted(self._pattern_keys)[:KEEP_LOCK_KEYS]
            self._pattern_keys = {k: self._pattern_keys[k] for k in keep}
        self.queues.bound()

    def _classify(self, key: bytes) -> None:
        if key in self._irrelevant:
            return
        name = _s(key)
        if self.queues.note_name(key):
            return
        if self._lock_re.match(name):
            self._lock_keys.add(key)
            return
        if self._queue_re is not None and self._queue_re.match(name):
            self._pattern_keys.setdefault(key, None)
            return
        self.queues.note_unmatched(key)
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
        self._lock_raw = []
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
            self._lock_raw.append((key, val, p))
            lock: RedisLock = {
                "key": _s(key),
                "holder": _s(val),  # whole, up to HOLDER_BYTES; screens elide the middle
                "pttl_ms": None if p is None or p < 0 else p,
                "age_s": round(now - prev[1], 3),
                "no_ttl": p == -1,
            }
            if len(val) >= HOLDER_BYTES:
                lock["holder_truncated"] = True
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
        new: list[dict[str, Any]] = []
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


def redis_poll_error(exc: BaseException, target: str) -> str:
    """A failed probe poll in one line; the probe retries. (A failed *load*
    connect is bad input instead: app.engine.clients.describe_redis_error.)"""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError):
        return f"{msg}: check the user and password in the Redis URL for {target}"
    if isinstance(exc, rexc.NoPermissionError) or msg.startswith("NOPERM"):
        return (
            f"{msg}: allow the probe's ACL user +info +scan +type +getrange +pttl +llen +lindex "
            "+lpos +zcard +zcount +zrange +xlen +xinfo +xrange +smembers +scard +hlen +hget "
            "+hmget +exists +slowlog|get +latency|latest +client|setname +client|list "
            "+client|no-touch +config|get (and +subscribe on __keyevent@*__:expired)"
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
