"""Queues in Redis, found by what their keys are, not only by name.

`QueueFinder` is fed every key name the probe's SCAN cursors return (one
cursor over all names, three more with `TYPE list|zset|stream`) and keeps a
bounded picture of the queues in the database:

- the layouts of Celery/kombu, RQ, Sidekiq, BullMQ (any prefix, `{bull}`
  included), arq, dramatiq and huey, each with its in-flight, failed, retry
  and scheduled structures;
- plain lists (with `<name>:processing` / `:failed` siblings), sorted sets
  scored by due time (delayed queues), and streams that have consumer groups;
- not queues: RQ result streams and `:intermediate` lists, Celery pidbox /
  celeryev / reply queues, dramatiq heartbeats and `.DQ` lists, huey's
  schedule, python-redis-lock signal lists, streams without a consumer group
  (event logs), sorted sets whose scores are not times (leaderboards).

`read()` reads them all in two pipelined round trips (three with XINFO
CONSUMERS) and returns `RedisQueue` dicts (app/probes/schema.py), with the
consumption rate measured between polls: for lists by finding the previous
poll's newest item again (`LPOS`, so arrivals and consumption are told
apart), for sorted sets by how many items due at the previous poll are gone,
for streams by `entries-read`.

Long by design: one small reader per queue layout (RQ, Celery, Sidekiq, BullMQ,
arq, dramatiq, huey, plain lists, sorted sets and streams) sharing one batched
round trip per poll; splitting them would split the batch.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import redis.asyncio as aioredis

from app.probes.schema import QueueConsumers, RedisQueue

MAX_QUEUES = 100
MAX_AUX_KEYS = 500  # arq in-progress / retry keys, dramatiq ack sets followed at most
LPOS_MAXLEN = 10_000  # LPOS compares at most this many items per list per poll
STREAM_IDLE_MS = 30_000  # a stream consumer idle longer than this is not active
HEARTBEAT_FRESH_MS = 10_000  # dramatiq / sidekiq heartbeats newer than this are alive
FORGET_EMPTY_S = 60.0  # a drained generic queue shows depth 0 this long, then is forgotten
HINT_MAX = 10

KOMBU_SEP = "\x06\x16"
KOMBU_PRIORITIES = ("", "3", "6", "9")
KOMBU_SYSTEM_EXCHANGES = ("celeryev", "celery.pidbox", "reply.celery.pidbox")
BULL_SUFFIXES = (
    "wait", "paused", "active", "meta", "prioritized", "delayed", "failed", "completed",
    "id", "events", "marker", "stalled", "stalled-check", "waiting-children", "limiter",
    "repeat", "pc", "de", "metrics:completed", "metrics:failed",
)  # fmt: skip
_BULL_RE = re.compile(rf"^(?P<base>.+):(?:{'|'.join(map(re.escape, BULL_SUFFIXES))})$")
_RQ_REGISTRIES = ("wip", "failed", "scheduled", "deferred", "finished", "canceled", "executions")
# lists that pair with a queue: <base>:<suffix>
INFLIGHT_SUFFIXES = ("processing", "inflight", "in-flight", "in_flight", "working", "wip",
                     "active", "reserved", "running")  # fmt: skip
FAILED_SUFFIXES = ("failed", "dead", "dlq", "errors", "error", "deadletter", "dead-letter")
READY_SUFFIXES = ("pending", "queue", "queued", "waiting", "ready", "todo", "jobs", "wait")
_NOT_QUEUE_LIST = re.compile(
    r"(^lock-signal:)|(\.pidbox$)|(^celeryev\.)|(\.reply\.celery\.pidbox$)|(^rq:queue:.+:intermediate$)"
    r"|(^rq:)|(^_kombu\.)|(\.DQ$)|(\.XQ$)|(^dramatiq:__)|(^huey\.)|(^unacked)"
)
_NOT_QUEUE_ZSET = re.compile(
    r"(^rq:)|(^retry$)|(^dead$)|(^schedule$)|(^unacked_index$)|(^_kombu\.)|(__heartbeats__)"
    r"|(\.XQ$)|(^huey\.)|(^uniquejobs)|(rate|limit|throttle|leader|rank|score|session)",
    re.IGNORECASE,
)
_QUEUEISH = re.compile(r"queue|job|task|delay|sched|retry|pending|work|outbox|inbox", re.I)
_HINT = re.compile(r"queue|jobs?\b|jobs?[:._-]|tasks?[:._-]|lock|mutex|semaphore|leader", re.I)
# a loadtop run's own scenario keys (loadtop_<run id>_<scenario>:...): never a hint,
# there is nothing for the user to name (seen in the demo: its counters and lock flags)
_OWN_RUN_KEY = re.compile(rb"loadtop_[0-9a-f]{8}_")
# blocking commands a list / zset / stream consumer waits in
LIST_POPS = {"blpop", "brpop", "brpoplpush", "blmove", "blmpop"}
ZSET_POPS = {"bzpopmin", "bzpopmax", "bzmpop"}
STREAM_READS = {"xread", "xreadgroup"}


def _s(b: Any) -> str:
    if isinstance(b, bytes):
        return b.decode("utf-8", "backslashreplace")
    return "" if b is None else str(b)


def _int(x: Any) -> int:
    if isinstance(x, bool):
        return 0
    if isinstance(x, int):
        return x
    try:
        return int(x)
    except (TypeError, ValueError):
        return 0


def _ts_seconds(score: float) -> float | None:
    """A sorted-set score as Unix seconds, if it looks like a time (s, ms or µs)."""
    for div in (1.0, 1e3, 1e6):
        v = score / div
        if 1e9 <= v <= 5e9:
            return v
    return None


@dataclass
class _ListTrack:
    depth: int
    left: bytes | None
    right: bytes | None
    t: float


@dataclass
class _Plan:
    q: RedisQueue
    idx: dict[str, Any] = field(default_factory=dict)


class _Batch:
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


class QueueFinder:
    """Classifies key names into queue layouts and reads the queues each poll."""

    def __init__(
        self,
        *,
        db: int = 0,
        queue_patterns: re.Pattern[str] | None = None,
        bullmq_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.db = db
        self.queue_re = queue_patterns
        self.bull_prefixes = bullmq_prefixes  # always recognised; others by their :meta/:id
        self.celery_bindings: set[bytes] = {b"_kombu.binding.celery"}
        self.rq: set[str] = set()
        self.sidekiq: set[str] = set()
        self.bull_candidates: set[str] = set()  # bases still to confirm
        self.bull: set[str] = set()  # confirmed bases "<prefix>:<queue>"
        self.bull_rejected: set[str] = set()
        self.arq: set[str] = set()  # zset keys
        self.arq_in_progress: set[str] = set()
        self.arq_retry: set[str] = set()
        self.dramatiq: set[tuple[str, str]] = set()  # (namespace, queue)
        self.dramatiq_acks: set[str] = set()
        self.huey: set[str] = set()
        self.lists: set[bytes] = set()
        self.zsets: set[bytes] = set()
        self.zset_rejected: set[bytes] = set()
        self.streams: set[bytes] = set()
        self.alive: dict[bytes, float] = {}  # generic key -> last seen non-empty
        self.hint_candidates: set[bytes] = set()
        self.hint_types: dict[bytes, str] = {}
        self._tracks: dict[str, _ListTrack] = {}
        self._orient: dict[str, str] = {}  # list key -> consumer end "L" | "R"
        self._zprev: dict[str, tuple[float, float, int]] = {}  # key -> (t, cutoff score, due)
        self._entries_read: dict[tuple[str, str], tuple[float, int]] = {}
        self._zunit: dict[str, float] = {}
        self.user_zsets: set[bytes] = set()  # named by the user: a queue whatever its scores

    # ---- classification ----------------------------------------------------------
    def note_name(self, key: bytes) -> bool:
        """A name from the untyped cursor; True when it belongs to a queue layout."""
        name = _s(key)
        if "_kombu.binding." in name:
            self.celery_bindings.add(key)
            return True
        m = _BULL_RE.match(name)
        if m:
            base = m["base"]
            if base in self.bull or base in self.bull_rejected:
                return base in self.bull
            self.bull_candidates.add(base)
            return True
        if name.startswith("rq:queue:") and not name.endswith(":intermediate"):
            self.rq.add(name[len("rq:queue:") :])
            return True
        if name.startswith("rq:"):
            return True
        if name.startswith("arq:in-progress:"):
            if len(self.arq_in_progress) < MAX_AUX_KEYS:
                self.arq_in_progress.add(name)
            return True
        if name.startswith("arq:retry:"):
            if len(self.arq_retry) < MAX_AUX_KEYS:
                self.arq_retry.add(name)
            return True
        if name.startswith("arq:") or name in ("queues", "processes", "unacked_mutex"):
            return True  # arq's jobs, results, health checks; Sidekiq's registries
        if ":__acks__." in name:
            if len(self.dramatiq_acks) < MAX_AUX_KEYS:
                self.dramatiq_acks.add(name)
            return True
        if name.endswith(".msgs") and ":" in name and not name.endswith((".DQ.msgs", ".XQ.msgs")):
            ns, q = name[: -len(".msgs")].split(":", 1)
            self.dramatiq.add((ns, q))
            return True
        if name.startswith("huey.redis."):
            self.huey.add(name[len("huey.redis.") :])
            return True
        return name.startswith(("huey.", "celery-task-meta-"))

    def note_unmatched(self, key: bytes) -> None:
        """A name no lock or queue layout claimed: a hint when it looks like one."""
        if _OWN_RUN_KEY.match(key):
            return
        if len(self.hint_candidates) < 1000 and _HINT.search(_s(key)):
            self.hint_candidates.add(key)

    def bound(self, keep: int = 10 * MAX_QUEUES) -> None:
        """Cap every set and map discovery grows, so a queue per order id cannot
        grow them for as long as the session runs: sets keep the first names in
        order (the ones polled), maps drop their oldest entries. A dropped key
        that still exists is found again by a later sweep."""
        for name in ("rq", "sidekiq", "bull_candidates", "bull", "bull_rejected", "arq",
                     "dramatiq", "huey", "zset_rejected", "hint_candidates", "user_zsets"):  # fmt: skip
            items = getattr(self, name)
            if len(items) > keep:
                setattr(self, name, set(sorted(items)[:keep]))
        for name in ("alive", "hint_types", "_tracks", "_orient", "_zprev", "_entries_read",
                     "_zunit"):  # fmt: skip
            d = getattr(self, name)
            for k in list(d)[: max(0, len(d) - keep)]:
                del d[k]

    def note_typed(self, key: bytes, kind: str) -> None:
        if kind == "list":
            if len(self.lists) < 10 * MAX_QUEUES:
                self.lists.add(key)
        elif kind == "zset":
            if key not in self.zset_rejected and len(self.zsets) < 10 * MAX_QUEUES:
                name = _s(key)
                if name.startswith("arq:queue") or name == "arq:queue":
                    self.arq.add(name)
                elif (self.queue_re is not None and self.queue_re.match(name)) or (
                    not _NOT_QUEUE_ZSET.search(name) and _QUEUEISH.search(name)
                ):
                    self.zsets.add(key)
        elif kind == "stream" and len(self.streams) < 10 * MAX_QUEUES:
            self.streams.add(key)

    def note_pattern(self, key: bytes, kind: str | None) -> None:
        """A key matched by a user's queue pattern (TYPE known or not)."""
        if kind in ("list", "zset", "stream"):
            if kind == "zset":
                self.zsets.add(key)
                self.user_zsets.add(key)
            else:
                self.note_typed(key, kind)

    # ---- reading -----------------------------------------------------------------
    async def read(
        self,
        r: aioredis.Redis,
        *,
        celery: dict[str, str],
        sidekiq_processes: list[bytes],
        clients: dict[str, Any],
        now: float,
    ) -> tuple[list[RedisQueue], list[str], int]:
        """(queues, hints, commands sent)."""
        b = _Batch(r)
        plans: list[_Plan] = []
        claimed: set[str] = set()
        now_ms = now * 1000.0

        def lst(plan: _Plan, key: str, end: str | None, role: str = "depth") -> None:
            """LLEN plus the reads that measure consumption (end = consumer end)."""
            plan.idx.setdefault(role, []).append(b.add("LLEN", key))
            if role != "depth":
                return
            tr = self._tracks.get(key)
            lk = plan.idx.setdefault("lists", [])
            item: dict[str, Any] = {"key": key, "end": end or self._orient.get(key)}
            item["l"] = b.add("LINDEX", key, 0)
            item["r"] = b.add("LINDEX", key, -1)
            if tr is not None:
                if tr.right is not None:
                    item["pr"] = b.add(
                        "LPOS", key, tr.right, "RANK", -1, "COUNT", 2, "MAXLEN", LPOS_MAXLEN
                    )
                if tr.left is not None:
                    item["pl"] = b.add("LPOS", key, tr.left, "COUNT", 2, "MAXLEN", LPOS_MAXLEN)
            lk.append(item)

        # -- celery
        if celery:
            prefixes = sorted(set(celery.values()))
            i_unacked = {p: b.add("HLEN", f"{p}unacked") for p in prefixes}
            for qn, p in sorted(celery.items()):
                keys = [f"{p}{qn}{KOMBU_SEP + pri if pri else ''}" for pri in KOMBU_PRIORITIES]
                claimed |= set(keys)
                plan = _Plan({"name": qn, "layout": "celery", "key": f"{p}{qn}",
                              "note": "in flight (unacked) is shared by all Celery queues"})  # fmt: skip
                for k in keys:
                    lst(plan, k, "R")
                plan.idx["in_flight"] = [i_unacked[p]]
                plan.q["consumers"] = self._blocked(clients, LIST_POPS)
                plans.append(plan)
        # -- rq
        for qn in sorted(self.rq)[:MAX_QUEUES]:
            key = f"rq:queue:{qn}"
            claimed.add(key)
            plan = _Plan({"name": qn, "layout": "rq", "key": key})
            lst(plan, key, "L")
            plan.idx["in_flight"] = [b.add("ZCARD", f"rq:wip:{qn}")]
            plan.idx["failed"] = [b.add("ZCARD", f"rq:failed:{qn}")]
            plan.idx["scheduled"] = [b.add("ZCARD", f"rq:scheduled:{qn}")]
            plan.idx["head"] = b.add("LINDEX", key, 0)
            plan.idx["workers"] = b.add("SCARD", f"rq:workers:{qn}")
            plan.q["consumers"] = self._blocked(clients, LIST_POPS)
            plans.append(plan)
        # -- sidekiq
        if self.sidekiq:
            i_retry, i_dead, i_sched = (b.add("ZCARD", k) for k in ("retry", "dead", "schedule"))
            i_busy = [b.add("HMGET", p, "busy", "beat") for p in sidekiq_processes]
            for qn in sorted(self.sidekiq)[:MAX_QUEUES]:
                key = f"queue:{qn}"
                claimed.add(key)
                plan = _Plan({"name": qn, "layout": "sidekiq", "key": key,
                              "note": "in flight (busy), retry, scheduled and failed (dead) are "
                                      "shared by all Sidekiq queues"})  # fmt: skip
                lst(plan, key, "R")
                plan.idx.update(retry=[i_retry], failed=[i_dead], scheduled=[i_sched],
                                head=b.add("LINDEX", key, -1), sidekiq=i_busy)  # fmt: skip
                plans.append(plan)
        # -- bullmq: a base is confirmed by <base>:meta or <base>:id (a name like
        # user:42:active alone is not a BullMQ queue)
        for base in sorted(self.bull | self.bull_candidates)[:MAX_QUEUES]:
            prefix, _, qn = base.rpartition(":")
            claimed |= {f"{base}:{s}" for s in BULL_SUFFIXES}
            plan = _Plan({"name": qn, "layout": "bullmq", "key": base})
            lst(plan, f"{base}:wait", "R")
            plan.idx["depth"] += [
                b.add("LLEN", f"{base}:paused"),
                b.add("ZCARD", f"{base}:prioritized"),
                b.add("ZCOUNT", f"{base}:delayed", 0, int(now_ms) * 0x1000 + 0xFFF),
            ]
            plan.idx["scheduled"] = [
                b.add("ZCOUNT", f"{base}:delayed", f"({int(now_ms) * 0x1000 + 0xFFF}", "+inf"),
                b.add("ZCARD", f"{base}:waiting-children"),
            ]
            plan.idx["in_flight"] = [b.add("LLEN", f"{base}:active")]
            plan.idx["failed"] = [b.add("ZCARD", f"{base}:failed")]
            plan.idx["head"] = b.add("LINDEX", f"{base}:wait", -1)
            plan.idx["exists"] = b.add("EXISTS", f"{base}:meta", f"{base}:id")
            b64 = base64.b64encode(qn.encode()).decode()
            plan.q["consumers"] = self._named(clients, f"{prefix}:{b64}")
            plans.append(plan)
        # -- dramatiq
        for ns, qn in sorted(self.dramatiq)[:MAX_QUEUES]:
            key = f"{ns}:{qn}"
            claimed |= {key, f"{key}.DQ", f"{key}.XQ"}
            plan = _Plan({"name": qn, "layout": "dramatiq", "key": key})
            lst(plan, key, "L")
            plan.idx["scheduled"] = [b.add("LLEN", f"{key}.DQ")]
            plan.idx["failed"] = [b.add("ZCARD", f"{key}.XQ")]
            acks = [a for a in sorted(self.dramatiq_acks) if a.startswith(f"{ns}:__acks__.")]
            plan.idx["in_flight"] = [b.add("SCARD", a) for a in acks if a.endswith(f".{qn}")]
            plan.idx["sched_acks"] = [b.add("SCARD", a) for a in acks if a.endswith(f".{qn}.DQ")]
            plan.idx["head"] = b.add("LINDEX", key, 0)
            plan.idx["beats"] = b.add(
                "ZCOUNT", f"{ns}:__heartbeats__", int(now_ms - HEARTBEAT_FRESH_MS), "+inf"
            )
            plans.append(plan)
        # -- huey
        for qn in sorted(self.huey)[:MAX_QUEUES]:
            key = f"huey.redis.{qn}"
            claimed.add(key)
            plan = _Plan({"name": qn, "layout": "huey", "key": key})
            lst(plan, key, "R")
            plan.idx["scheduled"] = [b.add("ZCARD", f"huey.schedule.{qn}")]
            plan.q["consumers"] = self._blocked(clients, LIST_POPS)
            plans.append(plan)
        # -- arq (a zset scored by due time in ms)
        for key in sorted(self.arq)[:MAX_QUEUES]:
            claimed.add(key)
            plan = _Plan({"name": key, "layout": "arq", "key": key,
                          "consumers": {"kind": "polling", "count": None, "evidence": "indirect"}})  # fmt: skip
            self._zset(b, plan, key, now, 1e3)
            ids = {k.rsplit(":", 1)[1] for k in self.arq_in_progress}
            plan.idx["arq_ip"] = {k: b.add("EXISTS", k) for k in sorted(self.arq_in_progress)}
            plan.idx["arq_retry"] = {
                k: b.add("EXISTS", k)
                for k in sorted(self.arq_retry)
                if k.rsplit(":", 1)[1] not in ids
            }
            if len(self.arq) > 1:
                plan.q["note"] = "in flight and retry are shared by all arq queues"
            plans.append(plan)
        # -- generic lists, with <base>:processing / :failed siblings
        names = {_s(k) for k in self.lists} - claimed
        aux_of: dict[str, tuple[str, str]] = {}  # sibling key -> (queue key, role)
        for n in names:
            base, _, suf = n.rpartition(":")
            if not base:
                continue
            role = "in_flight" if suf in INFLIGHT_SUFFIXES else (
                "failed" if suf in FAILED_SUFFIXES else None)  # fmt: skip
            if role is None:
                continue
            owner = base if base in names else next(
                (f"{base}:{s}" for s in READY_SUFFIXES if f"{base}:{s}" in names), None)  # fmt: skip
            if owner is not None and owner != n:
                aux_of[n] = (owner, role)
        generic = sorted(
            n
            for n in names
            if n not in aux_of
            and not _NOT_QUEUE_LIST.search(n)
            # an in-flight or failed list is never a backlog, even while its queue is empty
            and n.rpartition(":")[2] not in INFLIGHT_SUFFIXES + FAILED_SUFFIXES
        )
        for n in generic[:MAX_QUEUES]:
            plan = _Plan({"name": n, "layout": "list", "key": n})
            lst(plan, n, None)
            for sib, (owner, role) in aux_of.items():
                if owner == n:
                    lst(plan, sib, None, role)
            plan.q["consumers"] = self._blocked(clients, LIST_POPS)
            plans.append(plan)
        # -- generic sorted sets scored by due time
        for zk in sorted(self.zsets)[:MAX_QUEUES]:
            n = _s(zk)
            if n in claimed:
                continue
            plan = _Plan({"name": n, "layout": "zset", "key": n})
            self._zset(b, plan, n, now, None)
            plan.q["consumers"] = self._blocked(clients, ZSET_POPS) if clients.get(
                "blocked", {}).keys() & ZSET_POPS else {"kind": "polling", "count": None,
                                                        "evidence": "indirect"}  # fmt: skip
            plans.append(plan)
        # -- streams
        for sk in sorted(self.streams)[:MAX_QUEUES]:
            n = _s(sk)
            if n in claimed or _BULL_RE.match(n):
                continue
            plan = _Plan({"name": n, "layout": "stream", "key": n})
            plan.idx["length"] = b.add("XLEN", sk)
            plan.idx["groups"] = b.add("XINFO GROUPS", sk)
            plans.append(plan)
        # the only queue popped with a blocking command on this database: the clients
        # blocked there wait on it (the server does not say which key they wait on)
        blocking = [pl for pl in plans if (pl.q.get("consumers") or {}).get("kind") == "blocked"
                    and "via" not in pl.q["consumers"]]  # fmt: skip
        if len(blocking) == 1:
            blocking[0].q["consumers"].update(
                {"evidence": "direct", "note": "clients blocked in a pop on this database, "
                 "which has no other queue read that way"})  # fmt: skip
        # hint candidates: their types
        hint_keys = [k for k in sorted(self.hint_candidates) if k not in self.hint_types][:50]
        i_hint = {k: b.add("TYPE", k) for k in hint_keys}
        await b.run()
        cmds = b.n

        for hk, i in i_hint.items():
            self.hint_types[hk] = _s(b.get(i, b"none"))

        out: list[RedisQueue] = []
        heads: list[tuple[RedisQueue, bytes]] = []
        stream_plans: list[_Plan] = []
        for plan in plans:
            q, idx = plan.q, plan.idx
            q.setdefault("source", "redis")
            if "exists" in idx:
                self.bull_candidates.discard(q["key"])
                if not b.get(idx["exists"], 0):
                    self.bull.discard(q["key"])
                    self.bull_rejected.add(q["key"])
                    continue
                self.bull.add(q["key"])
            if "length" in idx:
                if self._stream(b, plan, now):
                    stream_plans.append(plan)
                continue
            if "zset" in idx:
                if not self._zset_done(b, plan, now):
                    continue
            else:
                q["depth"] = sum(_int(b.get(i, 0)) for i in idx.get("depth", ()))
                q["consumed_per_s"] = self._consumed(b, idx.get("lists", ()), now)
            roles: tuple[Literal["in_flight", "failed", "scheduled", "retry"], ...] = (
                "in_flight", "failed", "scheduled", "retry")  # fmt: skip
            for role in roles:
                if role in idx:
                    q[role] = sum(_int(b.get(i, 0)) for i in idx[role])
                else:
                    q.setdefault(role, None)
            if "sched_acks" in idx:
                q["scheduled"] = (q.get("scheduled") or 0) + sum(
                    _int(b.get(i, 0)) for i in idx["sched_acks"]
                )
            if "arq_ip" in idx:
                for k, i in idx["arq_ip"].items():
                    if not b.get(i, 0):
                        self.arq_in_progress.discard(k)
                for k, i in idx["arq_retry"].items():
                    if not b.get(i, 0):
                        self.arq_retry.discard(k)
                q["in_flight"] = sum(1 for i in idx["arq_ip"].values() if b.get(i, 0))
                q["retry"] = sum(1 for i in idx["arq_retry"].values() if b.get(i, 0))
            if "workers" in idx:  # RQ's registry keeps a killed worker for minutes: a hint only
                q["consumers"]["registered"] = _int(b.get(idx["workers"], 0))
            if "beats" in idx:
                beats = _int(b.get(idx["beats"], 0))
                # a busy dramatiq worker does not fetch, so it does not beat either
                busy = beats == 0 and (q.get("in_flight") or 0) > 0
                q["consumers"] = {"kind": "polling", "count": beats, "via": "heartbeats",
                                  "evidence": "indirect" if busy else "direct"}  # fmt: skip
            if "sidekiq" in idx:
                vals = [b.get(i) for i in idx["sidekiq"]]
                q["in_flight"] = sum(_int(v[0]) for v in vals if isinstance(v, list) and v)
                alive = sum(
                    1
                    for v in vals
                    if isinstance(v, list)
                    and len(v) > 1
                    and v[1] is not None
                    and now - float(_s(v[1]) or 0) < HEARTBEAT_FRESH_MS / 1000
                )
                q["consumers"] = {"kind": "registry", "count": alive, "evidence": "direct",
                                  "via": "sidekiq processes"}  # fmt: skip
            if q["layout"] in ("list", "zset"):
                bkey = q["key"].encode()
                if q["depth"] or q.get("scheduled"):
                    self.alive[bkey] = now
                elif now - self.alive.setdefault(bkey, now) > FORGET_EMPTY_S:
                    self.lists.discard(bkey)
                    self.zsets.discard(bkey)
                    self.alive.pop(bkey, None)
                    continue
            head = b.get(idx.get("head"))
            if head:
                heads.append((q, head))
            out.append(q)

        cmds += await self._followups(r, heads, stream_plans, out, now)
        hints = self._hints(claimed | {q["key"] for q in out})
        # names are what detectors and panes key on: make them unique across layouts
        count: dict[str, int] = {}
        for q in out:
            count[q["name"]] = count.get(q["name"], 0) + 1
        for q in out:
            if count[q["name"]] > 1:
                q["name"] = f"{q['layout']}:{q['name']}"
        # the ones that matter first: deepest, then the busiest
        out.sort(key=lambda q: (-(q.get("depth") or 0), -(q.get("consumed_per_s") or 0), q["name"]))
        return out[:MAX_QUEUES], hints, cmds

    # ---- consumers evidence from CLIENT LIST --------------------------------------
    def _blocked(self, clients: dict[str, Any], cmds: set[str]) -> QueueConsumers:
        blocked = clients.get("blocked")
        if blocked is None:
            return {"kind": "unknown", "count": None, "evidence": "indirect"}
        n = sum(c for cmd, c in blocked.items() if cmd in cmds)
        return {
            "kind": "blocked",
            "count": n,
            "evidence": "indirect",
            "db": self.db,
            # connected to this database: busy consumers are not blocked but stay here
            "db_clients": clients.get("db_clients"),
            "note": "clients blocked in a pop on this database; the server does not say "
            "on which key",
        }

    def _named(self, clients: dict[str, Any], name: str) -> QueueConsumers:
        names = clients.get("names")
        if names is None:
            return {"kind": "unknown", "count": None, "evidence": "indirect"}
        n = sum(c for nm, c in names.items() if nm == name or nm.startswith(f"{name}:w:"))
        return {"kind": "named", "count": n, "evidence": "direct", "via": "client name"}

    # ---- sorted sets scored by due time -----------------------------------------
    def _zset(self, b: _Batch, plan: _Plan, key: str, now: float, unit: float | None) -> None:
        idx = plan.idx
        idx["zset"] = True
        idx["unit"] = unit
        idx["card"] = b.add("ZCARD", key)
        idx["first"] = b.add("ZRANGE", key, 0, 0, "WITHSCORES")
        u = unit or self._zunit.get(key)
        if u is not None:
            idx["due"] = b.add("ZCOUNT", key, "-inf", now * u)
            prev = self._zprev.get(key)
            if prev is not None:
                idx["prev_due"] = b.add("ZCOUNT", key, "-inf", prev[1])

    def _zset_done(self, b: _Batch, plan: _Plan, now: float) -> bool:
        q, idx = plan.q, plan.idx
        key = q["key"]
        card = _int(b.get(idx["card"], 0))
        first = b.get(idx["first"], []) or []
        unit = idx["unit"] or self._zunit.get(key)
        if unit is None and first:
            try:
                score = float(first[1])
            except (TypeError, ValueError, IndexError):
                score = 0.0
            sec = _ts_seconds(score)
            if sec is None and key.encode() in self.user_zsets:  # a priority queue
                q.update(
                    {"depth": card, "scheduled": None, "oldest_age_s": None, "consumed_per_s": None}
                )
                return True
            if sec is None:  # scores are not times: a leaderboard or a counter, not a queue
                self.zsets.discard(key.encode())
                self.zset_rejected.add(key.encode())
                return False
            unit = score / sec
            unit = 1e3 if 500 < unit < 2e3 else (1e6 if unit > 2e3 else 1.0)
            self._zunit[key] = unit
        if unit is None:  # empty and never seen with items
            q.update({"depth": 0, "scheduled": 0, "oldest_age_s": None, "consumed_per_s": None})
            return (card == 0 and q["layout"] == "arq") or bool(card)
        due = _int(b.get(idx["due"], 0)) if "due" in idx else None
        if due is None:  # the first poll of a zset whose unit was just learned
            oldest = float(first[1]) / unit if first else None
            due = card if oldest is not None and oldest <= now else 0
        q["depth"] = due
        q["scheduled"] = max(0, card - due)
        q["oldest_age_s"] = None
        if first and due:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                q["oldest_age_s"] = round(max(0.0, now - float(first[1]) / unit), 3)
        prev = self._zprev.get(key)
        consumed = None
        if prev is not None and "prev_due" in idx:
            t0, _, due0 = prev
            left = _int(b.get(idx["prev_due"], 0))
            if now > t0:
                consumed = round(max(0, due0 - left) / (now - t0), 2)
        q["consumed_per_s"] = consumed
        self._zprev[key] = (now, now * unit, due)
        return True

    # ---- lists: consumption between polls ------------------------------------------
    def _consumed(self, b: _Batch, items: Any, now: float) -> float | None:
        total = 0.0
        known = False
        for it in items:
            key = it["key"]
            depth = None
            # LLEN of this key is the first "depth" entry added with it; recompute from ends
            left, right = b.get(it["l"]), b.get(it["r"])
            tr = self._tracks.get(key)
            c = None
            if tr is not None and now > tr.t:
                pl = b.res[it["pl"]] if "pl" in it else None
                pr = b.res[it["pr"]] if "pr" in it else None
                c = self._list_consumed(key, it["end"], tr, left, right, pl, pr, b, it)
                if c is not None:
                    total += c / (now - tr.t)
                    known = True
            depth = self._llen_of(b, it)
            self._tracks[key] = _ListTrack(depth, left, right, now)
        return round(total, 2) if known else None

    @staticmethod
    def _llen_of(b: _Batch, it: dict[str, Any]) -> int:
        # the LLEN was queued just before LINDEX 0
        return _int(b.get(it["l"] - 1, 0))

    def _list_consumed(
        self,
        key: str,
        end: str | None,
        tr: _ListTrack,
        left: Any,
        right: Any,
        pl: Any,
        pr: Any,
        b: _Batch,
        it: dict[str, Any],
    ) -> int | None:
        """Items consumed since the last poll, from where the old end items are now."""
        depth = self._llen_of(b, it)
        d0 = tr.depth
        if d0 == 0:  # nothing was waiting: nothing could be seen consumed
            return 0 if self._llen_of(b, it) else None
        if isinstance(pl, Exception) or isinstance(pr, Exception):  # no LPOS (< 6.0.6)
            return None
        pl = pl if isinstance(pl, list) else []
        pr = pr if isinstance(pr, list) else []
        if depth == 0 or (not pl and not pr and depth <= LPOS_MAXLEN):
            return d0  # every item of the last poll is gone
        if end is None:  # learn the consumer end of a plain list
            if tr.left == tr.right and d0 > 1:
                return None
            if not pl and pr:
                end = "L"
            elif not pr and pl:
                end = "R"
            elif pl and pr and pl[0] > 0:
                end = "R"  # pushed on the left
            elif pl and pr and pr[0] < depth - 1:
                end = "L"
            elif pl and pr and depth == d0:
                return 0
            if end is None:
                return None
            self._orient[key] = end
            it["end"] = end
        if end == "L":  # newest on the right: find it again
            if len(pr) > 1:
                return None  # duplicates: ambiguous
            if not pr:
                return d0 if depth <= LPOS_MAXLEN else None
            return max(0, (d0 - 1) - pr[0])
        if len(pl) > 1:
            return None
        if not pl:
            return d0 if depth <= LPOS_MAXLEN else None
        return max(0, d0 - depth + pl[0])

    # ---- streams -------------------------------------------------------------------
    def _stream(self, b: _Batch, plan: _Plan, now: float) -> bool:
        q, idx = plan.q, plan.idx
        if isinstance(b.res[idx["length"]], Exception):
            self.streams.discard(q["key"].encode())
            return False
        groups_raw = b.get(idx["groups"], []) or []
        groups: list[dict[str, Any]] = []  # RedisQueue.groups rows
        for g in groups_raw:
            if not isinstance(g, dict):
                continue
            groups.append(
                {
                    "name": _s(g.get("name")),
                    "consumers": _int(g.get("consumers")),
                    "pending": _int(g.get("pending")),
                    "lag": g.get("lag") if isinstance(g.get("lag"), int) else None,
                    "last_delivered_id": _s(g.get("last-delivered-id")),
                    "entries_read": g.get("entries-read")
                    if isinstance(g.get("entries-read"), int)
                    else None,
                }
            )
        if not groups:  # no consumer group: an event log, not a backlog
            return False
        length = _int(b.get(idx["length"], 0))
        q["length"] = length
        q["groups"] = groups
        lags = [g["lag"] for g in groups]
        q["depth"] = max(lags) if all(x is not None for x in lags) else length
        q["in_flight"] = sum(g["pending"] for g in groups)
        q["failed"] = q["scheduled"] = q["retry"] = None
        q["oldest_age_s"] = None
        # consumption: entries-read of the group furthest behind
        rates = []
        for g in groups:
            er = g["entries_read"]
            prev = self._entries_read.get((q["key"], g["name"]))
            if er is not None:
                if prev is not None and now > prev[0]:
                    rates.append(max(0, er - prev[1]) / (now - prev[0]))
                self._entries_read[(q["key"], g["name"])] = (now, er)
        slowest = max(groups, key=lambda g: g["lag"] or 0)
        q["consumed_per_s"] = (
            round(rates[groups.index(slowest)], 2) if len(rates) == len(groups) else None
        )
        return True

    async def _followups(
        self,
        r: aioredis.Redis,
        heads: list[tuple[RedisQueue, bytes]],
        streams: list[_Plan],
        out: list[RedisQueue],
        now: float,
    ) -> int:
        """Second round trip: oldest item times and stream consumers."""
        b = _Batch(r)
        look: list[tuple[RedisQueue, str, int]] = []
        for q, head in heads:
            layout = q["layout"]
            if layout == "sidekiq":
                with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                    ts = float(json.loads(head)["enqueued_at"])
                    q["oldest_age_s"] = round(max(0.0, now - (ts / 1000 if ts > 1e11 else ts)), 3)
            elif layout == "rq":
                look.append((q, "rq", b.add("HGET", f"rq:job:{_s(head)}", "enqueued_at")))
            elif layout == "bullmq":
                look.append((q, "bullmq", b.add("HGET", f"{q['key']}:{_s(head)}", "timestamp")))
            elif layout == "dramatiq":
                look.append((q, "dramatiq", b.add("HGET", f"{q['key']}.msgs", head)))
        for q in out:
            if q["layout"] in ("list", "celery", "huey") and q.get("depth"):
                q.setdefault("oldest_age_s", None)
        i_cons: list[tuple[Any, dict, int]] = []
        for plan in streams:
            for g in plan.q["groups"][:5]:
                i_cons.append((plan.q, g, b.add("XINFO CONSUMERS", plan.q["key"], g["name"])))
                if g["last_delivered_id"]:
                    g["_next"] = b.add(
                        "XRANGE", plan.q["key"], f"({g['last_delivered_id']}", "+", "COUNT", 1
                    )
        if not b.n:
            return 0
        await b.run()
        for q, layout, i in look:
            v = b.get(i)
            if v is None:
                continue
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                if layout == "rq":
                    ts = datetime.fromisoformat(_s(v).replace("Z", "+00:00")).timestamp()
                elif layout == "dramatiq":
                    ts = float(json.loads(v)["message_timestamp"]) / 1000.0
                else:
                    ts = int(v) / 1000.0
                q["oldest_age_s"] = round(max(0.0, now - ts), 3)
        for plan in streams:
            q = plan.q
            ages = []
            for g in q["groups"]:
                i = g.pop("_next", None)
                nxt = b.get(i) if i is not None else None
                if nxt and isinstance(nxt, list) and nxt[0]:
                    with contextlib.suppress(ValueError, TypeError, IndexError):
                        ages.append(now - int(_s(nxt[0][0]).split("-")[0]) / 1000.0)
            q["oldest_age_s"] = round(max(0.0, max(ages)), 3) if ages else None
        active_by: dict[str, int] = {}
        for q, g, i in i_cons:
            rows = b.get(i, []) or []
            cons: list[dict[str, Any]] = []
            for c in rows[:20]:
                if not isinstance(c, dict):
                    continue
                idle = _int(c.get("idle"))
                inactive = c.get("inactive")
                cons.append(
                    {
                        "name": _s(c.get("name")),
                        "pending": _int(c.get("pending")),
                        "idle_ms": idle,
                        "inactive_ms": inactive if isinstance(inactive, int) else None,
                    }
                )
            g["consumer_list"] = cons
            act = sum(
                1
                for c in cons
                if (c["inactive_ms"] if c["inactive_ms"] is not None and c["inactive_ms"] >= 0
                    else c["idle_ms"]) < STREAM_IDLE_MS
            )  # fmt: skip
            active_by[q["key"]] = active_by.get(q["key"], 0) + act
        for plan in streams:
            q = plan.q
            q["consumers"] = {
                "kind": "stream",
                "count": active_by.get(q["key"], 0),
                "evidence": "direct",
                "idle_after_ms": STREAM_IDLE_MS,
                "registered": sum(g["consumers"] for g in q["groups"]),
            }
            out.append(q)
        return b.n

    def _hints(self, known: set[str]) -> list[str]:
        odd = sorted(
            _s(k)
            for k, t in self.hint_types.items()
            if t in ("string", "hash", "set") and _s(k) not in known
        )
        for k in [k for k, t in self.hint_types.items() if t == "none"]:
            self.hint_types.pop(k, None)
            self.hint_candidates.discard(k)
        return odd[:HINT_MAX]


def parse_client_list(text: str, db: int, own_name: str) -> dict[str, Any]:
    """CLIENT LIST -> {"blocked": {cmd: n} on `db`, "names": {name: n} on any db}."""
    blocked: dict[str, int] = {}
    names: dict[str, int] = {}
    on_db = 0
    for line in text.splitlines():
        f = dict(p.split("=", 1) for p in line.split(" ") if "=" in p)
        name = f.get("name", "")
        if name == own_name:
            continue
        if name:
            names[name] = names.get(name, 0) + 1
        if f.get("db") != str(db):
            continue
        on_db += 1
        if "b" in f.get("flags", ""):
            cmd = f.get("cmd", "").split("|")[0].lower()
            blocked[cmd] = blocked.get(cmd, 0) + 1
    return {"blocked": blocked, "names": names, "db_clients": on_db, "at": time.time()}
