"""The probe framework: a `Probe` polls one target; a runner polls each probe in
its own asyncio task; a `ProbeSet` holds the latest `Reading` of every probe.

Rules every probe follows (issue 3, item 1):
- polls never overlap: the next poll is armed when the last one ends;
- every poll has a timeout and records its own duration;
- a failure is a `Reading(ok=False, error="<what is wrong>: <what to do>")`,
  never an exception out of the runner; the probe drops its connection and
  reconnects on a later poll, so it recovers by itself when the target does;
- probes use their own small connections named `loadtop:probe` and leave
  themselves out of what they show.

The engine calls `ProbeSet.latest()` once per tick from the same event loop;
it copies a small dict and never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from app.tick import Reading

log = logging.getLogger(__name__)

PROBE_APP_NAME = "loadtop:probe"
DEFAULT_INTERVALS = {"postgres": 1.0, "redis": 1.0, "pods": 5.0}
MAX_BACKOFF_S = 5.0


class ProbeError(Exception):
    """A failure the probe has already put into words: "<what is wrong>: <what to do>"."""


class Probe:
    """One target polled on an interval. Subclasses implement `poll()` (return
    the reading's data dict, raise on failure) and may override `describe()`
    (turn an exception into a sentence), `reset()` (drop connections after a
    failure) and `close()`."""

    name: str = "probe"

    def __init__(self, *, interval: float = 1.0, timeout: float | None = None) -> None:
        self.interval = float(interval)
        # under heavy load a poll's wall time is mostly waiting for the event loop
        # (dozens of worker tasks), so the default is generous: the interval, >= 2 s
        self.timeout = float(timeout) if timeout is not None else max(2.0, self.interval)

    async def poll(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, exc: BaseException) -> str:
        """A sentence for a failed poll: what is wrong, then what to do."""
        return describe_exception(self.name, exc)

    async def reset(self) -> None:
        """Called after a failed poll: drop connections so the next poll reconnects."""

    async def close(self) -> None:
        """Release every resource; the probe is not polled again."""


def describe_exception(name: str, exc: BaseException) -> str:
    if isinstance(exc, ProbeError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"{name} probe timed out: the target is slow or unreachable; it will retry"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: check that the {name} server is up and the address is right"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror.lower()}: check the {name} address and the network; it will retry"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{text}: the {name} probe will retry"


async def run_poll(probe: Probe) -> Reading:
    """One poll with its timeout, as a Reading. Never raises (except cancellation)."""
    t0 = time.perf_counter()
    try:
        data = await asyncio.wait_for(probe.poll(), probe.timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a failed poll is a reading, never a crash
        duration = (time.perf_counter() - t0) * 1000.0
        if isinstance(exc, TimeoutError):
            error = (
                f"poll took longer than {probe.timeout:g} s: the {probe.name} target is slow or "
                "unreachable; the probe will retry"
            )
        else:
            try:
                error = probe.describe(exc)
            except Exception:  # a describe() bug must not end the probe
                error = describe_exception(probe.name, exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(probe.reset(), 2.0)
        return Reading(probe.name, time.time(), False, duration, {}, error)
    duration = (time.perf_counter() - t0) * 1000.0
    return Reading(probe.name, time.time(), True, duration, data, "")


class ProbeSet:
    """The probes of a session, each polled by its own task."""

    def __init__(self, probes: Iterable[Probe] = ()) -> None:
        self.probes: list[Probe] = []
        self._latest: dict[str, Reading] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._failing_since: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        for p in probes:
            self.add(p)

    def add(self, probe: Probe) -> None:
        if any(p.name == probe.name for p in self.probes):
            raise ValueError(f"two probes are named {probe.name!r}")
        self.probes.append(probe)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.probes]

    def latest(self) -> dict[str, Reading]:
        """probe name -> latest Reading (probes that have not finished a poll yet
        are absent). Cheap and non-blocking: a shallow copy of immutable readings."""
        return dict(self._latest)

    async def start(self) -> None:
        if self._tasks:
            return
        for p in self.probes:
            self._tasks.append(asyncio.create_task(self._loop(p), name=f"probe:{p.name}"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for p in self.probes:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.close(), 3.0)

    async def poll_once(self) -> dict[str, Reading]:
        """Poll every probe once, concurrently (for tests, benchmarks and a first
        reading before the load starts). Must not run while `start()`ed."""
        readings = await asyncio.gather(*(run_poll(p) for p in self.probes))
        for r in readings:
            self._record(r)
        return {r.probe: self._latest[r.probe] for r in readings}

    def _record(self, r: Reading) -> Reading:
        if r.ok:
            self._failing_since.pop(r.probe, None)
            self._failures.pop(r.probe, None)
        else:
            since = self._failing_since.setdefault(r.probe, r.t)
            n = self._failures[r.probe] = self._failures.get(r.probe, 0) + 1
            r = Reading(
                r.probe, r.t, False, r.duration_ms,
                {"failures": n, "failing_since": round(since, 3)}, r.error,
            )  # fmt: skip
        self._latest[r.probe] = r
        return r

    async def _loop(self, probe: Probe) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                r = self._record(await run_poll(probe))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never let one probe's bug end its task
                log.exception("%s probe runner", probe.name)
                r = self._record(
                    Reading(probe.name, time.time(), False, 0.0, {},
                            f"internal error in the {probe.name} probe ({e!r}): please report it")
                )  # fmt: skip
            if r.ok:
                # steady cadence, but the next poll is armed only now that this one ended
                delay = max(probe.interval - (loop.time() - started), 0.05 * probe.interval)
            else:
                fails = self._failures.get(probe.name, 1)
                delay = min(probe.interval * 2 ** (fails - 1), max(probe.interval, MAX_BACKOFF_S))
                if fails == 1:
                    log.warning("%s probe failed: %s", probe.name, r.error)
            await asyncio.sleep(delay)

    async def __aenter__(self) -> ProbeSet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
