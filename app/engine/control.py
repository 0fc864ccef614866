"""The `LoadController`: target, rate, ramp plan, pause and panic.

It turns the controls into per-scenario shares and rates (what the workers
are assigned) and `ControlEvent`s (what the tick records), and says where it
stands as a `ControlState` that every tick carries. It runs no worker and
knows no process: the engine hands its assignment to the `Workers`.
Call on the engine's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from app.tick import ControlEvent, ControlState


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


Assignment = tuple[list[int], list[float], bool, str]  # shares, rates, paused, mode


class LoadController:
    def __init__(
        self,
        names: list[str],
        weights: list[float],
        *,
        concurrency: int,
        max_concurrency: int,
        rate: float | None = None,
        plan: list[int] | None = None,
        step_seconds: float = 30.0,
        clock: Callable[[], float],
        apply: Callable[[Assignment], None],
        panic: Callable[[], None],
        stop: Callable[[str], None],
        live: Callable[[], int],
        end_with_plan: bool = False,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.names = list(names)
        self.weights = list(weights)
        self.max_concurrency = max_concurrency
        self.plan = list(plan or [])
        self.step_seconds = step_seconds
        self.end_with_plan = end_with_plan  # the run ends when the plan does
        self.clock = clock
        self._apply, self._panic, self._stop, self._live = apply, panic, stop, live
        self.redact = redact
        self.mode = "rate" if rate else "workers"
        self.target = min(max(concurrency, 0), max_concurrency)
        self.rate = rate
        self.paused = False
        self.panicked = False
        self.stopped = False
        self.plan_index: int | None = None
        self.plan_running = False
        self.plan_done = False
        self._step_started = 0.0
        self.shares = [0] * len(self.names)
        self.events: list[ControlEvent] = []

    # ---- events ---------------------------------------------------------------
    def event(self, kind: str, source: str, before: Any = None, after: Any = None,
              note: str = "") -> None:  # fmt: skip
        note = self.redact(note) if note else note
        self.events.append(ControlEvent(self.clock(), kind, source, before, after, note))

    def take_events(self) -> tuple[ControlEvent, ...]:
        events, self.events = tuple(self.events), []
        return events

    # ---- the assignment ---------------------------------------------------------
    def assignment(self) -> Assignment:
        total = 0 if self.paused or self.stopped else self.target
        shares = allocate(total, self.weights)
        ws = sum(self.weights)
        rates = [self.rate * w / ws for w in self.weights] if self.rate else []
        return shares, rates, self.paused, self.mode

    def reconcile(self) -> None:
        a = self.assignment()
        self.shares = a[0]
        self._apply(a)

    def state(self) -> ControlState:
        shares, rates, _, _ = self.assignment()
        return ControlState(
            paused=self.paused,
            panicked=self.panicked,
            plan_running=self.plan_running,
            plan_step=self.plan_index,
            plan_steps=len(self.plan),
            mode=self.mode,
            target=self.target,
            rate=self.rate,
            targets=dict(zip(self.names, shares, strict=True)),
            rates=dict(zip(self.names, rates, strict=True)) if self.mode == "rate" else {},
        )

    # ---- controls -----------------------------------------------------------------
    def set_concurrency(self, n: int, source: str = "key") -> None:
        n = max(0, int(n))
        capped = min(n, self.max_concurrency)
        note = f"capped at --max-concurrency {self.max_concurrency}" if capped < n else ""
        if source != "plan" and self.plan_running:
            self._pause_plan(source)
        before = self.target
        self.target = capped
        if before != capped or note:
            self.event("concurrency", source, before, capped, note)
        self.reconcile()

    def step_concurrency(self, delta: int, source: str = "key") -> None:
        self.set_concurrency(self.target + delta, source)

    def set_rate(self, rate: float, source: str = "key") -> None:
        rate = max(0.0, float(rate))
        before = self.rate
        self.rate = rate
        self.mode = "rate"
        self.event("rate", source, before, rate)
        self.reconcile()

    def pause(self, source: str = "key") -> None:
        if self.paused:
            return
        self.paused = True
        self.event("pause", source, self.target, 0)
        self.reconcile()

    def resume(self, source: str = "key") -> None:
        if not self.paused:
            return
        self.paused = False
        self.panicked = False
        self.event("resume", source, 0, self.target)
        self.reconcile()

    def panic(self, source: str = "key") -> None:
        """All load stops now (the workers cancel and end their backends)."""
        self.paused = True
        self.panicked = True
        if self.plan_running:
            self._pause_plan(source)
        self.event("panic", source, self._live(), 0)
        self.shares = [0] * len(self.names)
        self._panic()

    def stop(self) -> None:
        """The run is ending: from now on every share is zero."""
        self.stopped = True

    # ---- the ramp plan ------------------------------------------------------------
    def start_plan(self, source: str = "key") -> None:
        """Start (or resume) the ramp plan. Steps change on tick boundaries, so
        each tick belongs to exactly one step."""
        if not self.plan or self.plan_running:
            return
        if self.plan_done or self.plan_index is None:
            self.plan_index = 0
            self.plan_done = False
        self.plan_running = True
        self.event("plan-start", source, note=f"steps {self.plan}")
        if self.paused:
            self.resume(source)
        self._enter_step()

    def _enter_step(self) -> None:
        assert self.plan_index is not None
        plan = self.plan
        i = self.plan_index
        self._step_started = asyncio.get_running_loop().time()
        self.event("plan-step", "plan", self.target, plan[i], note=f"step {i + 1}/{len(plan)}")
        self.set_concurrency(plan[i], source="plan")

    def advance_plan(self, now: float, duration: float | None) -> None:
        """Called by the tick clock right after a window closes (`now` on the loop's clock)."""
        if not self.plan_running or self.plan_index is None:
            return
        if now - self._step_started < self.step_seconds - 1e-3:
            return
        if self.plan_index + 1 < len(self.plan):
            self.plan_index += 1
            self._enter_step()
            return
        self.plan_running = False
        self.plan_done = True
        self.event("plan-stop", "plan", note="ramp plan finished")
        if duration is None and self.end_with_plan:
            self._stop("plan finished")

    def stop_plan(self, source: str = "key") -> None:
        if self.plan_running:
            self.plan_running = False
            self.event("plan-stop", source)

    def _pause_plan(self, source: str) -> None:
        self.plan_running = False
        self.event("plan-paused", source, note="a manual change paused the ramp plan")
