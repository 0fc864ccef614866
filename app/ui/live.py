"""The live console: the shared `Console` over a running session.

The load engine runs on its own thread and loop (`start_thread`); its tick
listener (`TickInbox`) only appends the tick to a deque and posts one
coalescing `TicksArrived` message, so a slow frame collapses a backlog into
one render without losing a tick from the charts. Every control goes through
the `SessionControl` protocol, which records it as a control event in the
next tick; the console keeps no copy of the load's state (paused, panicked,
plan): it reads the newest tick's `ControlState` (`controls`), with a
short-lived local mark after a key press so the screen answers before the
next tick does.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual import on, work
from textual.binding import Binding
from textual.message import Message

from app.session.control import SessionControl
from app.tick import ControlState, Tick
from app.ui.console import BackendAction, Clock, Console
from app.ui.screens import LIVE_KEYS, ConfirmScreen

STEP_SIZES = (1, 2, 5, 10, 25, 50, 100)
QUIET_S = 3.0  # no tick for longer than this: the header says so


class TicksArrived(Message):
    """New ticks wait in the inbox. Coalesced: a pending one replaces the next."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TicksArrived)


class TickInbox:
    """The engine thread's side: `inbox(tick)` is the session listener."""

    def __init__(self) -> None:
        self.ticks: deque[Tick] = deque()
        self.app: Any = None

    def __call__(self, tick: Tick) -> None:
        self.ticks.append(tick)
        app = self.app
        if app is not None:
            with contextlib.suppress(Exception):  # the app may be closing
                app.post_message(TicksArrived())

    def drain(self) -> list[Tick]:
        out = []
        while self.ticks:
            out.append(self.ticks.popleft())
        return out


def controls_of(tick: Tick) -> ControlState:
    """Where the controls stood when `tick` closed. A tick from before ticks
    carried their `ControlState` says only paused and the plan step."""
    if tick.control is not None:
        return tick.control
    return ControlState(
        paused=tick.paused, plan_running=tick.plan_step is not None, plan_step=tick.plan_step
    )


class LiveConsole(Console):
    BINDINGS = [
        Binding("plus,equals_sign", "step(1)", "+conc", key_display="+"),
        Binding("minus,underscore", "step(-1)", "-conc", key_display="-"),
        Binding("right_square_bracket", "step_size(1)", "step+", key_display="]"),
        Binding("left_square_bracket", "step_size(-1)", "step-", key_display="["),
        Binding("p", "pause", "pause"),
        Binding("x", "panic", "PANIC"),
        Binding("r", "plan", "plan"),
        Binding("f", "faults", "fault"),
        # Ctrl-C quits as q does (teardown and all) after one y/n; Textual's own
        # binding only said "press ctrl+q" while the load kept running
        Binding("ctrl+c", "interrupt", "quit", show=False, priority=True),
        *Console.SHARED_BINDINGS,
    ]
    LOAD_ACTIONS = frozenset({"step", "step_size", "pause", "panic", "plan", "faults"})
    HELP_TITLE = "loadtop keys"
    HELP_KEYS = LIVE_KEYS
    LIVE = True

    def __init__(
        self,
        control: SessionControl,
        inbox: TickInbox,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        export_dir: str | None = None,
    ) -> None:
        super().__init__(clock=clock, export_dir=export_dir)
        self.control = control
        self.inbox = inbox
        self.wall_clock = wall_clock
        self.last_tick_at: float | None = None
        self.step_index = 0
        self.stopping = False
        self.ended = False
        plan = control.plan
        self._before_ticks = ControlState(
            plan_running=bool(plan), plan_step=0 if plan else None, plan_steps=len(plan)
        )
        # a key press's mark, shown until a tick closes after it
        self._local: ControlState | None = None
        self._local_at = 0.0  # wall time of the last key that changed state

    # ---- the Console hooks ----------------------------------------------------------
    def header_facts(self) -> tuple[dict[str, str], list[int]]:
        return self.control.targets, self.control.plan

    def started(self) -> None:
        self.header_bar.step_size = self.step_size
        self.inbox.app = self
        self._drain()
        self.set_interval(0.5, self._watch_session)

    def write_report(self) -> str:
        return self.control.export_report(self._export_path())

    def backend_action(self) -> BackendAction | None:
        return None if self.control.readonly else self._backend_action

    def exit_code(self) -> int:
        outcome = self.control.outcome
        return int(outcome.exit_code) if outcome is not None else 0

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # --readonly: no fault menu at all (hidden, not just inert)
        if action == "faults" and self.control.readonly:
            return False
        # the load keys go once quitting has begun
        return not (action in self.LOAD_ACTIONS and self.stopping)

    # ---- the load's state -----------------------------------------------------------
    @property
    def controls(self) -> ControlState:
        """The one place the console reads paused / panicked / plan from: the
        newest tick's, or a key press's mark until a tick closes after it."""
        last = self.last_tick
        if self._local is not None and (last is None or last.t <= self._local_at):
            return self._local
        return controls_of(last) if last is not None else self._before_ticks

    @property
    def paused(self) -> bool:
        return self.controls.paused

    @property
    def panicked(self) -> bool:
        return self.controls.panicked

    @property
    def plan_running(self) -> bool:
        return self.controls.plan_running

    def _mark_local(
        self,
        *,
        paused: bool | None = None,
        panicked: bool | None = None,
        plan_running: bool | None = None,
    ) -> None:
        """A key changed the state: show it now, until a newer tick says."""
        c = self.controls
        self._local = replace(
            c,
            paused=c.paused if paused is None else paused,
            panicked=c.panicked if panicked is None else panicked,
            plan_running=c.plan_running if plan_running is None else plan_running,
        )
        self._local_at = self.wall_clock()

    # ---- ticks in -------------------------------------------------------------
    @on(TicksArrived)
    def _on_ticks(self) -> None:
        self._drain()

    def _drain(self) -> None:
        if not self.mounted:
            return
        ticks = self.inbox.drain()
        if not ticks:
            return
        self.last_tick_at = self.clock()
        self.toast(self.take(ticks))

    def _watch_session(self) -> None:
        control = self.control
        viewers = getattr(control, "web_viewers", None)
        if callable(viewers):
            n = int(viewers())
            if n != self.header_bar.watching:
                self.header_bar.watching = n
                self.header_bar.refresh_text()
        if not self.ended and control.wait(0):
            self.ended = True
            if control.error:  # it never started: say why, on stderr
                self.exit(2)
                return
            if not self.stopping:
                self.set_status("load stopped — q quits")
            return
        if self.stopping or self.ended or self.last_tick_at is None:
            return
        quiet = self.clock() - self.last_tick_at
        want = f"no tick for {quiet:.0f}s" if quiet > QUIET_S else ""
        status = self.header_bar.status
        own = status.startswith("no tick") or not status
        if own and status != want:
            self.set_status(want)

    # ---- load keys --------------------------------------------------------------
    @property
    def step_size(self) -> int:
        return STEP_SIZES[self.step_index]

    def action_step(self, sign: int) -> None:
        self.control.step_concurrency(sign * self.step_size, source="key")
        if self.plan_running:
            self._mark_local(plan_running=False)
            self.notify("manual change: the ramp plan is paused (r resumes it)", timeout=4)

    def action_step_size(self, direction: int) -> None:
        self.step_index = max(0, min(len(STEP_SIZES) - 1, self.step_index + direction))
        header = self.header_bar
        header.step_size = self.step_size
        header.refresh_text()
        self.control.note("step-size", f"step size {self.step_size}")

    def action_pause(self) -> None:
        if self.panicked:
            self._confirm_resume()
            return
        if self.paused:
            self.control.resume(source="key")
            self._mark_local(paused=False)
        else:
            self.control.pause(source="key")
            self._mark_local(paused=True)
        self._status_now()

    def action_panic(self) -> None:
        self.control.panic(source="key")
        self._mark_local(paused=True, panicked=True, plan_running=False)
        self.notify("PANIC: all load stopped. p resumes (asks first).", severity="warning")
        self._status_now()

    def _confirm_resume(self, then: Callable[[], None] | None = None) -> None:
        def answered(yes: bool | None) -> None:
            if not yes:
                return
            if then is not None:
                then()
            else:
                self.control.resume(source="key")
            self._mark_local(paused=False, panicked=False)
            self._status_now()

        self.push_screen(ConfirmScreen("The load was panic-stopped. Resume it?"), answered)

    def action_faults(self) -> None:
        """The fault menu (app/ui/faults.py); without --allow-faults it says how."""
        from app.ui.faults import FaultScreen

        if not isinstance(self.screen, FaultScreen):
            self.push_screen(FaultScreen(self.control))

    def action_plan(self) -> None:
        control = self.control
        if not control.plan:
            self.notify("no ramp plan: give --steps 1,2,4,8", timeout=4)
            return
        if self.plan_running:
            control.stop_plan(source="key")
            self._mark_local(plan_running=False)
            self.notify("ramp plan stopped", timeout=3)
            return

        def start() -> None:
            control.start_plan(source="key")
            self._mark_local(plan_running=True)

        if self.panicked:
            self._confirm_resume(start)
            return
        start()
        self.notify("ramp plan started", timeout=3)

    def _status_now(self) -> None:
        self.set_status("PANIC — load stopped" if self.panicked else "")

    # ---- export, quit, backends ----------------------------------------------------------
    def _export_path(self) -> str | None:
        if self.export_dir is None:
            return None
        run = self.control.config.get("run_id") or "run"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return str(Path(self.export_dir) / f"loadtop-{run}-{stamp}.md")

    def action_interrupt(self) -> None:
        """Ctrl-C: ask once, then quit as `q` does; a second Ctrl-C while
        asked (or once stopping) is the yes."""
        if self.ended or self.stopping or getattr(self, "_asked_quit", False):
            self.action_quit_console()
            return
        self._asked_quit = True

        def answered(yes: bool | None) -> None:
            self._asked_quit = False
            if yes:
                self.action_quit_console()

        self.push_screen(
            ConfirmScreen("Quit? The load stops, teardown runs, the recording closes."), answered
        )

    def action_quit_console(self) -> None:
        if self.ended or self.stopping:
            # ended: nothing to stop; a second q: do not wait for teardown on screen
            self.exit(self.exit_code())
            return
        self.stopping = True
        self.set_status("stopping: load off, teardown, closing the recording…")
        self.control.stop("quit")
        self._wait_stopped()

    @work(thread=True, exclusive=True, group="quit", exit_on_error=False)
    def _wait_stopped(self) -> None:
        self.control.wait(120)
        self.call_from_thread(self.exit, self.exit_code())

    def _backend_action(self, verb: str, pid: int) -> str:
        if verb == "cancel":
            return self.control.cancel_backend(pid)
        return self.control.terminate_backend(pid)
