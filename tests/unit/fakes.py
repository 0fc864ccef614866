"""A fake `SessionControl`: the console's tests without a server or an engine.

memray drives its TUI with a MockReader; this is ours. `FakeSession`
implements the protocol in `app/session/control.py`, records every call in
`calls`, and keeps the little load state the protocol documents (target
clamped to 0..max_concurrency; a manual change pauses a running plan; panic
pauses and stops the plan; resume clears a panic) so the ticks a test pushes
with `tick()` say what a real engine would say next, `ControlState`
included. Control events are recorded into the next tick, as the real
session does.

It is not an engine: no worker, no timing, no database. Tests that are about a
real session (a lock really held, a backend really terminated, a recording
really closed) stay in tests/integration/test_ui_console.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.session.control import TickListener
from app.session.export import write_report
from app.session.recording import Recording
from app.tick import ControlEvent, ControlState, Reading, Tick
from tests.unit.ticks import tick as build_tick

Call = tuple[str, tuple[Any, ...]]


@dataclass
class FakeOutcome:
    reason: str
    exit_code: int = 0
    report_path: str | None = None
    record_path: str | None = None


@dataclass
class FakeSession:
    """Implements `SessionControl`; see the module docstring."""

    targets: dict[str, str] = field(
        default_factory=lambda: {"postgres": "postgresql://app@db:5432/shop"}
    )
    plan: list[int] = field(default_factory=list)
    max_concurrency: int = 64
    readonly: bool = False
    concurrency: int = 1  # the target at the start
    scenarios: Sequence[str] = ("sleepy",)
    exit_code: int = 0  # the outcome's, once stopped
    finish_on_stop: bool = True  # False: stop() leaves the session running (slow teardown)
    wall_clock: Callable[[], float] = time.time
    allow_faults: bool = False  # --allow-faults
    # kind -> None (allowed) or why not; what describe_fault says it would hit
    fault_kinds: dict[str, str | None] = field(
        default_factory=lambda: {"pod-kill": None, "redis-pause": "redis-pause needs --redis"}
    )

    def __post_init__(self) -> None:
        self.calls: list[Call] = []
        self.listeners: list[TickListener] = []
        self.ticks: list[Tick] = []
        self.error: str | None = None
        self.outcome: FakeOutcome | None = None
        self.messages: list[str] = []
        self.target = self.concurrency
        self.paused = False
        self.panicked = False
        self.plan_index: int | None = 0 if self.plan else None
        self.plan_running = bool(self.plan)
        self.started = False
        self._events: list[ControlEvent] = []
        self._done = threading.Event()

    # ---- what the test sees -------------------------------------------------------
    def called(self, name: str) -> list[tuple[Any, ...]]:
        """The arguments of every call to `name`, in order."""
        return [args for n, args in self.calls if n == name]

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]

    def events(self) -> list[tuple[str, str]]:
        """(kind, source) of every control event in the ticks pushed so far."""
        return [(e.kind, e.source) for t in self.ticks for e in t.events]

    def tick(self, *, readings: dict[str, Reading] | None = None, **kw: Any) -> Tick:
        """Close a window: build the next tick from the load state and the
        events since the last one, hand it to every listener, return it."""
        live = 0 if self.paused else self.target
        plan_step = self.plan_index if self.plan_running else None
        control = ControlState(
            paused=self.paused,
            panicked=self.panicked,
            plan_running=self.plan_running,
            plan_step=self.plan_index,
            plan_steps=len(self.plan),
            target=self.target,
        )
        t = build_tick(
            len(self.ticks),
            t=self.wall_clock(),
            concurrency=live,
            target=0 if self.paused else self.target,  # as the engine reports a pause
            scenarios=self.scenarios,
            paused=self.paused,
            plan_step=plan_step,
            events=self._events,
            readings=readings,
            control=control,
            **kw,
        )
        self._events = []
        self.push(t)
        return t

    def push(self, tick: Tick) -> None:
        """Hand a ready-made tick to the listeners (as the engine thread does)."""
        self.ticks.append(tick)
        for listener in list(self.listeners):
            listener(tick)

    def fail_start(self, error: str) -> None:
        """The session never started (bad target): `error` says why."""
        self.error = error
        self._done.set()

    def finish(self, reason: str = "stop") -> None:
        self.outcome = FakeOutcome(reason, self.exit_code)
        self._done.set()

    # ---- SessionControl ------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return {"run_id": "fake0001", "targets": dict(self.targets)}

    def subscribe(self, listener: TickListener) -> None:
        self.calls.append(("subscribe", ()))
        self.listeners.append(listener)

    def _event(self, kind: str, source: str, before: Any = None, after: Any = None,
               note: str = "") -> None:  # fmt: skip
        self._events.append(ControlEvent(self.wall_clock(), kind, source, before, after, note))

    def set_concurrency(self, n: int, source: str = "key") -> None:
        self.calls.append(("set_concurrency", (n, source)))
        self._set(n, source)

    def _set(self, n: int, source: str) -> None:
        if source != "plan" and self.plan_running:
            self.plan_running = False
            self._event("plan-paused", source)
        before, self.target = self.target, max(0, min(int(n), self.max_concurrency))
        self._event("concurrency", source, before, self.target)

    def step_concurrency(self, delta: int, source: str = "key") -> None:
        self.calls.append(("step_concurrency", (delta, source)))
        self._set(self.target + delta, source)

    def set_rate(self, rate: float, source: str = "key") -> None:
        self.calls.append(("set_rate", (rate, source)))
        self._event("rate", source, None, rate)

    def pause(self, source: str = "key") -> None:
        self.calls.append(("pause", (source,)))
        if not self.paused:
            self.paused = True
            self._event("pause", source)

    def resume(self, source: str = "key") -> None:
        self.calls.append(("resume", (source,)))
        if self.paused:
            self.paused = self.panicked = False
            self._event("resume", source)

    def panic(self, source: str = "key") -> None:
        self.calls.append(("panic", (source,)))
        self.paused = self.panicked = True
        if self.plan_running:
            self.plan_running = False
            self._event("plan-paused", source)
        self._event("panic", source)

    def start_plan(self, source: str = "key") -> None:
        self.calls.append(("start_plan", (source,)))
        if not self.plan or self.plan_running:
            return
        self.plan_running = True
        self.plan_index = self.plan_index or 0
        self._event("plan-start", source)
        if self.paused:
            self.paused = self.panicked = False
            self._event("resume", source)
        self._set(self.plan[self.plan_index], "plan")

    def stop_plan(self, source: str = "key") -> None:
        self.calls.append(("stop_plan", (source,)))
        if self.plan_running:
            self.plan_running = False
            self._event("plan-stop", source)

    def note(self, kind: str, note: str, source: str = "key") -> None:
        self.calls.append(("note", (kind, note, source)))
        self._event(kind, source, note=note)

    # ---- faults: the menu's calls, recorded; inject marks a "fault" event ----------
    def fault_disabled(self) -> str | None:
        if self.readonly:
            return "read-only session: faults are disabled"
        if not self.allow_faults:
            return (
                "faults are off: start with --allow-faults (or allow_faults = true in loadtop.toml)"
            )
        return None

    def fault_actions(self) -> dict[str, str | None]:
        return {} if self.fault_disabled() else dict(self.fault_kinds)

    def fault_suggestions(self) -> dict[str, str]:
        return {k: f"kind={k}" for k, why in self.fault_actions().items() if why is None}

    def describe_fault(self, spec: str) -> tuple[bool, str]:
        self.calls.append(("describe_fault", (spec,)))
        if spec == "kind=pod-kill":
            return True, "SIGKILL demo-service (pid 4242)"
        return False, f"--fault {spec!r}: refused"

    def inject_fault(self, spec: str, source: str = "key") -> str:
        self.calls.append(("inject_fault", (spec, source)))
        self._event("fault", source, 1.0, 0.0, note=f"#1 {spec[5:]}: killed demo-service pid 4242")
        return f"#1 {spec[5:]}: killed demo-service pid 4242"

    def cancel_backend(self, pid: int) -> str:
        self.calls.append(("cancel_backend", (pid,)))
        if self.readonly:
            return "read-only session: cancelling and terminating backends is disabled"
        self._event("backend-cancel", "key", note=f"pid {pid}")
        return f"cancelled backend {pid}"

    def terminate_backend(self, pid: int) -> str:
        self.calls.append(("terminate_backend", (pid,)))
        if self.readonly:
            return "read-only session: cancelling and terminating backends is disabled"
        self._event("backend-terminate", "key", note=f"pid {pid}")
        return f"terminated backend {pid}"

    def start_thread(self) -> None:
        self.calls.append(("start_thread", ()))
        self.started = self.error is None

    def export_report(self, path: str | None = None) -> str:
        """The real Markdown report of the ticks pushed so far."""
        self.calls.append(("export_report", (path,)))
        path = path or "loadtop-fake0001.md"
        header = {"type": "header", "version": 1, "run_id": "fake0001", "targets": self.targets}
        write_report(Recording(header=header, ticks=list(self.ticks)), path)
        self._event("export", "key", note=path)
        return path

    def stop(self, reason: str = "quit") -> None:
        self.calls.append(("stop", (reason,)))
        if self.finish_on_stop and not self._done.is_set():
            self.finish(reason)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)
