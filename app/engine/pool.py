"""One process's workers: the `WorkerPool`.

Closed model ("workers"): N workers per scenario, each running its scenario's
`run` back to back. A new assignment applies at once: new workers start,
surplus workers finish their current operation and leave. The pool's live
workers (including those finishing) never exceed its cap.

Open model ("rate"): per scenario a scheduler lays intended start times at the
assigned rate; the scenario's workers pick them up. Latency is measured from
the intended start (no coordinated omission), schedule lag is the actual minus
the intended start, and an intended start that finds the backlog full is
dropped and counted.

The pool knows nothing of ticks, targets, plans or sessions: it is told
shares and rates (`assign`), and hands out what its workers did since the last
`take()` as plain data. The same class runs the workers on the session's loop
(LocalWorkers) and inside every worker process (--processes, ProcessWorkers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.engine.clients import Clients, close_quietly
from app.engine.errors import CONNECTION_LOST, classify, is_connection_error
from app.engine.measure import Window
from app.scenario import Context, Scenario

# A worker whose operation failed for a lost or refused connection waits before
# its next try: from the first, doubling up to the last. A target that comes
# back is therefore retried within RECONNECT_BACKOFF_MAX_S by every worker.
RECONNECT_BACKOFF_MIN_S = 0.05
RECONNECT_BACKOFF_MAX_S = 1.0


def _next_backoff(backoff: float) -> float:
    return min(max(backoff * 2, RECONNECT_BACKOFF_MIN_S), RECONNECT_BACKOFF_MAX_S)


def backoff_sleep_s(backoff: float, draw: Callable[[], float] = random.random) -> float:
    """The wait for a backoff step, with "equal jitter": between half of it and
    all of it. Workers that lost the target together do not return in lockstep
    (1,000 of them connecting in the same millisecond is a thundering herd the
    real clients would not make), and none waits longer than the step."""
    return backoff * (0.5 + draw() / 2)


@dataclass
class _Worker:
    index: int
    ctx: Context
    task: asyncio.Task | None = None
    stopping: bool = False
    connected_once: bool = False
    idle: bool = False  # open model: waiting for an intended start


CONNECTS_AT_ONCE = 64  # a pool's connection attempts in flight at one time
SLICE_S = 0.001  # the rate scheduler's batch: starts closer than this are laid per slice


class ScenarioRun:
    """One scenario's workers, open window and scheduler in a pool."""

    def __init__(
        self, instance: Scenario, prefix: str, params: Mapping[str, str],
        redact: Callable[[str], str],
    ) -> None:  # fmt: skip
        self.instance = instance
        self.name = instance.name
        self.prefix = prefix
        self.params = params
        self.needs_pg = "postgres" in instance.needs
        self.win = Window()
        self.workers: dict[int, _Worker] = {}
        self.target = 0
        self.rate = 0.0
        self.queue: asyncio.Queue[float] | None = None
        self.scheduler: asyncio.Task | None = None
        self.never_connected: set[int] = set()
        self.ever_connected: set[int] = set()
        self.high = 0  # worker indexes below this were handed out ...
        self.free: list[int] = []  # ... and these of them are free again (a heap)
        self.redact = redact  # the session's Redactor

    def active(self) -> int:
        return sum(1 for w in self.workers.values() if not w.stopping)

    def count(self, name: str, n: int = 1) -> None:
        """ctx.count(): into the window open now, so a count lands in its tick."""
        self.win.count(name, n)

    def record_failure(
        self, exc: BaseException, elapsed_us: int | None, conn_gone: bool = False
    ) -> str:
        win = self.win
        win.failed += 1
        cls = classify(exc)
        if (
            conn_gone
            and not is_connection_error(cls)
            and type(exc).__module__.startswith("asyncpg")
        ):
            # a driver error raised because the connection died under the operation
            # (e.g. "cannot switch to state 15"): what happened is a lost connection
            cls = CONNECTION_LOST
        win.errors[cls] = win.errors.get(cls, 0) + 1
        if not win.last_error:
            # an error's text may echo a URL with its token: masked at the source
            win.last_error = self.redact(f"{cls}: {str(exc)[:160]}")
        if elapsed_us is not None:
            us = min(max(elapsed_us, 1), 60_000_000)
            win.lat[us] = win.lat.get(us, 0) + 1
        return cls


class WorkerPool:
    """Runs one process's workers. Call on its event loop."""

    def __init__(
        self,
        scenarios: list[tuple[Scenario, str]],
        clients: Clients,
        *,
        cap: int,
        params: Mapping[str, str] | None = None,
        seed: int = 0,
        drain_seconds: float = 5.0,
        redact: Callable[[str], str] | None = None,
        worker_offset: int = 0,
    ) -> None:
        self.clients = clients
        self.cap = cap
        self.seed = seed
        self.drain_seconds = drain_seconds
        self.worker_offset = worker_offset  # worker indexes start here
        self.redact: Callable[[str], str] = redact or str
        params = dict(params or {})
        self.runs = [ScenarioRun(inst, prefix, params, self.redact) for inst, prefix in scenarios]
        self.mode = "workers"
        self.paused = False
        self.panicked = False
        self._shares = [0] * len(self.runs)
        self._rates: list[float] = []
        self._closing = False
        self._reconcile_soon = False
        self._connect_slots: asyncio.Semaphore | None = None
        self._bg: list[asyncio.Task] = []
        self._events: list[tuple[float, str, str]] = []  # (wall time, kind, note)

    # ---- steering ----------------------------------------------------------------
    def assign(self, shares: list[int], rates: list[float], paused: bool, mode: str) -> None:
        """Run `shares[i]` workers of scenario i; in rate mode at `rates[i]`
        intended starts per second ([] for none)."""
        self._shares, self._rates = list(shares), list(rates)
        self.mode = mode
        self.paused = paused
        if not paused:
            self.panicked = False
        self.reconcile()

    def panic(self) -> None:
        """All load stops now: running operations are cancelled, and their
        backends are terminated on the server, so a statement stuck behind a
        lock does not keep waiting there (closing the socket alone does not
        reach a backend that waits on a lock) and its transaction rolls back."""
        self.paused = True
        self.panicked = True
        for r in self.runs:
            for w in r.workers.values():
                w.stopping = True
                if w.task is not None:
                    w.task.cancel()
            self._stop_scheduler(r)
        self._terminate_worker_backends()

    @property
    def live_total(self) -> int:
        return sum(len(r.workers) for r in self.runs)

    def live(self) -> dict[str, int]:
        return {r.name: len(r.workers) for r in self.runs}

    def never_connected(self) -> dict[str, int]:
        return {r.name: len(r.never_connected) for r in self.runs if r.never_connected}

    def take(self) -> dict[str, Any]:
        """The windows since the last take (plain data), live workers, events."""
        wins = {}
        for r in self.runs:
            win, r.win = r.win, Window()
            wins[r.name] = win.payload()
        events, self._events = self._events, []
        return {
            "windows": wins,
            "live": self.live(),
            "never_connected": self.never_connected(),
            "events": events,
        }

    def _event(self, kind: str, note: str) -> None:
        self._events.append((time.time(), kind, note))

    # ---- workers ----------------------------------------------------------------
    def reconcile(self) -> None:
        """Bring every scenario's worker count to its share, never letting the
        live total exceed the cap."""
        stopped = self.paused or self._closing
        shares = [0] * len(self.runs) if stopped else list(self._shares)
        rates = self._rates
        # step down first, so freed capacity can serve step-ups elsewhere
        for r, share in zip(self.runs, shares, strict=True):
            r.target = share
            live = sorted((w for w in r.workers.values() if not w.stopping), key=lambda w: w.index)
            for w in live[share:]:
                w.stopping = True
                if w.task is not None and w.idle:
                    # a rate-mode worker waiting for a start must not wait forever
                    w.task.cancel()
        for i, (r, share) in enumerate(zip(self.runs, shares, strict=True)):
            # counted once, then kept up to date: r.active() is O(workers), and
            # calling it per spawn made 10,000 workers take seconds to start
            active = r.active()
            for w in sorted(r.workers.values(), key=lambda w: w.index):
                if active >= share:
                    break
                if w.stopping and not (w.task is not None and w.task.cancelling()):
                    w.stopping = False  # revive a worker that is still finishing
                    active += 1
            live_n = self.live_total
            while active < share and live_n < self.cap:
                self._spawn(r)
                active += 1
                live_n += 1
            if self.mode == "rate":
                r.rate = rates[i] if rates else 0.0
                if share and r.rate > 0 and not self.paused:
                    self._ensure_scheduler(r)
                else:
                    self._stop_scheduler(r)

    def _spawn(self, r: ScenarioRun) -> None:
        # the lowest free worker index, without scanning the workers (O(1) per
        # spawn: the scan made 10,000 workers take seconds to start)
        r.high = max(r.high, self.worker_offset)
        while r.free and r.free[0] in r.workers:
            heapq.heappop(r.free)
        if r.free:
            idx = heapq.heappop(r.free)
        else:
            idx = r.high
            r.high += 1
        ctx = Context(
            worker=idx,
            params=r.params,
            rng=random.Random(f"{self.seed}:{r.name}:{idx}"),
            prefix=r.prefix,
            scenario=r.name,
            pg=self.clients.pg,
            redis=self.clients.redis,
            http=self.clients.http,
            http_url=self.clients.http_url,
            concurrency=r.target,
            _counter=r.count,
        )
        w = _Worker(idx, ctx)
        r.workers[idx] = w
        w.task = asyncio.get_running_loop().create_task(self._worker(r, w), name=f"{r.name}:w{idx}")
        w.task.add_done_callback(functools.partial(self._worker_left, r, w))

    def _worker_left(self, r: ScenarioRun, w: _Worker, _task: asyncio.Task[None]) -> None:
        self._worker_done(r, w)

    def _worker_done(self, r: ScenarioRun, w: _Worker) -> None:
        if r.workers.get(w.index) is w:
            del r.workers[w.index]
            heapq.heappush(r.free, w.index)
        if not w.connected_once and r.needs_pg:
            r.never_connected.add(w.index)
        # a worker leaving frees capacity: a deferred step-up may proceed; one
        # reconcile for all the workers leaving together (each is O(workers))
        if not self._closing and not self._reconcile_soon:
            self._reconcile_soon = True
            asyncio.get_running_loop().call_soon(self._deferred_reconcile)

    def _deferred_reconcile(self) -> None:
        self._reconcile_soon = False
        if not self._closing:
            self.reconcile()

    async def _connect(self, r: ScenarioRun, w: _Worker) -> bool:
        import asyncpg

        if self._connect_slots is None:
            self._connect_slots = asyncio.Semaphore(CONNECTS_AT_ONCE)
        try:
            # at most CONNECTS_AT_ONCE connection attempts in flight: 10,000
            # workers starting at once would otherwise storm the server (each
            # attempt forks a backend, refused or not) and starve this loop:
            # no tick, and a stop that waits for them
            async with self._connect_slots:
                conn = await asyncpg.connect(
                    self.clients.pg_dsn,
                    timeout=10,
                    server_settings={
                        "application_name": f"loadtop:{r.name}:w{w.index}"[:63],
                        **self.clients.pg_settings,
                    },
                )
            w.ctx.conn = conn
            w.connected_once = True
            r.ever_connected.add(w.index)
            r.never_connected.discard(w.index)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as e:
            r.win.started += 1
            r.record_failure(e, None)
            return False

    async def _worker(self, r: ScenarioRun, w: _Worker) -> None:
        run = r.instance.run
        ctx = w.ctx
        backoff = 0.0
        perf = time.perf_counter
        ops = 0
        try:
            while not w.stopping:
                ops += 1
                if not ops & 63:
                    # a run() that never suspends (pure CPU, or failing before its
                    # first await) would otherwise starve the loop: no tick, no stop
                    await asyncio.sleep(0)
                need_conn = r.needs_pg and (ctx.conn is None or ctx.conn.is_closed())
                if backoff or need_conn:
                    # no operation in flight while backing off or connecting: a
                    # stopping pool cancels such a worker at once, not after the
                    # drain (10,000 workers connecting must not hold up shutdown)
                    w.idle = True
                    try:
                        if backoff:
                            await asyncio.sleep(backoff_sleep_s(backoff))
                        if w.stopping:
                            break
                        connected = not need_conn or await self._connect(r, w)
                    finally:
                        w.idle = False
                    if not connected:
                        backoff = _next_backoff(backoff)
                        continue
                if r.queue is not None and self.mode == "rate":
                    w.idle = True
                    try:
                        intended = await r.queue.get()
                    finally:
                        w.idle = False
                    t0 = perf()
                    lag = (t0 - intended) * 1000.0
                    win = r.win
                    if lag > win.lag_ms:
                        win.lag_ms = lag
                else:
                    t0 = intended = perf()
                    win = r.win
                win.started += 1
                ctx.concurrency = r.target
                try:
                    await run(ctx)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    gone = ctx.conn is not None and ctx.conn.is_closed()
                    cls = r.record_failure(e, int((perf() - intended) * 1e6), gone)
                    if is_connection_error(cls):
                        backoff = _next_backoff(backoff)
                    continue
                us = int((perf() - intended) * 1e6)
                win = r.win  # the window may have closed meanwhile
                win.ok += 1
                if not 0 < us < 60_000_000:
                    us = max(1, min(us, 60_000_000))
                lat = win.lat
                lat[us] = lat.get(us, 0) + 1
                backoff = 0.0
        finally:
            await self._release(r, w)

    async def _release(self, r: ScenarioRun, w: _Worker) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(r.instance.worker_stop(w.ctx)), 1.0)
        conn = w.ctx.conn
        w.ctx.conn = None
        if conn is not None and not conn.is_closed():
            # closing ends any open transaction (it rolls back) and the backend
            conn.terminate() if self.panicked else await close_quietly(conn)

    # ---- open model ---------------------------------------------------------------
    def _ensure_scheduler(self, r: ScenarioRun) -> None:
        if r.queue is None:
            r.queue = asyncio.Queue()
        if r.scheduler is None or r.scheduler.done():
            r.scheduler = asyncio.get_running_loop().create_task(self._schedule(r))

    def _stop_scheduler(self, r: ScenarioRun) -> None:
        if r.scheduler is not None:
            r.scheduler.cancel()
            r.scheduler = None
        if r.queue is not None:
            while not r.queue.empty():
                r.queue.get_nowait()

    async def _schedule(self, r: ScenarioRun) -> None:
        """Lay intended start times at r.rate per second. The backlog of starts
        no worker has taken is bounded by the worker count: a start beyond it is
        dropped (and counted), as pgbench's --rate skips late transactions.

        Constant work per scheduling slice at any rate: the starts due since
        the last slice are counted arithmetically, at most the free backlog
        slots are queued, the rest are dropped in one sum; every slice yields
        to the loop (at least SLICE_S apart once the gap is shorter than that)."""
        perf = time.perf_counter
        nxt = perf()
        assert r.queue is not None
        queue = r.queue
        while True:
            rate = r.rate
            if rate <= 0:
                return
            gap = 1.0 / rate
            now = perf()
            # sleep until the next start, but never spin: below SLICE_S between
            # starts, wake once a slice and take the slice's starts as a batch
            wait = max(nxt - now, SLICE_S if gap < SLICE_S else 0.0)
            await asyncio.sleep(wait)
            now = perf()
            if nxt > now:
                continue
            due = int((now - nxt) / gap) + 1
            free = max(max(r.active(), 1) - queue.qsize(), 0)
            put = min(due, free)
            for k in range(put):
                queue.put_nowait(nxt + k * gap)
            win = r.win
            win.scheduled += due
            win.dropped += due - put
            nxt += due * gap

    # ---- ending --------------------------------------------------------------------
    def _terminate_worker_backends(
        self, only: set[asyncio.Task] | None = None
    ) -> asyncio.Task | None:
        pids = []
        for r in self.runs:
            for w in r.workers.values():
                conn = w.ctx.conn
                if conn is not None and not conn.is_closed() and (only is None or w.task in only):
                    pids.append(conn.get_server_pid())
        if not pids or self.clients.pg is None:
            return None
        task = asyncio.get_running_loop().create_task(self._pg_terminate(pids))
        self._bg.append(task)
        return task

    async def _pg_terminate(self, pids: list[int]) -> None:
        try:
            await asyncio.wait_for(
                self.clients.pg.execute(
                    "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids
                ),
                2.0,
            )
        except Exception as e:  # the client side is closed anyway; say so
            self._event("panic-terminate-failed", f"{classify(e)}")

    async def drain(self) -> None:
        """Stop every worker: idle ones at once, busy ones after their operation
        (up to drain_seconds), then hanging ones, also on the server."""
        self._closing = True
        for r in self.runs:
            self._stop_scheduler(r)
            for w in r.workers.values():
                w.stopping = True
                if w.task is not None and w.idle:
                    w.task.cancel()
        tasks = [w.task for r in self.runs for w in r.workers.values() if w.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.drain_seconds)
            # operations still hanging after the drain: end them on the server too
            killing = self._terminate_worker_backends(only=set(pending)) if pending else None
            for t in pending:
                t.cancel()
            if killing is not None:
                await asyncio.wait([killing], timeout=2.5)
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for t in self._bg:
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        self._bg = []
