"""The console's shared base: one Textual app that renders ticks.

`Console` owns everything that does not care where the ticks come from
(Dolphie's idea: live and replay feed the same state): the layout, the panes,
the timeline, the anomaly feed and its toasts, export, help, blocker details,
quit. Its two thin subclasses bring the ticks and their own keys:

- `app.ui.live.LiveConsole`: ticks from a running session through a
  `SessionControl`; the load keys (+ - [ ] p x r).
- `app.ui.replay.ReplayConsole`: ticks from a recording; play and seek keys.

A subclass supplies the header facts (`header_facts`), how a report is
written (`write_report`), what it starts once mounted (`started`) and, if it
wants, a backend action for the blocker details (`backend_action`) and its
own quit (`action_quit_console`). Bindings live on the class that uses them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Resize
from textual.widgets import DataTable, Footer

from app.tick import Anomaly, Tick
from app.ui.panes import (
    AnomalyFeed,
    HeaderBar,
    LatencyPane,
    ThroughputPane,
    bound_table_caches,
)
from app.ui.probe_panes import PodsPane, PostgresPane, RedisPane
from app.ui.screens import BlockerScreen, HelpScreen
from app.ui.timeline import Timeline

NARROW_WIDTH = 100

Clock = Callable[[], float]
BackendAction = Callable[[str, int], str]


class Console(App[int]):
    CSS_PATH = "loadtop.tcss"
    TITLE = "loadtop"
    ENABLE_COMMAND_PALETTE = False

    # The keys every console has. Each subclass lists them after its own, so
    # the footer shows its own keys first (Textual merges a base class's
    # BINDINGS ahead of a subclass's).
    SHARED_BINDINGS = [
        Binding("e", "export", "export"),
        Binding("tab", "focus_next", "panes", show=False),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit_console", "quit"),
    ]
    HELP_TITLE = "loadtop keys"
    HELP_KEYS: list[tuple[str, str]] = []
    LIVE = True  # the header shows live-only facts (step size, "plan paused")

    def __init__(self, *, clock: Clock = time.monotonic, export_dir: str | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.export_dir = export_dir
        self.timeline = Timeline()
        self.last_tick: Tick | None = None
        self.exports: list[str] = []
        self.frames = 0  # renders done (for tests and the benchmark)
        self.color = True
        self.mounted = False

    # ---- what a subclass supplies ---------------------------------------------------
    def header_facts(self) -> tuple[dict[str, str], list[int]]:
        """(targets, ramp plan) for the header."""
        raise NotImplementedError

    def started(self) -> None:
        """Called once the layout is mounted: start feeding ticks."""

    def write_report(self) -> str:
        """Write the Markdown summary (on a worker thread); returns its path."""
        raise NotImplementedError

    def backend_action(self) -> BackendAction | None:
        """cancel / terminate for the blocker details; None: read-only."""
        return None

    def exit_code(self) -> int:
        return 0

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
        targets, plan = self.header_facts()
        header.targets = dict(targets)
        header.plan = list(plan)
        header.live = self.LIVE
        for table in self.query(DataTable):  # every pane's, before the first tick
            bound_table_caches(table)
        self.right.display = False
        self._apply_width(self.size.width)
        self.started()
        self.screen.focus_next()

    def on_resize(self, event: Resize) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self.set_class(width < NARROW_WIDTH, "narrow")

    # ---- ticks in: one path for live and replay ---------------------------------------
    def take(self, ticks: Iterable[Tick]) -> list[Anomaly]:
        """Append ticks to the timeline and the feed, render the newest one;
        returns the critical anomalies first seen in them (for toasts)."""
        fresh: list[Anomaly] = []
        last = None
        for t in ticks:
            self.timeline.add(t)
            fresh += self.feed.ingest(t)
            last = t
        if last is not None:
            self.render_tick(last)
        return fresh

    def render_tick(self, tick: Tick) -> None:
        self.last_tick = tick
        if not self.is_running:
            # shutting down: the panes are being taken apart, and a tick that
            # arrives now (the drain window, a play timer) must not crash the exit
            return
        with self.batch_update():
            self.header_bar.show(tick)
            self.latency.show(tick, self.timeline)
            self.throughput.show(tick, self.timeline)
            for pane in (self.pg, self.redis, self.pods):
                pane.show(tick, self.timeline)
            self.right.display = self.pg.display or self.redis.display or self.pods.display
            self.feed.show(tick, self.timeline)
        self.frames += 1

    def toast(self, fresh: list[Anomaly]) -> None:
        for a in fresh[:3]:
            self.notify(a.summary, title=f"critical: {a.kind}", severity="error", timeout=8)

    def set_status(self, text: str) -> None:
        header = self.header_bar
        header.status = text
        header.refresh_text()

    # ---- export, help, quit -------------------------------------------------------
    def action_export(self) -> None:
        self._export()

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def _export(self) -> None:
        try:
            path = self.write_report()
        except OSError as e:
            self.call_from_thread(self.notify, f"export failed: {e}", severity="error")
            return
        self.exports.append(path)
        self.call_from_thread(self.notify, f"report written: {path}", title="export", timeout=8)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.HELP_TITLE, self.HELP_KEYS))

    def action_quit_console(self) -> None:
        self.exit(self.exit_code())

    # ---- blockers ------------------------------------------------------------------
    @on(DataTable.RowSelected, "#blockers")
    def _blocker_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value or ""
        backend = self.pg.backends.get(key)
        if backend is None:
            return
        self.push_screen(BlockerScreen(backend, self.backend_action()))
