"""The console's panes. Each pane only reads ticks (`show(tick, timeline)`),
keeps its tables keyed (update changed cells, remove stale rows, add new), and
hides itself while it has nothing to show.

Here: the shared parts (`Pane`, `sync_table`, `reorder`), the load's panes
(header, latency, throughput chart) and the anomaly feed. The probes' panes
(postgres, redis, pods) are in `app.ui.probe_panes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.app import ComposeResult
from textual.cache import LRUCache
from textual.containers import Vertical
from textual.widgets import DataTable, Static
from textual.widgets.data_table import ColumnKey

from app import fmt
from app.tick import Anomaly, Tick
from app.ui.timeline import (
    CHANGE_KINDS,
    MARK_CHAR,
    P95_MARK,
    Timeline,
    chart_marks,
    render_chart,
    sparkline,
)

Row = tuple[Any, ...]


def sync_table(table: DataTable, rows: Mapping[str, Row], cache: dict[str, Row]) -> bool:
    """Bring `table` to `rows` (ordered, keyed): remove stale rows, update the
    cells that changed, add new rows. Returns True when rows were added or
    removed (the caller may re-sort). `cache` holds what the table shows."""
    changed = False
    # plain strings become Text: a query or a key like "x:lock:1" is neither
    # console markup nor an emoji code
    rows = {k: tuple(Text(c) if isinstance(c, str) else c for c in row) for k, row in rows.items()}
    for key in [k for k in cache if k not in rows]:
        table.remove_row(key)
        del cache[key]
        changed = True
    columns = list(table.columns.keys())
    for key, row in rows.items():
        old = cache.get(key)
        if old is None:
            table.add_row(*row, key=key)
            changed = True
        elif old != row:
            # a row may have grown a cell (a column added since): old is short
            for col, a, b in zip(columns, (*old, *[""] * (len(row) - len(old))), row, strict=False):
                if a != b:
                    # a wider value re-measures the column; others only repaint
                    wider = len(str(b)) > len(str(a))
                    table.update_cell(key, col, b, update_width=wider)
        cache[key] = row
    return changed


# Textual's DataTable caches what it rendered: 1,000 rows, 1,000 row
# renderables, 1,000 lines and 10,000 cells, all keyed on its update count,
# which every cell update bumps. Ours change every tick, so an entry is not
# read again after its frame, and the caches only fill: the console's seven
# tables held ~25 MB more after an hour of ticks than after five minutes, the
# slowest tables (one queue, a few locks) still filling hours later (issue
# 10). A frame needs one entry per visible row, line and cell: these leave
# room for a tall terminal (~120 rows of 16 columns) and hold a few MB at most.
TABLE_ROW_CACHE = 128
TABLE_CELL_CACHE = 2048
_TABLE_CACHES = (
    ("_row_render_cache", TABLE_ROW_CACHE),
    ("_row_renderable_cache", TABLE_ROW_CACHE),
    ("_line_cache", TABLE_ROW_CACHE),
    ("_cell_render_cache", TABLE_CELL_CACHE),
)


def bound_table_caches(table: DataTable) -> None:
    """Cap `table`'s render caches (TABLE_ROW_CACHE, TABLE_CELL_CACHE). Textual
    has no setting for them: a version without these caches is left as is."""
    for name, size in _TABLE_CACHES:
        cache = getattr(table, name, None)
        if isinstance(cache, LRUCache) and cache.maxsize > size:
            cache.clear()  # an LRUCache evicts one entry per insert: start under the cap
            cache.maxsize = size


def table_cache_sizes(table: DataTable) -> dict[str, int]:
    """How many entries each render cache of `table` holds (tests, benchmarks)."""
    return {
        name: len(cache)
        for name, _ in _TABLE_CACHES
        if isinstance(cache := getattr(table, name, None), LRUCache)
    }


class Pane(Vertical):
    """A bordered pane that hides itself until it has data."""

    can_focus = False

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="pane")
        self.border_title = title
        self.display = False

    def reveal(self, on: bool = True) -> None:
        if self.display != on:
            self.display = on


class HeaderBar(Static):
    """Targets (redacted), elapsed, target/achieved concurrency, mode, plan
    step, threshold status and the console's own state (paused, replay)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__("loadtop", **kw)
        self.targets: dict[str, str] = {}
        self.plan: list[int] = []
        self.step_size = 1
        self.watching: int | None = None  # viewers of the web view (None: no --web)
        self.status = ""  # "stopping…", "replay 12/300 ▶", ...
        self.live = True
        self.tick: Tick | None = None

    def show(self, tick: Tick | None) -> None:
        self.tick = tick
        self.refresh_text()

    def refresh_text(self) -> None:
        t = self.tick
        line1 = Text()
        line1.append("loadtop ", style="bold")
        if self.watching is not None:  # --web: browsers following this run
            line1.append(f"{self.watching} watching  ", style="bold cyan")
        tg = "  ".join(f"{k}: {v}" for k, v in self.targets.items()) or "no targets"
        line1.append(tg, style="dim")
        line2 = Text()
        if not self.live and self.status:
            line2.append(f"{self.status}  ", style="bold magenta")
        if t is None:
            line2.append("starting…")
        else:
            line2.append(f"{fmt.clock(t.elapsed)} ", style="bold")
            if t.mode == "rate":
                line2.append(f"rate {fmt.rate(t.rate or 0)}/s  ")
            line2.append("workers ")
            line2.append(f"{t.concurrency}", style="bold")
            line2.append(f"/{t.target_concurrency}  ")
            if self.live:
                line2.append(f"step ±{self.step_size}  ")
            if t.plan_step is not None and self.plan:
                line2.append(f"plan {t.plan_step + 1}/{len(self.plan)} ", style="bold cyan")
                line2.append(f"({self.plan[min(t.plan_step, len(self.plan) - 1)]})  ")
            elif self.plan and self.live:
                line2.append("plan paused (r)  ", style="dim")
            if t.paused:
                line2.append(" PAUSED ", style="reverse bold yellow")
                line2.append("  ")
            line2.append(f"{fmt.rate(t.ops_per_s)} ops/s  ")
            if t.failed:
                line2.append(f"err {100 * t.error_ratio:.2f}%  ", style="bold red")
            for th in t.thresholds:
                style = "bold red" if th.tripped else ("yellow" if th.breached else "green")
                mark = "✗" if th.tripped else ("!" if th.breached else "✓")
                line2.append(f"{mark} {th.expr}  ", style=style)
        if self.status and self.live:
            line2.append(f" {self.status}", style="bold magenta")
        line1.no_wrap = line2.no_wrap = True
        line1.overflow = line2.overflow = "ellipsis"
        self.update(Text("\n").join([line1, line2]))


class LatencyPane(Pane):
    """Per scenario: sparklines of p50 and p99 over the last ticks, current
    p50/p95/p99, ops/s, errors. The two trend columns share out whatever width
    the other columns leave (at least `SPARK_MIN` each), recomputed on resize."""

    SPARK_MIN = 9  # the header's width ("p50 trend"): an 80-column pane scrolls less
    SPARK_MAX = 300  # the timeline keeps RECENT_POINTS (600) points; half each is plenty
    TRENDS = ("p50~", "p99~")

    def __init__(self) -> None:
        super().__init__("latency", id="latency")
        self._cache: dict[str, Row] = {}
        self._counts_col = False  # added when a scenario first calls ctx.count()
        self.spark_width = self.SPARK_MIN
        self._tick: Tick | None = None
        self._tl: Timeline | None = None

    def compose(self) -> ComposeResult:
        t: DataTable = DataTable(id="latency-table", cursor_type="row")
        t.add_columns("scenario", "workers", "ops/s", "p50", "p95", "p99", "err")
        t.add_column("p50 trend", key="p50~", width=self.SPARK_MIN)
        t.add_column("p99 trend", key="p99~", width=self.SPARK_MIN)
        yield t

    def fit_trends(self) -> bool:
        """Size the trend columns to the table's width: what the other columns
        need is kept, the rest split between the two. True when it changed."""
        table = self.query_one("#latency-table", DataTable)
        avail = table.scrollable_content_region.width
        if avail <= 0:  # not laid out yet
            return False
        pad = 2 * table.cell_padding
        others = sum(
            c.get_render_width(table)
            for k, c in table.columns.items()
            if k.value not in self.TRENDS
        )
        share = (avail - others - 2 * pad) // 2
        w = max(self.SPARK_MIN, min(self.SPARK_MAX, share))
        if w == self.spark_width:
            return False
        self.spark_width = w
        for key in self.TRENDS:
            table.columns[ColumnKey(key)].width = w
        table._require_update_dimensions = True
        table.refresh()
        return True

    def on_resize(self) -> None:
        if self._tick is not None and self._tl is not None and self.fit_trends():
            self._sync(self._tick, self._tl)

    def show(self, tick: Tick, tl: Timeline) -> None:
        self.reveal(bool(tick.scenarios))
        self._tick, self._tl = tick, tl
        self._sync(tick, tl)
        # the other columns may have grown with this tick's numbers
        if self.fit_trends():
            self._sync(tick, tl)

    def _trend(self, name: str, field: str, tl: Timeline, style: str) -> Text:
        w = self.spark_width
        # newest at the right edge; a young session leaves blanks on the left
        return Text(sparkline(tl.series(name, field, w), w).rjust(w), style=style)

    def _sync(self, tick: Tick, tl: Timeline) -> None:
        table = self.query_one("#latency-table", DataTable)
        rows: dict[str, Row] = {}
        last = tl.points[-1] if tl.points else None
        if not self._counts_col and last is not None and any(s.counters for s in last.scenarios):
            table.add_column("counts /s", key="counts", default="")
            self._counts_col = True
        for s in last.scenarios if last else ():
            row: Row = (
                s.name[:22],
                f"{s.concurrency}/{s.target}",
                fmt.rate(s.ops),
                fmt.ms(s.lat.p50 if s.lat.count else None),
                fmt.ms(s.lat.p95 if s.lat.count else None),
                fmt.ms(s.lat.p99 if s.lat.count else None),
                Text(f"{s.err_pct:.1f}%", style="bold red") if s.err_pct else "0",
                self._trend(s.name, "p50", tl, "green"),
                self._trend(s.name, "p99", tl, "yellow"),
            )
            if self._counts_col:
                counts = ", ".join(f"{k} {fmt.rate(v)}" for k, v in s.counters)
                row = (*row, counts[:48])
            rows[s.name] = row
        sync_table(table, rows, self._cache)


class ThroughputPane(Pane):
    """The plotext chart of throughput and p95 over the whole session, with
    every concurrency change marked."""

    EVERY_AFTER = 10  # points: after that, the session chart is redrawn every other tick

    def __init__(self, *, color: bool = True) -> None:
        super().__init__("throughput & p95 over the session", id="throughput")
        self.color = color
        self._chart_key: tuple[int, int, int] | None = None
        self.timeline: Timeline | None = None

    def compose(self) -> ComposeResult:
        yield Chart(id="chart")
        yield Static("", id="chart-marks")

    def show(self, tick: Tick, tl: Timeline) -> None:
        self.reveal(bool(tick.scenarios))
        self.timeline = tl
        self.redraw_chart(tl)

    def redraw_chart(self, tl: Timeline, force: bool = False) -> None:
        """A chart costs ~10 ms to build and as much to paint: redraw it every
        other tick after the first ten, at once on a size or control change."""
        chart = self.query_one("#chart", Static)
        w = max(chart.size.width, 30)
        h = max(chart.size.height, 6)
        last = tl.points[-1] if tl.points else None
        index = last.index if last else -1
        size_changed = self._chart_key is None or self._chart_key[1:] != (w, h)
        if not (force or size_changed):
            drawn = self._chart_key[0] if self._chart_key else -1
            if index == drawn:
                return
            every = 1 if len(tl.points) < self.EVERY_AFTER else 2
            changed = last is not None and any(e.kind in CHANGE_KINDS for e in last.events)
            if index - drawn < every and not changed:
                return
        self._chart_key = (index, w, h)
        text = render_chart(tl, w, h, color=self.color)
        chart.update(chart_text(text) if self.color else Text(text))
        self.query_one("#chart-marks", Static).update(chart_marks(tl))


SERIES_STYLE = {"ops": "green", "p95": "yellow", "mark": "magenta", "": ""}


def _char_class(ch: str) -> str:
    if "\u2800" <= ch <= "\u28ff":
        return "ops"
    if ch == P95_MARK:
        return "p95"
    if ch == MARK_CHAR:
        return "mark"
    return ""


def chart_text(plain: str) -> Text:
    """Colour plotext's plain chart per series (braille = ops/s, • = p95,
    ┊ = a change): cheaper than parsing ANSI (rich's from_ansi costs ~30 ms
    a chart) and the series stay apart on NO_COLOR terminals too."""
    text = Text(no_wrap=True, overflow="crop")
    for n, line in enumerate(plain.split("\n")):
        if n:
            text.append("\n")
        run, cls = "", ""
        for ch in line:
            c = _char_class(ch)
            if c != cls and run:
                text.append(run, SERIES_STYLE[cls])
                run = ""
            cls = c
            run += ch
        if run:
            text.append(run, SERIES_STYLE[cls])
    return text


class Chart(Static):
    """The plotext chart; redrawn when its size changes."""

    def on_resize(self) -> None:
        pane = self.parent
        if isinstance(pane, ThroughputPane) and pane.timeline is not None:
            pane.redraw_chart(pane.timeline)


def reorder(table: DataTable, order: dict[str, int]) -> None:
    """Order rows by `order` (row key -> position) without rebuilding them:
    what `DataTable.sort` does, with the row key as the sort key."""
    keys = sorted(table.rows, key=lambda k: order.get(k.value or "", 1_000_000))
    table._row_locations = TwoWayDict({k: i for i, k in enumerate(keys)})
    table._update_count += 1
    table.refresh()


SEV_STYLE = {"critical": "bold white on red", "warning": "bold yellow", "info": "cyan"}


class AnomalyFeed(Pane):
    """Anomalies, newest first: kind, severity, since, evidence."""

    MAX_ROWS = 60

    def __init__(self) -> None:
        super().__init__("anomalies", id="anomalies")
        self._cache: dict[str, Row] = {}
        self._seen: dict[str, Anomaly] = {}  # key -> latest state (active or cleared)

    def compose(self) -> ComposeResult:
        t: DataTable = DataTable(id="feed", cursor_type="row")
        t.add_columns("since", "severity", "kind", "subject", "summary")
        yield t

    def reset(self) -> None:
        self._seen.clear()

    def restore(self, cleared: Iterable[Anomaly], active: Iterable[Anomaly]) -> None:
        """The state after some tick: the anomalies cleared by then (oldest
        first) and those active in it."""
        for a in cleared:
            self._seen[a.key] = a
        for a in active:
            self._seen[a.key] = a
        self._bound()

    def ingest(self, tick: Tick) -> list[Anomaly]:
        """Follow every tick's anomalies; returns the critical ones first seen
        in this tick (for toasts)."""
        fresh: list[Anomaly] = []
        for a in tick.anomalies:
            new = a.key not in self._seen or self._seen[a.key].cleared_tick is not None
            if new and a.severity == "critical":
                fresh.append(a)
            self._seen[a.key] = a
        for a in tick.cleared:
            self._seen[a.key] = a
        self._bound()
        return fresh

    MAX_SEEN = 500  # anomalies followed; the oldest cleared ones go first

    def _bound(self) -> None:
        """Bounded over a long session: forget the cleared anomalies that
        started longest ago (the feed shows the newest MAX_ROWS anyway)."""
        if len(self._seen) <= self.MAX_SEEN:
            return
        cleared = sorted(
            (a for a in self._seen.values() if a.cleared_tick is not None),
            key=lambda a: (a.started_at, a.key),
        )
        for a in cleared[: len(self._seen) - self.MAX_SEEN]:
            del self._seen[a.key]

    def show(self, tick: Tick, tl: Timeline) -> None:
        if not self._seen:
            if self._cache:
                sync_table(self.query_one("#feed", DataTable), {}, self._cache)
            self.reveal(False)
            return
        self.reveal(True)
        newest = sorted(self._seen.values(), key=lambda a: (a.started_at, a.key), reverse=True)
        newest = newest[: self.MAX_ROWS]
        rows: dict[str, Row] = {}
        for a in newest:
            cleared = a.cleared_tick is not None
            sev = Text(a.severity, style="dim" if cleared else SEV_STYLE.get(a.severity, ""))
            rows[a.key] = (
                _since(a, tick),
                sev,
                a.kind + (" ✓" if cleared else ""),
                a.subject[:28],
                a.summary[:140],
            )
        table = self.query_one("#feed", DataTable)
        if sync_table(table, rows, self._cache):
            reorder(table, {k: i for i, k in enumerate(rows)})


def _since(a: Anomaly, tick: Tick) -> str:
    if a.cleared_tick is not None:
        return f"cleared {fmt.age(tick.t - (a.cleared_at or tick.t))} ago"
    return fmt.age(tick.t - a.started_at)


def all_panes(panes: Iterable[Pane]) -> list[Pane]:
    return list(panes)
