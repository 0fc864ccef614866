"""The console's view of the timeline: compact per-tick points (the newest
ones), a bounded overview of the whole session, sparklines and
the plotext session chart. Pure Python (no textual import), so it is cheap to
test and the same code serves the live console and replay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from app import fmt
from app.tick import ControlEvent, Percentiles, Tick

SPARK = "▁▂▃▄▅▆▇█"
P95_MARK = "•"
MARK_CHAR = "┊"
CHANGE_KINDS = ("concurrency", "rate", "pause", "resume", "panic")


@dataclass(frozen=True, slots=True)
class ScenarioPoint:
    name: str
    concurrency: int
    target: int
    ops: float
    err_pct: float
    lat: Percentiles
    last_error: str
    counters: tuple[tuple[str, float], ...] = ()  # ctx.count() per second


@dataclass(frozen=True, slots=True)
class Point:
    """One tick, reduced to what the charts need."""

    index: int
    elapsed: float
    ops: float
    p95: float
    target: int
    concurrency: int
    scenarios: tuple[ScenarioPoint, ...]
    events: tuple[ControlEvent, ...]


def point_of(tick: Tick, p95: float | None = None) -> Point:
    """`p95`: the tick's merged p95 (ms) when already known (a recording's
    index has it), which saves merging its histograms again."""
    iv = tick.interval if tick.interval > 0 else 1.0
    if tick.is_drain:  # a few ms of stragglers would chart as a throughput spike
        iv = max(iv, 1.0)
    scen = tuple(
        ScenarioPoint(
            name=s.name,
            concurrency=s.concurrency,
            target=s.target,
            ops=s.completed / iv,
            err_pct=100.0 * s.failed / s.completed if s.completed else 0.0,
            lat=s.latency(),
            last_error=s.last_error,
            counters=tuple((k, v / iv) for k, v in s.counters.items()),
        )
        for s in tick.scenarios
    )
    return Point(
        index=tick.index,
        elapsed=tick.elapsed,
        ops=sum(s.ops for s in scen),
        p95=(tick.latency().p95 if tick.scenarios else 0.0) if p95 is None else p95,
        target=tick.target_concurrency,
        concurrency=tick.concurrency,
        scenarios=scen,
        events=tuple(tick.events),
    )


# Full points kept for the sparklines and the panes (the newest ones), and
# the size of the compact whole-session overview the chart draws.
RECENT_POINTS = 600
OVERVIEW_POINTS = 2048
MAX_CHANGES = 1000


class Overview:
    """The whole session for the chart, in bounded memory: (elapsed, ops/s,
    p95) every `stride` ticks; when full, every other sample is dropped and
    the stride doubles. The chart draws ~2 points a column, so 2,048 samples
    lose nothing it could show."""

    def __init__(self, cap: int = OVERVIEW_POINTS) -> None:
        self.cap = max(4, cap)
        self.stride = 1
        self.n = 0
        self.xs: list[float] = []
        self.ops: list[float] = []
        self.p95: list[float] = []

    def add(self, elapsed: float, ops: float, p95: float) -> None:
        if self.n % self.stride == 0:
            self.xs.append(elapsed)
            self.ops.append(ops)
            self.p95.append(p95)
            if len(self.xs) > self.cap:
                self.xs = self.xs[::2]
                self.ops = self.ops[::2]
                self.p95 = self.p95[::2]
                self.stride *= 2
        self.n += 1

    def clear(self) -> None:
        self.__init__(self.cap)  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.xs)


class Timeline:
    """The console's view of the session, bounded whatever its length: the
    newest `maxlen` points in full, a compact overview of the whole session
    for the chart, and the latest `MAX_CHANGES` load changes for its marks."""

    def __init__(self, maxlen: int = RECENT_POINTS) -> None:
        self.points: deque[Point] = deque(maxlen=maxlen)
        self.overview = Overview()
        self._changes: deque[tuple[float, ControlEvent]] = deque(maxlen=MAX_CHANGES)
        self.total = 0  # points ever added

    def add(self, tick: Tick) -> Point:
        p = point_of(tick)
        self.push(p)
        return p

    def push(self, p: Point) -> None:
        self.points.append(p)
        self.overview.add(p.elapsed, p.ops, p.p95)
        for e in p.events:
            if e.kind in CHANGE_KINDS:
                self._changes.append((p.elapsed, e))
        self.total += 1

    def clear(self) -> None:
        self.points.clear()
        self.overview.clear()
        self._changes.clear()
        self.total = 0

    def set_state(
        self,
        points: list[Point],
        overview: Overview,
        changes: list[tuple[float, ControlEvent]],
        total: int,
    ) -> None:
        """The state at some tick, built elsewhere (a replay's seek)."""
        self.points = deque(points, maxlen=self.points.maxlen)
        self.overview = overview
        self._changes = deque(changes, maxlen=MAX_CHANGES)
        self.total = total

    def series(self, name: str, field: str, last: int) -> list[float]:
        out: list[float] = []
        n = len(self.points)
        for i in range(max(0, n - last), n):
            for s in self.points[i].scenarios:
                if s.name == name:
                    out.append(getattr(s.lat, field) if field != "ops" else s.ops)
                    break
            else:
                out.append(0.0)
        return out

    def changes(self) -> list[tuple[float, ControlEvent]]:
        return list(self._changes)


def sparkline(values: list[float], width: int) -> str:
    vals = values[-width:] if width > 0 else []
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return SPARK[0] * len(vals)
    n = len(SPARK) - 1
    return "".join(SPARK[min(n, round(v / top * n))] for v in vals)


def render_chart(tl: Timeline, width: int, height: int, *, color: bool = True) -> str:
    """Throughput (left axis) and p95 (right axis) over the whole session,
    each concurrency change marked with a vertical line. Returns text with
    ANSI colour codes (none when `color` is False). plotext's figure is a
    module-level object: call this from one thread only (the UI's)."""
    import plotext as plt

    ov = tl.overview
    xs_all, ops_all, p95_all = list(ov.xs), list(ov.ops), list(ov.p95)
    last = tl.points[-1] if tl.points else None
    if last is not None and (not xs_all or xs_all[-1] < last.elapsed):
        xs_all.append(last.elapsed)
        ops_all.append(last.ops)
        p95_all.append(last.p95)
    plt.terminal.limit(False, False)  # the widget, not the terminal, sizes the chart
    f = plt.figure
    f.clear()
    f.plot_size(max(width, 20), max(height, 5))
    f.theme("colorless")  # colours are added per series by `chart_text`
    n = len(xs_all)
    if n < 2:
        f.title("waiting for ticks")
        return f.build().string(True)
    step = max(1, n // (max(width, 20) * 2))  # at most ~2 points per column
    keep = list(range(0, n, step)) + ([n - 1] if (n - 1) % step else [])
    xs = [round(xs_all[k], 3) for k in keep]
    ops = f.signal(xs, [ops_all[k] for k in keep], marker="braille").lines()
    p95 = f.signal(xs, [p95_all[k] for k in keep], marker=P95_MARK, yside="right").lines()
    f.draw(ops)
    f.draw(p95)
    # tick labels as the panes write numbers (6.5k, 12.3ms, 01:30), not plotext's 6.5e3
    n = max(3, height // 3)
    ops_v, p95_v = [ops_all[k] for k in keep], [p95_all[k] for k in keep]
    for side, vals, label in (("left", ops_v, fmt.rate), ("right", p95_v, fmt.ms)):
        marks = [(v, label(v)) for v in fmt.axis_ticks(min(vals), max(vals), n)]
        marks = [m for i, m in enumerate(marks) if i == 0 or m[1] != marks[i - 1][1]]
        f.ruler("y", side).ticks([v for v, _ in marks], [t for _, t in marks])
    ticks = fmt.time_ticks(xs[0], xs[-1], max(3, width // 9))
    f.ruler("x", "lower").ticks(ticks, [fmt.clock(v) for v in ticks])
    f.title("ops/s ⠒ left · p95 ms • right · ┊ change")
    changes = [x for x, _ in tl.changes() if xs[0] <= x <= xs[-1]]
    for x in changes[-40:]:
        f.line(round(x, 3), "v", style="dotted")
    return f.build().string(True)


def warm_up() -> None:
    """Import plotext and build one chart, so the first real render (on the
    UI loop) does not pay ~1 s for it."""
    tl = Timeline()
    render_chart(tl, 40, 10)


def chart_marks(tl: Timeline, last: int = 6) -> str:
    """A legend line for the chart's vertical marks: the latest changes."""
    parts = []
    for x, e in tl.changes()[-last:]:
        if e.kind == "concurrency":
            parts.append(f"{x:.0f}s {e.before:g}→{e.after:g}")
        else:
            parts.append(f"{x:.0f}s {e.kind}")
    return "  ".join(parts)


def summary_of(data: Any, key: str, default: Any = None) -> Any:
    try:
        return data.get(key, default)
    except AttributeError:
        return default
