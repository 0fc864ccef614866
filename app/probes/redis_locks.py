"""Lock takeover seen from outside: a fast watch of the few locks about to expire.

A 1 s poll cannot tell "the lease ran out and another process took the lock"
from "the holder released it and another took it": both show a new holder one
poll later. `LockWatch` closes that gap for the locks that matter: after each
poll, the lock keys whose PTTL is below about one poll interval (at most
`MAX_WATCHED`) are read every `WATCH_EVERY_S` (GETRANGE + PTTL, one pipelined
round trip) on a connection of its own, until they expire, are renewed past the
window, or change holder. A holder that changes within `EXPIRY_SLACK_MS` of the
moment its last seen PTTL ran out is a takeover after expiry.

Cost: 2 commands per watched key per 50 ms, only while a lock has less than
one poll interval left: with the cap of 16 keys at most 640 commands/s in 20
round trips/s, and nothing when no lock is close to expiry.

Where the server already publishes expiries (`notify-keyspace-events` holds
`E` and `x` or `A`), the watch also subscribes to `__keyevent@<db>__:expired`
and marks a takeover whose key the server reported expired as proven. The
probe never changes server config.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.probes.schema import LockTakeover

MAX_WATCHED = 16
WATCH_EVERY_S = 0.05
EXPIRY_SLACK_MS = 150.0  # the new holder appeared this soon after the old lease's end
EARLY_SLACK_MS = 20.0  # ... or this little before it (clock and round-trip jitter)
MAX_PENDING = 64


_SEP = re.compile(r"([:@/|,; _-])")


def elide_middle(text: str, width: int) -> str:
    """`text` whole if it fits, else shortened in the middle so both ends survive.

    A long random-looking part (a uuid or base64 token) is shortened first, so
    `worker-host-42:pid-7731:6f1c0e4a9b2d4c3e8f7a6b5c4d3e2f1a` keeps its host and
    pid; otherwise the cut is in the middle of the whole text."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    if width == 1:
        return "…"
    parts = _SEP.split(text)
    longest = max(range(len(parts)), key=lambda i: len(parts[i]))
    tok = parts[longest]
    over = len(text) - width
    if len(tok) >= 12:  # shorten the token first, keeping 3+ characters each side
        keep = max(6, len(tok) - over - 1)
        head = (keep + 1) // 2
        parts[longest] = tok[:head] + "…" + tok[len(tok) - (keep - head) :]
        text = "".join(parts)
        if len(text) <= width:
            return text
    head = width // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def keyspace_expired_on(flags: str) -> bool:
    """Does notify-keyspace-events publish expiry events (E plus x or A)?"""
    return "E" in flags and ("x" in flags or "A" in flags)


@dataclass
class _Seen:
    holder: bytes
    pttl_ms: int
    t: float


class LockWatch:
    """Watches lock keys close to expiry and reports holder changes right after
    the old lease ran out. Started and fed by the probe; `drain()` once a poll."""

    def __init__(self, url: str, db: int, client_name: str, holder_bytes: int) -> None:
        self.url = url
        self.db = db
        self.client_name = client_name
        self.holder_bytes = holder_bytes
        self._watch: dict[bytes, _Seen] = {}
        self._found: list[LockTakeover] = []
        self._expired: dict[bytes, float] = {}  # key -> when the server said it expired
        self._task: asyncio.Task[None] | None = None
        self._keyspace = False
        self.cmds = 0  # commands sent since the last drain (the probe leaves them out)

    def feed(
        self, locks: list[tuple[bytes, bytes, int | None]], window_ms: float, keyspace: bool
    ) -> None:
        """After a poll: (key, holder, pttl ms) of every lock read; watch the ones
        whose PTTL is inside `window_ms`."""
        now = time.time()
        self._keyspace = keyspace
        for key, holder, pttl in locks:
            if pttl is None or pttl < 0 or pttl > window_ms:
                continue
            if key not in self._watch and len(self._watch) >= MAX_WATCHED:
                continue
            prev = self._watch.get(key)
            if prev is None or prev.holder == holder:
                self._watch[key] = _Seen(holder, pttl, now)
        if (self._watch or keyspace) and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="loadtop-lock-watch")

    def drain(self) -> list[LockTakeover]:
        out, self._found = self._found, []
        return out

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)

    async def _run(self) -> None:
        r = aioredis.Redis.from_url(
            self.url,
            client_name=self.client_name,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            decode_responses=False,
        )
        pubsub = None
        try:
            if self._keyspace:
                pubsub = r.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(f"__keyevent@{self.db}__:expired")
            idle = 0
            while idle < 40:  # 2 s with nothing to watch: stop (fed again next poll)
                await asyncio.sleep(WATCH_EVERY_S)
                if pubsub is not None:
                    for _ in range(100):
                        msg = await pubsub.get_message(timeout=0)
                        if msg is None:
                            break
                        data = msg.get("data")
                        if isinstance(data, bytes):
                            self._expired[data] = time.time()
                    if len(self._expired) > 1000:
                        cut = time.time() - 10
                        self._expired = {k: t for k, t in self._expired.items() if t > cut}
                if not self._watch:
                    idle += 1 if pubsub is None else 0
                    continue
                idle = 0
                await self._step(r)
        except (OSError, aioredis.RedisError):
            pass  # the next poll starts a new watch; the poll reports the fault
        finally:
            with contextlib.suppress(Exception):
                if pubsub is not None:
                    await asyncio.wait_for(pubsub.aclose(), 2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(r.aclose(), 2)

    async def _step(self, r: aioredis.Redis) -> None:
        keys = list(self._watch)
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("GETRANGE", k, 0, self.holder_bytes - 1)
            pipe.execute_command("PTTL", k)
        res = await pipe.execute(raise_on_error=False)
        self.cmds += 2 * len(keys)
        now = time.time()
        for i, k in enumerate(keys):
            val, pttl = res[2 * i], res[2 * i + 1]
            seen = self._watch[k]
            if not isinstance(pttl, int) or isinstance(val, Exception):
                del self._watch[k]
                continue
            if pttl == -2 or not val:  # gone: expired or released; a new holder may come
                lease_end = seen.t + seen.pttl_ms / 1000.0
                if now - lease_end > 1.0:
                    del self._watch[k]
                continue
            if val == seen.holder:
                if pttl > seen.pttl_ms + 50 and pttl > 2000:  # renewed well past the window
                    del self._watch[k]
                else:
                    self._watch[k] = _Seen(val, pttl, now)
                continue
            # a new holder: did the old lease run out just before?
            lease_end = seen.t + seen.pttl_ms / 1000.0
            gap_ms = (now - lease_end) * 1000.0
            expired_at = self._expired.get(k)
            proven = expired_at is not None and expired_at >= seen.t - 0.01
            late_ms = 1000.0 * WATCH_EVERY_S * 4 + EXPIRY_SLACK_MS
            if len(self._found) < MAX_PENDING and (proven or -EARLY_SLACK_MS <= gap_ms <= late_ms):
                self._found.append(
                    {
                        "key": _s(k),
                        "old_holder": _s(seen.holder),
                        "new_holder": _s(val),
                        "last_pttl_ms": seen.pttl_ms,
                        "ttl_ms": pttl if pttl >= 0 else None,
                        "gap_ms": round(gap_ms, 1),
                        "at": now,
                        "proof": "keyspace-expired" if proven else "pttl",
                    }
                )
            if pttl >= 0 and pttl <= seen.pttl_ms + 2000:
                self._watch[k] = _Seen(val, pttl, now)  # the new holder's lease, still short
            else:
                del self._watch[k]

    def watched(self) -> int:
        return len(self._watch)


def _s(b: Any) -> str:
    if isinstance(b, bytes):
        return b.decode("utf-8", "backslashreplace")
    return "" if b is None else str(b)
