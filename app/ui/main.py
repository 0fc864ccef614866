"""The console: one Textual app over the timeline, live or replayed.

The load engine runs on its own thread and loop (`Session.start_thread`); its
tick listener (`TickInbox`) only appends the tick to a deque and posts one
coalescing `TicksArrived` message, so a slow frame collapses a backlog into
one render without losing a tick from the charts. Every control goes through
`SessionControl`, which records it as a control event in the next tick.

`LoadtopApp` takes its parts (the control, the tick inbox or a recording, a
clock), so the CLI and the tests drive the same app.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Resize
from textual.message import Message
from textual.widgets import DataTable, Footer

from app import fmt
from app.session.control import SessionControl
from app.session.recording import Recording
from app.session.retention import TRIM_EVERY, release_free_memory
from app.tick import Anomaly, ControlEvent, Tick
from app.ui.panes import (
    AnomalyFeed,
    HeaderBar,
    LatencyPane,
    PodsPane,
    PostgresPane,
    RedisPane,
    ThroughputPane,
)
from app.ui.screens import BlockerScreen, ConfirmScreen, HelpScreen, SeekScreen
from app.ui.timeline import (
    CHANGE_KINDS,
    MAX_CHANGES,
    Overview,
    Point,
    Timeline,
    point_of,
    warm_up,
)

STEP_SIZES = (1, 2, 5, 10, 25, 50, 100)
NARROW_WIDTH = 100

Clock = Callable[[], float]


class TicksArrived(Message):
    """New ticks wait in the inbox. Coalesced: a pending one replaces the next."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TicksArrived)


class TickInbox:
    """The engine thread's side: `inbox(tick)` is the session listener."""

    def __init__(self) -> None:
        self.ticks: deque[Tick] = deque()
        self.app: App[Any] | None = None

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


class ReplayCursor:
    """Position in a recording, and what a seek needs, in bounded memory.

    A recording read from disk (`TickFile`) is indexed once when opened:
    byte offset, elapsed, ops/s and p95 per tick, the load changes and the
    cleared anomalies. A seek decodes only the target tick and the few
    before it that the sparklines show; their points are cached (LRU). A
    recording built in memory (a list of ticks) gets the same index, computed
    from the list."""

    WINDOW = 40  # full points rebuilt on a seek: the sparklines show fewer
    POINT_CACHE = 4096

    def __init__(self, rec: Recording) -> None:
        from app.session.recording import TickFile

        self.rec = rec
        self.ticks = rec.ticks
        self.pos = 0
        self.playing = False
        self.seeks = 0
        self._points: OrderedDict[int, Point] = OrderedDict()
        if isinstance(rec.ticks, TickFile):
            self.file: TickFile | None = rec.ticks
            self.elapsed: Sequence[float] = rec.ticks.elapsed
            self.ops: Sequence[float] = rec.ticks.ops
            self.changes = rec.ticks.changes
            self.cleared = rec.ticks.cleared
        else:
            self.file = None
            pts = [point_of(t) for t in rec.ticks]
            self.elapsed = [p.elapsed for p in pts]
            self.ops = [p.ops for p in pts]
            self._p95 = [p.p95 for p in pts]
            self.changes = [
                (k, e) for k, t in enumerate(rec.ticks) for e in t.events if e.kind in CHANGE_KINDS
            ]
            self.cleared = [(k, a) for k, t in enumerate(rec.ticks) for a in t.cleared]

    def __len__(self) -> int:
        return len(self.ticks)

    def p95(self, k: int) -> float:
        return self.file.p95_at(k) if self.file is not None else self._p95[k]

    def point(self, i: int) -> Point:
        p = self._points.get(i)
        if p is None:
            p = self._points[i] = point_of(self.ticks[i])
            if len(self._points) > self.POINT_CACHE:
                self._points.popitem(last=False)
        else:
            self._points.move_to_end(i)
        return p

    def points_to(self, i: int) -> list[Point]:
        """Full points of the ticks up to i that the panes show (the newest)."""
        return [self.point(k) for k in range(max(0, i + 1 - self.WINDOW), i + 1)]

    def overview_to(self, i: int) -> Overview:
        ov = Overview()
        n = i + 1
        stride = 1
        while n > ov.cap * stride:
            stride *= 2
        ks = range(0, n, stride)
        ov.stride, ov.n = stride, n
        ov.xs = [self.elapsed[k] for k in ks]
        ov.ops = [self.ops[k] for k in ks]
        ov.p95 = [self.p95(k) for k in ks]
        return ov

    def changes_to(self, i: int) -> list[tuple[float, ControlEvent]]:
        out = [(self.elapsed[k], e) for k, e in self.changes if k <= i]
        return out[-MAX_CHANGES:]

    def cleared_to(self, i: int) -> list[Anomaly]:
        return [a for k, a in self.cleared if k <= i]

    def seek_elapsed(self, seconds: float) -> int:
        i = bisect.bisect_left(self.elapsed, seconds - 1e-6)
        return min(i, len(self.ticks) - 1)


class LoadtopApp(App[int]):
    CSS_PATH = "loadtop.tcss"
    TITLE = "loadtop"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("plus,equals_sign", "step(1)", "+conc", key_display="+"),
        Binding("minus,underscore", "step(-1)", "-conc", key_display="-"),
        Binding("right_square_bracket", "step_size(1)", "step+", key_display="]"),
        Binding("left_square_bracket", "step_size(-1)", "step-", key_display="["),
        Binding("p", "pause", "pause"),
        Binding("x", "panic", "PANIC"),
        Binding("r", "plan", "plan"),
        Binding("space", "play", "play/pause", key_display="space", priority=True),
        Binding("left", "seek_step(-1)", "back", key_display="←", priority=True),
        Binding("right", "seek_step(1)", "fwd", key_display="→", priority=True),
        Binding("home", "seek_to(0)", "start", show=False, priority=True),
        Binding("end", "seek_to(-1)", "end", show=False, priority=True),
        Binding("g", "seek", "seek"),
        Binding("e", "export", "export"),
        Binding("tab", "focus_next", "panes", show=False),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit_console", "quit"),
    ]
    LIVE_ONLY = {"step", "step_size", "pause", "panic", "plan"}
    REPLAY_ONLY = {"play", "seek_step", "seek_to", "seek"}

    def __init__(
        self,
        *,
        control: SessionControl | None = None,
        inbox: TickInbox | None = None,
        recording: Recording | None = None,
        clock: Clock = time.monotonic,
        autoplay: bool = True,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if recording is None and control is None:
            raise ValueError("LoadtopApp needs a SessionControl (live) or a Recording (replay)")
        self.control = control
        self.inbox = inbox
        self.replay = ReplayCursor(recording) if recording is not None else None
        self.clock = clock
        self.autoplay = autoplay
        self.export_dir = export_dir
        self.timeline = Timeline()
        self.last_tick: Tick | None = None
        self.last_tick_at: float | None = None
        self.step_index = 0
        self.paused = False
        self.panicked = False
        self.plan_running = False
        self.stopping = False
        self.ended = False
        self.exports: list[str] = []
        self.frames = 0  # renders done (for tests and the benchmark)
        self._local_state_at = 0.0  # wall time of the last key that changed state
        self._play_timer: Any = None
        self.color = True
        self.mounted = False

    # ---- layout -----------------------------------------------------------------
    def compose(self) -> ComposeResult:
        self.color = not self.no_color
        # kept as attributes: a modal screen on top must not stop the updates
        self.header_bar = HeaderBar(id="header")
        self.latency = LatencyPane()
        self.throughput = ThroughputPane(color=self.color)
        self.pg = PostgresPane()
        self.redis = RedisPane()
        self.pods = PodsPane()
        self.feed = AnomalyFeed()
        self.right = VerticalScroll(self.pg, self.redis, self.pods, id="right")
        yield self.header_bar
        yield self.latency
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield self.throughput
            yield self.right
        yield self.feed
        yield Footer()
        self.mounted = True

    def on_mount(self) -> None:
        header = self.header_bar
        if self.control is not None:
            header.targets = dict(self.control.targets)
            header.plan = list(self.control.plan)
            self.plan_running = bool(self.control.plan)
        elif self.replay is not None:
            h = self.replay.rec.header
            header.targets = dict(h.get("targets") or {})
            header.plan = list((h.get("load") or {}).get("plan") or [])
        header.step_size = self.step_size
        header.live = self.control is not None
        self.right.display = False
        self._apply_width(self.size.width)
        if self.inbox is not None:
            self.inbox.app = self
            self._drain()
        if self.replay is not None:
            if self.replay.ticks:
                self.seek(0)
            if self.autoplay:
                self.toggle_play()
            self._replay_status()
        else:
            self.set_interval(0.5, self._watch_session)
        self.screen.focus_next()

    def on_resize(self, event: Resize) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self.set_class(width < NARROW_WIDTH, "narrow")

    # ---- which keys exist ---------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.LIVE_ONLY:
            return self.control is not None and not self.stopping
        if action in self.REPLAY_ONLY:
            return self.replay is not None
        return True

    # ---- ticks in -------------------------------------------------------------
    @on(TicksArrived)
    def _on_ticks(self) -> None:
        self._drain()

    def _drain(self) -> None:
        assert self.inbox is not None
        if not self.mounted:
            return
        ticks = self.inbox.drain()
        if not ticks:
            return
        feed = self.feed
        fresh = []
        for t in ticks:
            self.timeline.add(t)
            fresh += feed.ingest(t)
        self.last_tick_at = self.clock()
        self._adopt_state(ticks[-1])
        self.render_tick(ticks[-1])
        self._toast(fresh)

    def _adopt_state(self, tick: Tick) -> None:
        """The engine's state as the tick says, unless a key changed it since."""
        if tick.t < self._local_state_at:
            return
        c = tick.control
        if c is not None:  # the tick says where the controls stand
            self.paused, self.panicked, self.plan_running = c.paused, c.panicked, c.plan_running
            return
        # a recording made before ticks carried their ControlState
        self.paused = tick.paused
        self.plan_running = tick.plan_step is not None
        for e in tick.events:
            if e.kind == "panic":
                self.panicked = True
            elif e.kind == "resume":
                self.panicked = False

    def render_tick(self, tick: Tick) -> None:
        self.last_tick = tick
        with self.batch_update():
            self.header_bar.show(tick)
            self.latency.show(tick, self.timeline)
            self.throughput.show(tick, self.timeline)
            pg = self.pg
            redis = self.query_one(RedisPane)
            pods = self.query_one(PodsPane)
            for pane in (pg, redis, pods):
                pane.show(tick, self.timeline)
            self.right.display = pg.display or redis.display or pods.display
            self.feed.show(tick, self.timeline)
        self.frames += 1

    def _toast(self, fresh: list[Any]) -> None:
        for a in fresh[:3]:
            self.notify(a.summary, title=f"critical: {a.kind}", severity="error", timeout=8)

    def _watch_session(self) -> None:
        header = self.header_bar
        if self.control is not None and not self.ended and self.control.wait(0):
            self.ended = True
            if getattr(self.control, "error", None):  # it never started: say why, on stderr
                self.exit(2)
                return
            if not self.stopping:
                header.status = "load stopped — q quits"
                header.refresh_text()
            return
        if self.stopping or self.ended or self.last_tick_at is None:
            return
        quiet = self.clock() - self.last_tick_at
        want = f"no tick for {quiet:.0f}s" if quiet > 3 else ""
        own = header.status.startswith("no tick") or not header.status
        if own and header.status != want:
            header.status = want
            header.refresh_text()

    # ---- live keys --------------------------------------------------------------
    @property
    def step_size(self) -> int:
        return STEP_SIZES[self.step_index]

    def _mark_local(self) -> None:
        self._local_state_at = time.time()

    def action_step(self, sign: int) -> None:
        assert self.control is not None
        self.control.step_concurrency(sign * self.step_size, source="key")
        if self.plan_running:
            self.plan_running = False
            self._mark_local()
            self.notify("manual change: the ramp plan is paused (r resumes it)", timeout=4)

    def action_step_size(self, direction: int) -> None:
        self.step_index = max(0, min(len(STEP_SIZES) - 1, self.step_index + direction))
        header = self.header_bar
        header.step_size = self.step_size
        header.refresh_text()
        if self.control is not None:
            self.control.note("step-size", f"step size {self.step_size}")

    def action_pause(self) -> None:
        assert self.control is not None
        if self.panicked:
            self._confirm_resume()
            return
        if self.paused:
            self.control.resume(source="key")
            self.paused = False
        else:
            self.control.pause(source="key")
            self.paused = True
        self._mark_local()
        self._status_now()

    def action_panic(self) -> None:
        assert self.control is not None
        self.control.panic(source="key")
        self.paused = True
        self.panicked = True
        self.plan_running = False
        self._mark_local()
        self.notify("PANIC: all load stopped. p resumes (asks first).", severity="warning")
        self._status_now()

    def _confirm_resume(self, then: Callable[[], None] | None = None) -> None:
        def answered(yes: bool | None) -> None:
            if not yes or self.control is None:
                return
            if then is not None:
                then()
            else:
                self.control.resume(source="key")
            self.paused = False
            self.panicked = False
            self._mark_local()
            self._status_now()

        self.push_screen(ConfirmScreen("The load was panic-stopped. Resume it?"), answered)

    def action_plan(self) -> None:
        assert self.control is not None
        if not self.control.plan:
            self.notify("no ramp plan: give --steps 1,2,4,8", timeout=4)
            return
        if self.plan_running:
            self.control.stop_plan(source="key")
            self.plan_running = False
            self.notify("ramp plan stopped", timeout=3)
        else:
            control = self.control

            def start() -> None:
                control.start_plan(source="key")
                self.plan_running = True
                self._mark_local()

            if self.panicked:
                self._confirm_resume(start)
                return
            start()
            self.notify("ramp plan started", timeout=3)
        self._mark_local()

    def _status_now(self) -> None:
        header = self.header_bar
        header.status = "PANIC — load stopped" if self.panicked else ""
        header.refresh_text()

    # ---- export, quit, help -----------------------------------------------------------
    def action_export(self) -> None:
        self._export()

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def _export(self) -> None:
        try:
            if self.control is not None:
                path = self.control.export_report(self._export_path())
            else:
                path = self._export_replay()
        except OSError as e:
            self.call_from_thread(self.notify, f"export failed: {e}", severity="error")
            return
        self.exports.append(path)
        self.call_from_thread(self.notify, f"report written: {path}", title="export", timeout=8)

    def _export_path(self) -> str | None:
        if self.export_dir is None:
            return None
        run = (self.control.config.get("run_id") if self.control else None) or "run"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return str(Path(self.export_dir) / f"loadtop-{run}-{stamp}.md")

    def _export_replay(self) -> str:
        from app.session.export import write_report

        assert self.replay is not None
        run = self.replay.rec.header.get("run_id", "replay")
        base = Path(self.export_dir or ".")
        return write_report(self.replay.rec, str(base / f"loadtop-{run}-replay.md"))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(replay=self.replay is not None))

    def action_quit_console(self) -> None:
        if self.control is None or self.ended:
            self.exit(self._exit_code())
            return
        if self.stopping:
            self.exit(self._exit_code())  # second q: do not wait for teardown on screen
            return
        self.stopping = True
        header = self.header_bar
        header.status = "stopping: load off, teardown, closing the recording…"
        header.refresh_text()
        self.control.stop("quit")
        self._wait_stopped()

    @work(thread=True, exclusive=True, group="quit", exit_on_error=False)
    def _wait_stopped(self) -> None:
        assert self.control is not None
        self.control.wait(120)
        self.call_from_thread(self.exit, self._exit_code())

    def _exit_code(self) -> int:
        outcome = getattr(self.control, "outcome", None)
        return int(getattr(outcome, "exit_code", 0) or 0)

    # ---- blockers ------------------------------------------------------------------
    @on(DataTable.RowSelected, "#blockers")
    def _blocker_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value or ""
        backend = self.pg.backends.get(key)
        if backend is None:
            return
        act = None
        if self.control is not None and not self.control.readonly:
            act = self._backend_action
        self.push_screen(BlockerScreen(backend, act))

    def _backend_action(self, verb: str, pid: int) -> str:
        assert self.control is not None
        if verb == "cancel":
            return self.control.cancel_backend(pid)
        return self.control.terminate_backend(pid)

    # ---- replay ------------------------------------------------------------------
    def seek(self, i: int) -> None:
        rp = self.replay
        assert rp is not None
        if not rp.ticks:
            return
        i = max(0, min(len(rp.ticks) - 1, i))
        forward_one = i == rp.pos + 1
        rp.pos = i
        rp.seeks += 1
        if rp.seeks % TRIM_EVERY == 0:
            release_free_memory()
        tick = rp.ticks[i]
        feed = self.feed
        fresh = []
        if forward_one:
            self.timeline.push(rp.point(i))
            fresh = feed.ingest(tick)
        else:
            self.timeline.set_state(
                rp.points_to(i), rp.overview_to(i), rp.changes_to(i), total=i + 1
            )
            # the feed as it stood at tick i: what had cleared by then, and what is active
            feed.reset()
            feed.restore(rp.cleared_to(i), tick.anomalies)
            for pane in (self.pg, self.redis, self.pods, self.feed):
                pane.reveal(False)  # shown again by render_tick if data is there
        self.render_tick(tick)
        self._replay_status()
        if forward_one and rp.playing:
            self._toast(fresh)

    def toggle_play(self) -> None:
        rp = self.replay
        assert rp is not None
        rp.playing = not rp.playing
        if rp.playing:
            if rp.pos >= len(rp.ticks) - 1:
                self.seek(0)
            interval = float((rp.rec.header.get("load") or {}).get("interval_s") or 1.0)
            self._play_timer = self.set_interval(interval, self._play_next)
        elif self._play_timer is not None:
            self._play_timer.stop()
            self._play_timer = None
        self._replay_status()

    def _play_next(self) -> None:
        rp = self.replay
        assert rp is not None
        if rp.pos >= len(rp.ticks) - 1:
            self.toggle_play()
            return
        self.seek(rp.pos + 1)

    def _replay_status(self) -> None:
        rp = self.replay
        assert rp is not None
        header = self.header_bar
        n = len(rp.ticks)
        end = fmt.clock(rp.elapsed[-1]) if n else "00:00"
        state = "▶ playing" if rp.playing else "❚❚ paused"
        header.status = f"REPLAY {state}  tick {rp.pos + 1 if n else 0}/{n}  of {end}"
        if not rp.rec.complete:
            header.status += "  (recording cut off)"
        header.refresh_text()

    def action_play(self) -> None:
        self.toggle_play()

    def action_seek_step(self, delta: int) -> None:
        rp = self.replay
        assert rp is not None
        if rp.playing:
            self.toggle_play()
        self.seek(rp.pos + delta)

    def action_seek_to(self, where: int) -> None:
        rp = self.replay
        assert rp is not None
        self.seek(len(rp.ticks) - 1 if where < 0 else where)

    def action_seek(self) -> None:
        rp = self.replay
        assert rp is not None

        def done(seconds: float | None) -> None:
            if seconds is not None:
                self.seek(rp.seek_elapsed(seconds))

        self.push_screen(SeekScreen(), done)


# ---- entry points -------------------------------------------------------------------


def make_live_app(session: Any, *, clock: Clock = time.monotonic, **kw: Any) -> LoadtopApp:
    """The console over a Session (subscribes its inbox; start the session
    before or after)."""
    warm_up()
    inbox = TickInbox()
    session.subscribe(inbox)
    return LoadtopApp(control=session, inbox=inbox, clock=clock, **kw)


def make_replay_app(rec: Recording, *, clock: Clock = time.monotonic, **kw: Any) -> LoadtopApp:
    warm_up()
    return LoadtopApp(recording=rec, clock=clock, **kw)


def _install_stop_signals(
    app: LoadtopApp, session: Any, cleanup: Callable[[], None] | None = None
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
    session: Any, cleanup: Callable[[], None] | None, code: int, grace: float = 5.0
) -> None:
    session.wait(180)
    time.sleep(grace)  # the normal way out had its chance
    if cleanup is not None:
        with contextlib.suppress(Exception):
            cleanup()
    os._exit(code)


def run_session_console(
    session: Any,
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
    outcome = getattr(session, "outcome", None)
    for m in getattr(session, "messages", []):
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
    import sys

    print(f"loadtop: {msg}", file=sys.stderr, flush=True)
