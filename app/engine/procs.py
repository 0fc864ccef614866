"""`--processes N`: the load's workers in N worker processes.

One core runs out near 30,000 simple operations a second: asyncpg, redis-py and
aiohttp all parse on the event loop. With `--processes N` the main process
keeps everything but the workers — setup, verify and teardown, the probes, the
detectors, the tick clock and the controls, the recorder and the console — and
N spawned worker processes, each on its own uvloop with its own clients, run
the workers.

`ProcessWorkers` is the main process's side, behind the `Workers` protocol
(app/engine/workers.py); every message on the pipes is plain data. Each tick
the engine asks every worker process for its window (counts, errors, latency
as microsecond buckets, counters) and they are merged exactly, so
the timeline reads as if one process had done the work; a reply that arrives
late lands in the next tick, never nowhere. A control change is a new share
for each process. The hard cap holds across processes: each gets a fixed slice
of `--max-concurrency` and its own WorkerPool never exceeds it, so stepping down
in one process while stepping up in another cannot overshoot.

A worker process ignores SIGINT and SIGHUP (the main process decides when the
load stops) and stops at once, ending its statements on the server, when the
main process is gone (its pipe closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from app.engine.clients import Clients, close_clients, connect_clients
from app.engine.measure import Health, Window
from app.engine.workers import WorkerReport
from app.targets import Redactor, TargetError

ClassRef = tuple[str, str | None, str]


@dataclass
class HostSpec:
    """What one worker process needs to know (pickled to it at spawn)."""

    index: int
    cap: int  # its slice of --max-concurrency
    worker_offset: int  # its workers are numbered from here
    scenarios: list[tuple[ClassRef, str]]  # class, prefix; in the main engine's order
    params: dict[str, str]
    pg_dsn: str | None
    redis_url: str | None
    http_url: str | None
    pg_settings: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    drain_seconds: float = 5.0


def split_shares(totals: list[int], caps: list[int]) -> list[list[int]]:
    """Each scenario's workers dealt round-robin over the processes, so every
    process carries within one worker of the others and never above its cap."""
    n = len(caps)
    out = [[0] * len(totals) for _ in range(n)]
    load = [0] * n
    k = 0
    for i, total in enumerate(totals):
        for _ in range(total):
            for _ in range(n):
                if load[k] < caps[k]:
                    break
                k = (k + 1) % n
            else:
                return out  # every process is full: the cap holds
            out[k][i] += 1
            load[k] += 1
            k = (k + 1) % n
    return out


class ProcessWorkers:
    """The main process's side: spawn, steer, collect, stop (a `Workers`)."""

    def __init__(self, specs: list[HostSpec], names: list[str]) -> None:
        self.specs = specs
        self.names = list(names)  # the scenarios, in the order of shares
        n = len(specs)
        self._conns: list[Connection | None] = [None] * n
        self._procs: list[Any] = [None] * n
        self._alive: set[int] = set()
        self._live: list[dict[str, int]] = [{} for _ in range(n)]
        self._health: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * n
        self._nc: list[dict[str, int]] = [{} for _ in range(n)]
        # replies are merged here as they arrive; a late one lands in the next report
        self._pending = {name: Window() for name in self.names}
        self._events: list[tuple[float, str, str]] = []
        self._last: tuple[list[int], list[float], bool, str] | None = None
        self._ready: list[asyncio.Future[Any]] = []
        self._final: list[asyncio.Future[None]] = []
        self._seq = 0
        self._waiting: set[int] = set()
        self._replied: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self, timeout: float = 60.0) -> None:
        """Spawn the processes and wait until each has its clients open."""
        loop = self._loop = asyncio.get_running_loop()
        mp = multiprocessing.get_context("spawn")
        for k, spec in enumerate(self.specs):
            ours, theirs = mp.Pipe()
            proc = mp.Process(
                target=host_main, args=(theirs, spec), name=f"loadtop-w{k}", daemon=True
            )
            self._ready.append(loop.create_future())
            self._final.append(loop.create_future())
            proc.start()
            theirs.close()
            self._conns[k], self._procs[k] = ours, proc
            self._alive.add(k)
            loop.add_reader(ours.fileno(), self._readable, k)
        done, pending = await asyncio.wait(self._ready, timeout=timeout)
        if pending:
            await self.aclose()
            raise TargetError(
                f"{len(pending)} worker process(es) did not start within {timeout:.0f} s:"
                " try fewer --processes"
            )
        for f in done:
            if f.exception() is not None:
                await self.aclose()
                raise f.exception()  # type: ignore[misc]

    async def aclose(self, grace: float = 0.0) -> None:
        """Stop every process: after `grace` seconds to exit by itself (stop()
        gives them time to close their clients), then SIGTERM, then SIGKILL.
        Idempotent. The pipes are let go on the loop, the joins in a thread."""
        for k in list(self._alive):
            self._forget(k)
        await asyncio.to_thread(self._reap, grace)

    def _reap(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        for proc in self._procs:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            if proc is not None:
                proc.join(3)
                if proc.is_alive():
                    proc.kill()
                    proc.join(2)

    async def stop(self, drain_seconds: float) -> WorkerReport:
        """Orderly end: every process drains its workers and sends its last window."""
        for k in list(self._alive):
            self._send(k, ("stop",))
        waiting = [self._final[k] for k in self._alive]
        if waiting:
            await asyncio.wait(waiting, timeout=drain_seconds + 10)
        for k in [k for k in self._alive if not self._final[k].done()]:
            self._event("worker-process-lost", f"process {k} sent no final window")
        await self.aclose(grace=5.0)
        return self._report()

    # ---- steering ----------------------------------------------------------------
    def assign(self, shares: list[int], rates: list[float], paused: bool, mode: str) -> None:
        self._last = (list(shares), list(rates), paused, mode)
        alive = sorted(self._alive)
        if not alive:
            return
        per = split_shares(shares, [self.specs[k].cap for k in alive])
        for k, mine in zip(alive, per, strict=True):
            my_rates = [
                rates[i] * mine[i] / shares[i] if rates and shares[i] else 0.0
                for i in range(len(shares))
            ]
            self._send(k, ("set", mine, my_rates, paused, mode))

    def panic(self) -> None:
        for k in list(self._alive):
            self._send(k, ("panic",))

    async def collect(self, timeout: float) -> WorkerReport:
        """Ask every process for its window and wait (bounded) for the replies;
        each reply is merged as it arrives, a late one into the next report."""
        self._seq += 1
        self._waiting = set(self._alive)
        self._replied = asyncio.Event()
        for k in list(self._alive):
            self._send(k, ("flush", self._seq))
        if self._waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replied.wait(), timeout)
        return self._report()

    def _report(self) -> WorkerReport:
        windows = {name: w.payload() for name, w in self._pending.items()}
        self._pending = {name: Window() for name in self.names}
        events, self._events = self._events, []
        hs = [self._health[k] for k in self._alive] or [(0.0, 0.0, 0.0)]
        return {
            "windows": windows,
            "live": self.live(),
            "never_connected": self.never_connected,
            "events": events,
            # the busiest process is what saturates first
            "health": (max(h[0] for h in hs), max(h[1] for h in hs), sum(h[2] for h in hs)),
        }

    # ---- figures -------------------------------------------------------------------
    def live(self) -> dict[str, int]:
        out = dict.fromkeys(self.names, 0)
        for k in self._alive:
            for name, n in self._live[k].items():
                out[name] = out.get(name, 0) + n
        return out

    def live_total(self) -> int:
        return sum(self.live().values())

    @property
    def never_connected(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for nc in self._nc:
            for name, n in nc.items():
                if n:
                    out[name] = out.get(name, 0) + n
        return out

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    # ---- the pipes -------------------------------------------------------------------
    def _event(self, kind: str, note: str) -> None:
        self._events.append((time.time(), kind, note))

    def _send(self, k: int, msg: tuple) -> None:
        conn = self._conns[k]
        if conn is None:
            return
        try:
            conn.send(msg)
        except (OSError, ValueError):
            self._lost(k, "its pipe broke")

    def _readable(self, k: int) -> None:
        conn = self._conns[k]
        if conn is None:
            return
        try:
            while conn.poll():
                self._dispatch(k, conn.recv())
        except (EOFError, OSError):
            self._lost(k, "it exited")

    def _dispatch(self, k: int, msg: tuple) -> None:
        op = msg[0]
        if op == "ready":
            if not self._ready[k].done():
                self._ready[k].set_result(msg[1])
        elif op == "error":
            if not self._ready[k].done():
                self._ready[k].set_exception(TargetError(msg[1]))
        elif op in ("win", "final"):
            data = msg[-1]
            self._absorb(k, data)
            if op == "final":
                if not self._final[k].done():
                    self._final[k].set_result(None)
            elif msg[1] == self._seq:
                self._waiting.discard(k)
                if not self._waiting and self._replied is not None:
                    self._replied.set()

    def _absorb(self, k: int, data: Mapping[str, Any]) -> None:
        for name, payload in data["windows"].items():
            win = self._pending.get(name)
            if win is not None:
                win.merge(payload)
        self._live[k] = dict(data["live"])
        self._health[k] = tuple(data["health"])  # type: ignore[assignment]
        self._nc[k] = dict(data["never_connected"])
        self._events.extend(tuple(e) for e in data.get("events", ()))  # type: ignore[misc]

    def _forget(self, k: int) -> None:
        self._alive.discard(k)
        conn, self._conns[k] = self._conns[k], None
        if conn is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(conn.fileno())
            conn.close()
        self._live[k] = {}
        self._waiting.discard(k)
        if not self._waiting and self._replied is not None:
            self._replied.set()

    def _reassign(self) -> None:
        """The last assignment again, over the processes still alive."""
        if self._last is not None:
            self.assign(*self._last)

    def _lost(self, k: int, why: str) -> None:
        if k not in self._alive:
            return
        self._forget(k)
        if self._final[k].done():  # it sent its last window and exited: orderly
            return
        if not self._ready[k].done():
            self._ready[k].set_exception(TargetError(f"worker process {k} exited at start"))
        if not self._final[k].done():
            self._final[k].set_result(None)
        self._event("worker-process-lost", f"process {k}: {why}; its workers are gone")
        # a lost process's share goes to the others
        if self._last is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(self._reassign)


# ---- the worker process's side ---------------------------------------------------


def host_main(conn: Connection, spec: HostSpec) -> None:
    """Entry point of a worker process."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_IGN)
    try:
        import uvloop

        uvloop.run(_host(conn, spec))
    except ImportError:
        asyncio.run(_host(conn, spec))


async def _host(conn: Connection, spec: HostSpec) -> None:
    from app.engine.pool import WorkerPool
    from app.scenario import Context, resolve_class_ref

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("gone",))

    loop.add_reader(conn.fileno(), readable)
    redactor = Redactor.for_targets((spec.pg_dsn, spec.redis_url, spec.http_url), spec.params)
    clients = Clients(
        http_url=spec.http_url, pg_dsn=spec.pg_dsn, redis_url=spec.redis_url,
        pg_settings=dict(spec.pg_settings),
    )  # fmt: skip
    health = Health()
    try:
        instances = [resolve_class_ref(ref)(spec.params) for ref, _ in spec.scenarios]
        prefixes = {inst.name: prefix for inst, (_, prefix) in zip(instances, spec.scenarios, strict=True)}  # fmt: skip
        needs = {n for inst in instances for n in inst.needs}
        await connect_clients(clients, needs, redactor, size=spec.cap)
        for inst in instances:
            ctx = Context(
                worker=-1, params=spec.params, rng=random.Random(spec.seed),
                prefix=prefixes[inst.name], scenario=inst.name, pg=clients.pg,
                redis=clients.redis, http=clients.http, http_url=spec.http_url,
            )  # fmt: skip
            await asyncio.wait_for(inst.prepare(ctx), 60)
        pool = WorkerPool(
            [(inst, prefixes[inst.name]) for inst in instances], clients, cap=spec.cap,
            params=spec.params, seed=spec.seed, drain_seconds=spec.drain_seconds,
            redact=redactor, worker_offset=spec.worker_offset,
        )  # fmt: skip
        health.start()
        conn.send(("ready", os.getpid()))
    except Exception as e:
        with contextlib.suppress(OSError):
            conn.send(("error", redactor(f"worker process {spec.index}: {e}")))
        await close_clients(clients)
        return

    def take() -> dict[str, Any]:
        """This process's windows since the last take, its live workers and health."""
        return {**pool.take(), "health": health.take()}

    try:
        while True:
            msg = await inbox.get()
            op = msg[0]
            if op == "set":
                pool.assign(msg[1], msg[2], msg[3], msg[4])
            elif op == "flush":
                conn.send(("win", msg[1], take()))
            elif op == "panic":
                pool.panic()
            elif op in ("stop", "gone"):
                if op == "gone":  # the main process died: end the load now
                    pool.panic()
                await pool.drain()
                if op == "stop":
                    conn.send(("final", take()))
                break
    except (OSError, EOFError):
        pool.panic()
        await pool.drain()
    finally:
        await health.stop()
        await close_clients(clients)
