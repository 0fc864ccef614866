"""The load engine: generates load and closes windows into raw ticks.

`LoadEngine` steers its `Workers` (LocalWorkers on this loop, or
ProcessWorkers with --processes N) through a `LoadController` (target, rate,
ramp plan, pause, panic), and on request closes the window: it collects what
the workers did and returns one raw `Tick` (scenario windows, readings,
control events, the control state, generator health). It has no clock, no
detectors, no thresholds and no listeners: the session's clock asks for the
tick and runs the pipeline (app/session/pipeline.py). The controls must be
called on the engine's loop (the session wraps them for other threads).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.engine.clients import Clients
from app.engine.control import Assignment, LoadController, allocate
from app.engine.measure import Health, Window
from app.engine.pool import ScenarioRun, WorkerPool
from app.engine.thresholds import Threshold
from app.engine.workers import LocalWorkers, WorkerReport, Workers
from app.scenario import Scenario
from app.tick import ControlEvent, GeneratorStats, Reading, ScenarioWindow, Tick

__all__ = ["Clients", "EngineConfig", "LoadEngine", "allocate"]


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
        clock: Callable[[], float] = time.time,
        redact: Callable[[str], str] | None = None,
        workers: Workers | None = None,
    ) -> None:
        # no scenario at all is `loadtop watch`: the tick clock with probes and
        # detectors only, no load
        self.cfg = config
        self.clients = clients
        self.names = [inst.name for inst, _ in scenarios]
        self.redact: Callable[[str], str] = redact or str
        self.readings = readings
        self.clock = clock
        self.pool: WorkerPool | None = None
        if workers is None:
            self.pool = WorkerPool(
                [(inst, prefixes[inst.name]) for inst, _ in scenarios], clients,
                cap=config.max_concurrency, params=params, seed=config.seed,
                drain_seconds=config.drain_seconds, redact=self.redact,
            )  # fmt: skip
            workers = LocalWorkers(self.pool)
        self.workers: Workers = workers
        self.control = LoadController(
            self.names, [w for _, w in scenarios],
            concurrency=config.concurrency, max_concurrency=config.max_concurrency,
            rate=config.rate, plan=config.plan, step_seconds=config.step_seconds,
            end_with_plan=config.end_with_plan, clock=clock, apply=self._assign,
            panic=self.workers.panic, stop=self.stop, live=lambda: self.live_workers,
            redact=self.redact,
        )  # fmt: skip
        # what an admin context counts (verify runs during the load), added to
        # the workers' windows when the tick closes
        self._wins = {name: Window() for name in self.names}
        self._live: dict[str, int] = dict.fromkeys(self.names, 0)
        self._never_connected: dict[str, int] = {}
        self._health = Health()
        self._tick_index = 0
        self._started_mono = 0.0
        self._last_close = 0.0
        self.stop_reason = ""
        self.stopping = False
        self.on_stop: Callable[[], None] = lambda: None  # the clock's wake-up

    # ---- the controller's state, read by the session and its front ends --------
    @property
    def target(self) -> int:
        return self.control.target

    @property
    def rate(self) -> float | None:
        return self.control.rate

    @property
    def mode(self) -> str:
        return self.control.mode

    @property
    def paused(self) -> bool:
        return self.control.paused

    @property
    def panicked(self) -> bool:
        return self.control.panicked

    @property
    def plan_running(self) -> bool:
        return self.control.plan_running

    @property
    def plan_index(self) -> int | None:
        return self.control.plan_index

    @property
    def ticks_emitted(self) -> int:
        """Windows closed so far (each one a tick for the pipeline)."""
        return self._tick_index

    @property
    def runs(self) -> list[ScenarioRun]:
        """The workers' scenario runs on this loop ([] with --processes)."""
        return self.pool.runs if self.pool is not None else []

    @property
    def live_workers(self) -> int:
        if self.pool is not None:
            return self.pool.live_total
        return sum(self.workers.live().values())

    # ---- controls (call on the engine's loop) ----------------------------------
    def event(self, kind: str, source: str, before: Any = None, after: Any = None,
              note: str = "") -> None:  # fmt: skip
        self.control.event(kind, source, before, after, note)

    def set_concurrency(self, n: int, source: str = "key") -> None:
        self.control.set_concurrency(n, source)

    def step_concurrency(self, delta: int, source: str = "key") -> None:
        self.control.step_concurrency(delta, source)

    def set_rate(self, rate: float, source: str = "key") -> None:
        self.control.set_rate(rate, source)

    def pause(self, source: str = "key") -> None:
        self.control.pause(source)

    def resume(self, source: str = "key") -> None:
        self.control.resume(source)

    def panic(self, source: str = "key") -> None:
        """All load stops now: running operations are cancelled, and their
        backends are terminated on the server (see WorkerPool.panic)."""
        self.control.panic(source)

    def start_plan(self, source: str = "key") -> None:
        self.control.start_plan(source)

    def stop_plan(self, source: str = "key") -> None:
        self.control.stop_plan(source)

    def stop(self, reason: str = "stop") -> None:
        """Ask the clock to end the run (the first reason wins)."""
        if not self.stopping:
            self.stop_reason = reason
            self.stopping = True
            self.control.stop()
            self.on_stop()

    def _assign(self, a: Assignment) -> None:
        shares, rates, paused, mode = a
        self.workers.assign(shares, rates if mode == "rate" else [], paused, mode)

    def counter_for(self, scenario: str) -> Callable[[str, int], None] | None:
        """Where an admin context's count() goes (verify runs during the load)."""
        win = self._wins.get(scenario)
        if win is None:
            return None

        def count(name: str, n: int = 1) -> None:
            win.count(name, n)

        return count

    def never_connected(self) -> dict[str, int]:
        return {k: n for k, n in self._never_connected.items() if n}

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self, now_mono: float) -> None:
        """The load starts: at the configured target, or at the plan's first step.
        The workers' hosts are up already (the session awaited workers.start())."""
        self._started_mono = self._last_close = now_mono
        self._health.start()
        self.event("start", "cli", None, self.target if not self.rate else self.rate)
        if self.cfg.plan:
            self.start_plan(source="cli")
        else:
            self.control.reconcile()

    async def close_window(self, now_mono: float) -> Tick:
        """Collect the workers' windows and return the raw tick for the window
        that ends now; then the ramp plan may step (the next window is the next step)."""
        report = await self.workers.collect(timeout=self.cfg.interval / 2)
        tick = self._close(report, now_mono)
        self.control.advance_plan(now_mono, self.cfg.duration)
        return tick

    async def wind_down(self, now_mono: Callable[[], float]) -> Tick:
        """Stop every worker and return the last (partial) window's tick, so
        nothing measured is lost."""
        if not self.stop_reason:
            self.stop_reason = "stop"
        # also when the clock was cancelled rather than stopped: a leaving worker
        # must not start a replacement while we wind down
        self.stopping = True
        self.control.stop()
        self.event("stop", "system", note=self.stop_reason)
        report = await self.workers.stop(self.cfg.drain_seconds)
        await self._health.stop()
        return self._close(report, now_mono())

    async def aclose(self) -> None:
        await self.workers.aclose()

    def _close(self, report: WorkerReport, now_mono: float) -> Tick:
        interval = max(now_mono - self._last_close, 1e-6)
        self._last_close = now_mono
        self._live = {name: int(report["live"].get(name, 0)) for name in self.names}
        self._never_connected = dict(report["never_connected"])
        for t, kind, note in report["events"]:
            note = self.redact(note) if note else note
            self.control.events.append(ControlEvent(t, kind, "system", note=note))
        windows = []
        for i, name in enumerate(self.names):
            # the workers' window as reported (no copy: a local one is ~20k
            # latency buckets a tick at full speed), plus what admin contexts counted
            admin, self._wins[name] = self._wins[name], Window()
            payload = report["windows"].get(name)
            win = Window.of(payload) if payload is not None else Window()
            for k, n in admin.counters.items():
                win.count(k, n)
            windows.append(
                ScenarioWindow(
                    name=name,
                    concurrency=self._live[name],
                    target=self.control.shares[i],
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
        cpu, lag, mem = self._health.take()
        if report.get("health") is not None:  # the busiest process saturates first
            p_cpu, p_lag, p_rss = report["health"]
            cpu, lag, mem = max(cpu, p_cpu), max(lag, p_lag), mem + p_rss
        c = self.control
        tick = Tick(
            index=self._tick_index,
            t=self.clock(),
            elapsed=now_mono - self._started_mono,
            interval=interval,
            mode=c.mode,
            target_concurrency=0 if c.paused else c.target,
            concurrency=sum(self._live.values()),
            rate=c.rate,
            paused=c.paused,
            plan_step=c.plan_index if c.plan_running else None,
            scenarios=tuple(windows),
            readings=dict(self.readings()) if self.readings else {},
            events=c.take_events(),
            generator=GeneratorStats(loop_lag_ms=lag, cpu_pct=cpu, rss_mb=mem),
            control=c.state(),
        )
        self._tick_index += 1
        return tick
