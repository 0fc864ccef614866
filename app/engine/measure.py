"""What the workers measure: a scenario's `Window` and the process's `Health`.

Both have a plain-data form, so a window measured in a worker process (or,
later, on another machine) merges exactly into the one the tick is built from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

from app.tick import new_histogram

MAX_COUNTERS = 32  # ctx.count() names per scenario and tick; more fold into "other"


class Window:
    """What one scenario's workers did in one window; `payload()` is its plain-data form."""

    __slots__ = (
        "counters",
        "dropped",
        "errors",
        "failed",
        "lag_ms",
        "last_error",
        "lat",
        "ok",
        "scheduled",
        "started",
    )  # fmt: skip

    def __init__(self) -> None:
        self.started = 0
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        # latency µs -> count. A dict increment costs ~0.1 µs where hdrh's
        # pure-Python record_value costs ~1.7 µs; the window's histogram is
        # built from it, exactly, when the tick closes (see histogram()).
        self.lat: dict[int, int] = {}
        self.scheduled = 0
        self.dropped = 0
        self.lag_ms = 0.0
        self.last_error = ""
        self.counters: dict[str, int] = {}

    def histogram(self) -> HdrHistogram:
        h = new_histogram()
        record = h.record_value
        for us, n in self.lat.items():
            record(us, n)
        return h

    def payload(self) -> dict[str, Any]:
        """The window as plain data (to send to another process or machine)."""
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def of(cls, p: Mapping[str, Any]) -> Window:
        """A window from a payload, taking its dicts as they are (no copy)."""
        w = cls()
        for k in cls.__slots__:
            setattr(w, k, p[k])
        return w

    def merge(self, p: Mapping[str, Any]) -> None:
        """Add another window's payload into this one: counts add, latencies
        add bucket by bucket (exact), the worst lag wins."""
        self.started += p["started"]
        self.ok += p["ok"]
        self.failed += p["failed"]
        self.scheduled += p["scheduled"]
        self.dropped += p["dropped"]
        self.lag_ms = max(self.lag_ms, p["lag_ms"])
        self.last_error = self.last_error or p["last_error"]
        for src, dst in ((p["errors"], self.errors), (p["lat"], self.lat)):
            for k, n in src.items():
                dst[k] = dst.get(k, 0) + n
        for k, n in p["counters"].items():
            self.count(k, n)

    def count(self, name: str, n: int) -> None:
        c = self.counters
        if name not in c and len(c) >= MAX_COUNTERS:
            name = "other"
        c[name] = c.get(name, 0) + n


class Health:
    """The generator's own health in one process: event-loop lag, CPU, RSS."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.lag_max_ms = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._proc.cpu_percent(None)
        self._task = asyncio.get_running_loop().create_task(self._lag_monitor())

    async def _lag_monitor(self) -> None:
        loop = asyncio.get_running_loop()
        step = 0.1
        while True:
            t0 = loop.time()
            await asyncio.sleep(step)
            lag = (loop.time() - t0 - step) * 1000.0
            if lag > self.lag_max_ms:
                self.lag_max_ms = lag

    def take(self) -> tuple[float, float, float]:
        """(CPU %, worst loop lag ms, RSS MB) since the last take."""
        lag, self.lag_max_ms = self.lag_max_ms, 0.0
        return self._proc.cpu_percent(None), lag, self._proc.memory_info().rss / 2**20

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
