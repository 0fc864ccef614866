"""Where the workers run: the `Workers` protocol and `LocalWorkers`.

The engine steers its workers only through this protocol, and everything
that crosses it is plain data (lists, dicts, numbers, strings), so a worker
set in another process (`ProcessWorkers`, app/engine/procs.py) or, later, on
another machine fits behind it without sharing an object with the engine.

`collect()` and `stop()` return a `WorkerReport`:

    windows          {scenario: Window.payload()} since the last report
    live             {scenario: workers alive now}
    never_connected  {scenario: workers that never got a connection}
    events           [(wall time, kind, note)] the workers' own events
    health           (CPU %, loop lag ms, RSS MB) of the processes the
                     workers run in, or None when they share the engine's
"""

from __future__ import annotations

from typing import Any, Protocol

from app.engine.pool import WorkerPool

WorkerReport = dict[str, Any]


class Workers(Protocol):
    async def start(self) -> None:
        """Bring the workers' hosts up (spawn processes, connect); may raise TargetError."""
        ...

    def assign(self, shares: list[int], rates: list[float], paused: bool, mode: str) -> None:
        """Scenario i should run shares[i] workers (in rate mode at rates[i] per second)."""
        ...

    async def collect(self, timeout: float) -> WorkerReport:
        """What the workers did since the last report; waits at most `timeout`."""
        ...

    def panic(self) -> None:
        """Cancel every operation now and end its backend on the server."""
        ...

    async def stop(self, drain_seconds: float) -> WorkerReport:
        """Drain every worker; returns the last report."""
        ...

    def live(self) -> dict[str, int]:
        """Workers alive per scenario (as last known)."""
        ...

    async def aclose(self) -> None:
        """Let go of everything at once (idempotent; after stop() a no-op)."""
        ...


class LocalWorkers:
    """The workers on the engine's own event loop."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    async def start(self) -> None:
        return None

    def assign(self, shares: list[int], rates: list[float], paused: bool, mode: str) -> None:
        self.pool.assign(shares, rates, paused, mode)

    async def collect(self, timeout: float) -> WorkerReport:
        return {**self.pool.take(), "health": None}

    def panic(self) -> None:
        self.pool.panic()

    async def stop(self, drain_seconds: float) -> WorkerReport:
        await self.pool.drain()
        return {**self.pool.take(), "health": None}

    def live(self) -> dict[str, int]:
        return self.pool.live()

    async def aclose(self) -> None:
        return None
