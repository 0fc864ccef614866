"""The load engine: workers, the tick clock, and the controls.

Closed model ("workers"): N workers per the scenario mix, each running its
scenario's `run` back to back. `set_concurrency` applies at once: new workers
start, surplus workers finish their current operation and leave. The total of
live workers (including those finishing) never exceeds `max_concurrency`.

Open model ("rate"): per scenario a scheduler lays intended start times at the
given rate; up to N workers pick them up. Latency is measured from the intended
start (no coordinated omission), schedule lag is the actual minus the intended
start, and an intended start that finds the backlog full is dropped and
counted.

Once per interval the engine closes the window and emits one `Tick` to its
listeners (recorder, printer, console). All of this runs on one asyncio loop;
the controls must be called on that loop (the session wraps them for other
threads). With --processes N the workers run in worker processes, each with an
engine of its own that this one steers and collects (see app/engine/procs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psutil
from hdrh.histogram import HdrHistogram

from app.engine.errors import CONNECTION_LOST, classify, is_connection_error
from app.engine.thresholds import Threshold, ThresholdSet
from app.scenario import Context, Scenario
from app.tick import (
    Anomaly,
    ControlEvent,
    GeneratorStats,
    Reading,
    ScenarioWindow,
    Tick,
    new_histogram,
)

if TYPE_CHECKING:
    from app.engine.procs import WorkerHosts

TickListener = Callable[[Tick], None]
AdminContext = Callable[[str], AbstractAsyncContextManager[Context]]


class Analyzer(Protocol):
    """What the detectors offer the engine (app.detect.DetectorSet)."""

    def evaluate(self, tick: Tick) -> tuple[tuple[Anomaly, ...], tuple[Anomaly, ...]]: ...

    def note_invariants(self, scenario: str, violations: list[str]) -> None: ...


@dataclass
class EngineConfig:
    concurrency: int = 1
    max_concurrency: int = 256
    rate: float | None = None  # open model when set
    plan: list[int] = field(default_factory=list)
    step_seconds: float = 30.0
    duration: float | None = None  # None: run until stop() (or the plan ends)
    interval: float = 1.0
    verify_every: float = 5.0
    seed: int = 0
    thresholds: list[Threshold] = field(default_factory=list)
    drain_seconds: float = 5.0  # how long stopping workers may finish their op
    end_with_plan: bool = True  # headless: the run ends when the ramp plan does


@dataclass
class Clients:
    """Shared clients for the run; the session creates and closes them."""

    pg_dsn: str | None = None
    pg: Any = None  # asyncpg.Pool
    redis: Any = None  # redis.asyncio.Redis
    http: Any = None  # aiohttp.ClientSession
    http_url: str | None = None
    admin_conn_factory: Callable[[], Any] | None = None
    pg_settings: dict[str, str] = field(default_factory=dict)  # e.g. read-only sessions


MAX_COUNTERS = 32  # ctx.count() names per scenario and tick; more fold into "other"


class _Window:
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
        """The window as plain data, for a worker process to send (--processes)."""
        return {k: getattr(self, k) for k in self.__slots__}

    def merge(self, p: Mapping[str, Any]) -> None:
        """Add a worker process's window into this one: counts add, latencies
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


@dataclass
class _Worker:
    index: int
    ctx: Context
    task: asyncio.Task | None = None
    stopping: bool = False
    connected_once: bool = False
    idle: bool = False  # open model: waiting for an intended start


class _ScenarioRun:
    def __init__(
        self, instance: Scenario, weight: float, prefix: str, params: Mapping[str, str]
    ) -> None:
        self.instance = instance
        self.name = instance.name
        self.weight = weight
        self.prefix = prefix
        self.params = params
        self.needs_pg = "postgres" in instance.needs
        self.win = _Window()
        self.workers: dict[int, _Worker] = {}
        self.target = 0
        self.rate = 0.0
        self.queue: asyncio.Queue[float] | None = None
        self.scheduler: asyncio.Task | None = None
        self.never_connected: set[int] = set()
        self.ever_connected: set[int] = set()
        self.redact: Callable[[str], str] = str  # the session's Redactor

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


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` workers by weight (largest remainder), each share >= 0."""
    if not weights:
        return []
    s = sum(weights)
    raw = [total * w / s for w in weights]
    base = [int(x) for x in raw]
    rest = total - sum(base)
    order = sorted(range(len(raw)), key=lambda i: raw[i] - base[i], reverse=True)
    for i in order[:rest]:
        base[i] += 1
    return base


class LoadEngine:
    def __init__(
        self,
        scenarios: list[tuple[Scenario, float]],
        clients: Clients,
        config: EngineConfig,
        *,
        prefixes: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        readings: Callable[[], Mapping[str, Reading]] | None = None,
        analyzer: Analyzer | None = None,
        clock: Callable[[], float] = time.time,
        redact: Callable[[str], str] | None = None,
        procs: WorkerHosts | None = None,
        worker_offset: int = 0,
    ) -> None:
        # no scenario at all is `loadtop watch`: the tick clock with probes and
        # detectors only, no load
        self.cfg = config
        self.clients = clients
        self.params = dict(params or {})
        self.runs = [
            _ScenarioRun(inst, w, prefixes[inst.name], self.params) for inst, w in scenarios
        ]
        self.redact: Callable[[str], str] = redact or str
        for r in self.runs:
            r.redact = self.redact
        self.readings = readings
        self.analyzer = analyzer
        self.clock = clock
        self.listeners: list[TickListener] = []
        self.mode = "rate" if config.rate else "workers"
        self.target = min(max(config.concurrency, 0), config.max_concurrency)
        self.rate = config.rate
        self.paused = False
        self.panicked = False
        self.plan_index: int | None = None
        self.plan_running = False
        self.plan_done = False
        self._step_started = 0.0
        self.thresholds = ThresholdSet(config.thresholds)
        self.violations: dict[str, list[str]] = {}
        self._events: list[ControlEvent] = []
        self._stop = asyncio.Event()
        self.stop_reason = ""
        self._tick_index = 0
        self._started_mono = 0.0
        self._last_close = 0.0
        self._lag_max_ms = 0.0
        self._proc = psutil.Process()
        self._bg: list[asyncio.Task] = []
        self._rng = random.Random(config.seed)
        self.ticks_emitted = 0
        self.last_tick: Tick | None = None
        # --processes N: the workers run in worker processes, this engine steers
        self.procs = procs
        # in a worker process: the steering engine's shares and rates for this one
        self._hosted: tuple[list[int], list[float]] | None = None
        self.worker_offset = worker_offset  # worker indexes start here
        if procs is not None:
            procs.attach(self.runs)
            procs.on_event = lambda kind, note: self.event(kind, "system", note=note)
            # a lost process's share goes to the others
            procs.on_lost = lambda: asyncio.get_running_loop().call_soon(self._reconcile)

    # ---- listeners ------------------------------------------------------------
    def subscribe(self, listener: TickListener) -> None:
        self.listeners.append(listener)

    # ---- controls (call on the engine's loop) ----------------------------------
    def event(self, kind: str, source: str, before: Any = None, after: Any = None,
              note: str = "") -> None:  # fmt: skip
        note = self.redact(note) if note else note
        self._events.append(ControlEvent(self.clock(), kind, source, before, after, note))

    def set_concurrency(self, n: int, source: str = "key") -> None:
        n = max(0, int(n))
        capped = min(n, self.cfg.max_concurrency)
        note = f"capped at --max-concurrency {self.cfg.max_concurrency}" if capped < n else ""
        if source != "plan" and self.plan_running:
            self._pause_plan(source)
        before = self.target
        self.target = capped
        if before != capped or note:
            self.event("concurrency", source, before, capped, note)
        self._reconcile()

    def step_concurrency(self, delta: int, source: str = "key") -> None:
        self.set_concurrency(self.target + delta, source)

    def set_rate(self, rate: float, source: str = "key") -> None:
        rate = max(0.0, float(rate))
        before = self.rate
        self.rate = rate
        self.mode = "rate"
        self.event("rate", source, before, rate)
        self._reconcile()

    def pause(self, source: str = "key") -> None:
        if self.paused:
            return
        self.paused = True
        self.event("pause", source, self.target, 0)
        self._reconcile()

    def resume(self, source: str = "key") -> None:
        if not self.paused:
            return
        self.paused = False
        self.panicked = False
        self.event("resume", source, 0, self.target)
        self._reconcile()

    def panic(self, source: str = "key") -> None:
        """All load stops now: running operations are cancelled, and their
        backends are terminated on the server, so a statement stuck behind a
        lock does not keep waiting there (closing the socket alone does not
        reach a backend that waits on a lock) and its transaction rolls back."""
        self.paused = True
        self.panicked = True
        if self.plan_running:
            self._pause_plan(source)
        self.event("panic", source, self.live_workers, 0)
        if self.procs is not None:
            self.procs.panic()
        for r in self.runs:
            for w in r.workers.values():
                w.stopping = True
                if w.task is not None:
                    w.task.cancel()
            self._stop_scheduler(r)
        self._terminate_worker_backends()

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
            self.event("panic-terminate-failed", "system", note=f"{classify(e)}")

    def start_plan(self, source: str = "key") -> None:
        """Start (or resume) the ramp plan. Steps change on tick boundaries, so
        each tick belongs to exactly one step."""
        if not self.cfg.plan or self.plan_running:
            return
        if self.plan_done or self.plan_index is None:
            self.plan_index = 0
            self.plan_done = False
        self.plan_running = True
        self.event("plan-start", source, note=f"steps {self.cfg.plan}")
        if self.paused:
            self.resume(source)
        self._enter_step()

    def _enter_step(self) -> None:
        assert self.plan_index is not None
        plan = self.cfg.plan
        i = self.plan_index
        self._step_started = asyncio.get_running_loop().time()
        self.event("plan-step", "plan", self.target, plan[i], note=f"step {i + 1}/{len(plan)}")
        self.set_concurrency(plan[i], source="plan")

    def _advance_plan(self, now: float) -> None:
        """Called by the tick clock right after a window closes."""
        if not self.plan_running or self.plan_index is None:
            return
        if now - self._step_started < self.cfg.step_seconds - 1e-3:
            return
        if self.plan_index + 1 < len(self.cfg.plan):
            self.plan_index += 1
            self._enter_step()
            return
        self.plan_running = False
        self.plan_done = True
        self.event("plan-stop", "plan", note="ramp plan finished")
        if self.cfg.duration is None and self.cfg.end_with_plan:
            self.stop("plan finished")

    def stop_plan(self, source: str = "key") -> None:
        if self.plan_running:
            self.plan_running = False
            self.event("plan-stop", source)

    def _pause_plan(self, source: str) -> None:
        self.plan_running = False
        self.event("plan-paused", source, note="a manual change paused the ramp plan")

    def stop(self, reason: str = "stop") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    @property
    def live_workers(self) -> int:
        if self.procs is not None:
            return self.procs.live_total()
        return sum(len(r.workers) for r in self.runs)

    # ---- workers ----------------------------------------------------------------
    def _reconcile(self) -> None:
        """Bring every scenario's worker count to its share of the target,
        never letting the live total exceed max_concurrency."""
        stopped = self.paused or self._stop.is_set()
        if self._hosted is not None:  # a worker process does as it is told
            shares = [0] * len(self.runs) if stopped else list(self._hosted[0])
            rates = list(self._hosted[1]) if any(self._hosted[1]) else []
        else:
            total = 0 if stopped else self.target
            shares = allocate(total, [r.weight for r in self.runs])
            weights = sum(r.weight for r in self.runs)
            rates = [self.rate * r.weight / weights for r in self.runs] if self.rate else []
        if self.procs is not None:
            for r, share in zip(self.runs, shares, strict=True):
                r.target = share
            self.procs.assign(shares, rates if self.mode == "rate" else [], self.paused)
            return
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
            for w in sorted(r.workers.values(), key=lambda w: w.index):
                if r.active() >= share:
                    break
                if w.stopping and not (w.task is not None and w.task.cancelling()):
                    w.stopping = False  # revive a worker that is still finishing
            while r.active() < share and self.live_workers < self.cfg.max_concurrency:
                self._spawn(r)
            if self.mode == "rate":
                r.rate = rates[i] if rates else 0.0
                if share and r.rate > 0 and not self.paused:
                    self._ensure_scheduler(r)
                else:
                    self._stop_scheduler(r)

    def _spawn(self, r: _ScenarioRun) -> None:
        idx = self.worker_offset
        while idx in r.workers:
            idx += 1
        ctx = Context(
            worker=idx,
            params=r.params,
            rng=random.Random(f"{self.cfg.seed}:{r.name}:{idx}"),
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
        w.task.add_done_callback(lambda t, r=r, w=w: self._worker_done(r, w))

    def _worker_done(self, r: _ScenarioRun, w: _Worker) -> None:
        if r.workers.get(w.index) is w:
            del r.workers[w.index]
        if not w.connected_once and r.needs_pg:
            r.never_connected.add(w.index)
        # a worker leaving frees capacity: a deferred step-up may proceed
        if not self._stop.is_set():
            asyncio.get_running_loop().call_soon(self._reconcile)

    async def _connect(self, r: _ScenarioRun, w: _Worker) -> bool:
        import asyncpg

        try:
            w.ctx.conn = await asyncpg.connect(
                self.clients.pg_dsn,
                timeout=10,
                server_settings={
                    "application_name": f"loadtop:{r.name}:w{w.index}"[:63],
                    **self.clients.pg_settings,
                },
            )
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

    async def _worker(self, r: _ScenarioRun, w: _Worker) -> None:
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
                if backoff:
                    await asyncio.sleep(backoff)
                    if w.stopping:
                        break
                need_conn = r.needs_pg and (ctx.conn is None or ctx.conn.is_closed())
                if need_conn and not await self._connect(r, w):
                    backoff = min(max(backoff * 2, 0.05), 1.0)
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
                        backoff = min(max(backoff * 2, 0.05), 1.0)
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

    async def _release(self, r: _ScenarioRun, w: _Worker) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(r.instance.worker_stop(w.ctx)), 1.0)
        conn = w.ctx.conn
        w.ctx.conn = None
        if conn is not None and not conn.is_closed():
            # closing ends any open transaction (it rolls back) and the backend
            conn.terminate() if self.panicked else await _close_quietly(conn)

    # ---- open model ---------------------------------------------------------------
    def _ensure_scheduler(self, r: _ScenarioRun) -> None:
        if r.queue is None:
            r.queue = asyncio.Queue()
        if r.scheduler is None or r.scheduler.done():
            r.scheduler = asyncio.get_running_loop().create_task(self._schedule(r))

    def _stop_scheduler(self, r: _ScenarioRun) -> None:
        if r.scheduler is not None:
            r.scheduler.cancel()
            r.scheduler = None
        if r.queue is not None:
            while not r.queue.empty():
                r.queue.get_nowait()

    async def _schedule(self, r: _ScenarioRun) -> None:
        """Lay intended start times at r.rate per second. The backlog of starts
        no worker has taken is bounded by the worker count: a start beyond it is
        dropped (and counted), as pgbench's --rate skips late transactions."""
        perf = time.perf_counter
        nxt = perf()
        assert r.queue is not None
        while True:
            rate = r.rate
            if rate <= 0:
                return
            now = perf()
            if nxt > now:
                await asyncio.sleep(nxt - now)
            now = perf()
            gap = 1.0 / rate
            while nxt <= now:
                win = r.win
                win.scheduled += 1
                if r.queue.qsize() >= max(r.active(), 1):
                    win.dropped += 1
                else:
                    r.queue.put_nowait(nxt)
                nxt += gap

    # ---- verify -------------------------------------------------------------------
    async def verify_all(self, admin: AdminContext) -> None:
        for r in self.runs:
            try:
                async with admin(r.name) as ctx:
                    found = await asyncio.wait_for(r.instance.verify(ctx), 30)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                cls = classify(e)
                if is_connection_error(cls) or cls == "timeout":
                    # the target is down or restarting: that is an outage (counted by
                    # the workers), not a broken invariant; verify runs again later
                    self.event("verify-skipped", "system", note=f"{r.name}: {cls}")
                    continue
                found = [f"verify() could not run: {cls}: {str(e)[:160]}"]
            found = [self.redact(str(v)) for v in found or []]
            if found:
                seen = self.violations.setdefault(r.name, [])
                for v in found:
                    if v not in seen and len(seen) < 100:
                        seen.append(v)
            if self.analyzer is not None:
                self.analyzer.note_invariants(r.name, list(found))

    async def _verify_loop(self, admin: AdminContext) -> None:
        while True:
            await asyncio.sleep(self.cfg.verify_every)
            await self.verify_all(admin)

    # ---- generator health ------------------------------------------------------------
    async def _lag_monitor(self) -> None:
        loop = asyncio.get_running_loop()
        step = 0.1
        while True:
            t0 = loop.time()
            await asyncio.sleep(step)
            lag = (loop.time() - t0 - step) * 1000.0
            if lag > self._lag_max_ms:
                self._lag_max_ms = lag

    # ---- the tick clock ------------------------------------------------------------
    def close_tick(self, now_mono: float) -> Tick:
        interval = max(now_mono - self._last_close, 1e-6)
        self._last_close = now_mono
        windows = []
        for r in self.runs:
            win, r.win = r.win, _Window()
            live = self.procs.live(r.name) if self.procs is not None else len(r.workers)
            windows.append(
                ScenarioWindow(
                    name=r.name,
                    concurrency=live,
                    target=r.target,
                    started=win.started,
                    ok=win.ok,
                    failed=win.failed,
                    errors=win.errors,
                    hist=win.histogram(),
                    scheduled=win.scheduled,
                    dropped=win.dropped,
                    lag_ms=win.lag_ms,
                    last_error=win.last_error,
                    counters=win.counters,
                )
            )
        events, self._events = tuple(self._events), []
        mem = self._proc.memory_info().rss / 2**20
        cpu, lag = self._proc.cpu_percent(None), self._lag_max_ms
        if self.procs is not None:  # the busiest process is what saturates first
            p_cpu, p_lag, p_rss = self.procs.generator_stats()
            cpu, lag, mem = max(cpu, p_cpu), max(lag, p_lag), mem + p_rss
        gen = GeneratorStats(loop_lag_ms=lag, cpu_pct=cpu, rss_mb=mem)
        self._lag_max_ms = 0.0
        tick = Tick(
            index=self._tick_index,
            t=self.clock(),
            elapsed=now_mono - self._started_mono,
            interval=interval,
            mode=self.mode,
            target_concurrency=0 if self.paused else self.target,
            concurrency=self.live_workers,
            rate=self.rate,
            paused=self.paused,
            plan_step=self.plan_index if self.plan_running else None,
            scenarios=tuple(windows),
            readings=dict(self.readings()) if self.readings else {},
            events=events,
            generator=gen,
        )
        self._tick_index += 1
        if self.analyzer is not None:
            try:
                active, cleared = self.analyzer.evaluate(tick)
                tick = dataclasses.replace(tick, anomalies=active, cleared=cleared)
            except Exception as e:  # a detector bug must not stop the run
                tick = dataclasses.replace(
                    tick,
                    events=(*tick.events, ControlEvent(tick.t, "detector-error", "system",
                                                       note=f"{type(e).__name__}: {e}")),
                )  # fmt: skip
        statuses = self.thresholds.evaluate(tick)
        if statuses:
            tick = dataclasses.replace(tick, thresholds=statuses)
        return tick

    def _emit(self, tick: Tick) -> None:
        self.last_tick = tick
        self.ticks_emitted += 1
        for listener in self.listeners:
            listener(tick)

    async def run(self, admin: AdminContext) -> str:
        """Run the load until stopped; returns the stop reason. `admin(name)`
        gives the context (worker -1) that verify() runs with."""
        loop = asyncio.get_running_loop()
        self._started_mono = self._last_close = loop.time()
        self._proc.cpu_percent(None)
        self.event("start", "cli", None, self.target if not self.rate else self.rate)
        self._bg = [
            loop.create_task(self._lag_monitor()),
            loop.create_task(self._verify_loop(admin)),
        ]
        if self.cfg.plan:
            self.start_plan(source="cli")
        else:
            self._reconcile()
        deadline = self._started_mono + self.cfg.duration if self.cfg.duration is not None else None
        k = 1
        try:
            while not self._stop.is_set():
                nxt = self._started_mono + k * self.cfg.interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(nxt - loop.time(), 0))
                if self._stop.is_set():
                    break
                k += 1
                if self.procs is not None:  # their windows, merged into ours
                    await self.procs.collect(self.runs, timeout=self.cfg.interval / 2)
                tick = self.close_tick(loop.time())
                self._advance_plan(loop.time())
                if deadline is not None and loop.time() >= deadline - 1e-3:
                    self.stop("duration")
                tripped = self.thresholds.tripped
                if tripped is not None and not self._stop.is_set():
                    held = f"held for {self.thresholds.grace} ticks (value {tripped.value:.4g})"
                    self.event("abort", "threshold", note=f"{tripped.expr} {held}")
                    tick = dataclasses.replace(tick, events=(*tick.events, *self._events))
                    self._events = []
                    self.stop(f"threshold {tripped.expr}")
                self._emit(tick)
        finally:
            await self._wind_down(loop)
        return self.stop_reason

    async def _wind_down(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.stop_reason:
            self.stop_reason = "stop"
        # also when run() was cancelled rather than stopped: a leaving worker must
        # not make _reconcile start a replacement while we wind down
        self._stop.set()
        self.event("stop", "system", note=self.stop_reason)
        if self.procs is not None:
            await self.procs.stop(self.runs, self.cfg.drain_seconds)
        await self.drain()
        # the last (partial) window, so nothing recorded is lost
        self._emit(self.close_tick(loop.time()))

    async def drain(self) -> None:
        """Stop every worker: idle ones at once, busy ones after their operation
        (up to drain_seconds), then hanging ones, also on the server."""
        self._stop.set()
        for r in self.runs:
            self._stop_scheduler(r)
            for w in r.workers.values():
                w.stopping = True
                if w.task is not None and w.idle:
                    w.task.cancel()
        tasks = [w.task for r in self.runs for w in r.workers.values() if w.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.cfg.drain_seconds)
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

    def counter_for(self, scenario: str) -> Callable[[str, int], None] | None:
        """Where an admin context's count() goes (verify runs during the load)."""
        return next((r.count for r in self.runs if r.name == scenario), None)

    def never_connected(self) -> dict[str, int]:
        out = {r.name: len(r.never_connected) for r in self.runs if r.never_connected}
        if self.procs is not None:
            for name, n in self.procs.never_connected.items():
                out[name] = out.get(name, 0) + n
        return out

    # ---- in a worker process (--processes N) ----------------------------------------
    def host_start(self) -> None:
        """Run as a worker process's engine: no tick clock of its own; the
        steering engine assigns shares and collects windows."""
        loop = asyncio.get_running_loop()
        self._started_mono = self._last_close = loop.time()
        self._hosted = ([0] * len(self.runs), [0.0] * len(self.runs))
        self._proc.cpu_percent(None)
        self._bg = [loop.create_task(self._lag_monitor())]

    def host_assign(self, shares: list[int], rates: list[float], paused: bool) -> None:
        self._hosted = (list(shares), list(rates))
        self.mode = "rate" if any(rates) else "workers"
        self.paused = paused
        if not paused:
            self.panicked = False
        self._reconcile()

    def host_take(self) -> dict[str, Any]:
        """This process's windows since the last take, its live workers and health."""
        wins, live = {}, {}
        for r in self.runs:
            win, r.win = r.win, _Window()
            wins[r.name] = win.payload()
            live[r.name] = len(r.workers)
        lag, self._lag_max_ms = self._lag_max_ms, 0.0
        return {
            "windows": wins,
            "live": live,
            "lag_ms": lag,
            "cpu_pct": self._proc.cpu_percent(None),
            "rss_mb": self._proc.memory_info().rss / 2**20,
            "never_connected": {r.name: len(r.never_connected) for r in self.runs},
        }


async def _close_quietly(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except BaseException:
        conn.terminate()
