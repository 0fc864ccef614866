"""The console's entry points: `loadtop run`, `demo`, `watch` and `replay`.

The console itself is `app.ui.console.Console` (layout, panes, timeline,
feed, export, help, quit), with a thin subclass per source of ticks:
`app.ui.live.LiveConsole` over a running session's `SessionControl`, and
`app.ui.replay.ReplayConsole` over a recording. The factories here build
them with their parts (the control and its tick inbox, or a recording; a
clock), so the CLI and the tests drive the same app.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from app.session.control import SessionControl
from app.session.recording import Recording
from app.ui.console import Clock, Console
from app.ui.live import LiveConsole, TickInbox, TicksArrived
from app.ui.replay import ReplayConsole
from app.ui.timeline import warm_up

__all__ = [
    "Console",
    "LiveConsole",
    "ReplayConsole",
    "TickInbox",
    "TicksArrived",
    "make_live_app",
    "make_replay_app",
    "run_replay",
    "run_session_console",
]


# ---- entry points -------------------------------------------------------------------


def make_live_app(
    session: SessionControl, *, clock: Clock = time.monotonic, **kw: Any
) -> LiveConsole:
    """The console over a session (subscribes its inbox; start the session
    before or after)."""
    warm_up()
    inbox = TickInbox()
    session.subscribe(inbox)
    return LiveConsole(session, inbox, clock=clock, **kw)


def make_replay_app(rec: Recording, *, clock: Clock = time.monotonic, **kw: Any) -> ReplayConsole:
    warm_up()
    return ReplayConsole(rec, clock=clock, **kw)


def _install_stop_signals(
    app: Console, session: SessionControl, cleanup: Callable[[], None] | None = None
) -> dict[int, Any]:
    """SIGTERM / SIGHUP (a dropped SSH session): stop the load, and leave the
    app so teardown runs and the recording closes. Returns the old handlers.

    With the terminal gone, Textual's shutdown can block on its output thread;
    so a watchdog makes sure the process ends once the session has finished
    (after `cleanup`, e.g. stopping embedded servers): no orphan keeps running."""
    old: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        session.stop(f"signal {name}")
        loop = getattr(app, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(app.exit, 1)
        threading.Thread(
            target=_exit_when_finished, args=(session, cleanup, 128 + signum),
            name="loadtop-exit-watchdog", daemon=True,
        ).start()  # fmt: skip

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            old[sig] = signal.signal(sig, handler)
    return old


def _exit_when_finished(
    session: SessionControl, cleanup: Callable[[], None] | None, code: int, grace: float = 5.0
) -> None:
    session.wait(180)
    time.sleep(grace)  # the normal way out had its chance
    if cleanup is not None:
        with contextlib.suppress(Exception):
            cleanup()
    os._exit(code)


def run_session_console(
    session: SessionControl,
    *,
    say: Callable[[str], None] | None = None,
    cleanup: Callable[[], None] | None = None,
) -> int:
    """Start `session` on its own thread, run the console until q (or a
    signal), then wait for teardown. Used by `loadtop run` and `loadtop demo`
    (whose `cleanup` stops the service and the embedded servers if a signal
    leaves the process stuck)."""
    say = say or _say
    app = make_live_app(session)
    # the session connects and sets up while the console draws itself; a
    # failure ends the app (`_watch_session`) and is printed below
    threading.Thread(target=session.start_thread, name="loadtop-start", daemon=True).start()
    old = _install_stop_signals(app, session, cleanup)
    code: int | None = 0
    try:
        code = app.run()
    finally:
        session.stop("quit")
        if not session.wait(120):
            say("the session did not finish within 120 s")
        for sig, h in old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, h)
    if session.error:  # it never started (bad target, failed setup)
        say(session.error)
        return 2
    outcome = session.outcome
    for m in session.messages:
        say(m)
    if outcome is not None:
        if outcome.report_path:
            say(f"report: {outcome.report_path}")
        if outcome.record_path:
            say(f"recording: {outcome.record_path}")
        return int(outcome.exit_code)
    return int(code or 0)


def run_replay(rec: Recording) -> int:
    """`loadtop replay F.jsonl`."""
    if not rec.ticks:
        _say("the recording has no ticks")
        return 2
    return int(make_replay_app(rec).run() or 0)


def _say(msg: str) -> None:
    print(f"loadtop: {msg}", file=sys.stderr, flush=True)
