"""The report's chart data: throughput and latency over the session, with
every control event and every anomaly raised as a marker.

Built in ONE pass over an iterable of ticks (a recording may be streamed
from disk), keeping a few floats per bucket: before more than `max_points`
buckets would exist, neighbours are merged pairwise, so an 8-hour recording
(28,800 ticks) costs what a 10-minute one does. A bucket's throughput is its
operations over its seconds (the mean rate); its p95 and p99 are the worst
tick's (a spike is not averaged away). `app.session.chart_render` draws it
(SVG and text). No textual import: this is the session layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from app import fmt
from app.tick import ControlEvent, Tick, values_at_percentiles, window_hists

MAX_POINTS = 480  # buckets kept while reading; merged pairwise beyond this
MAX_MARKERS = 200  # vertical lines drawn; the rest are counted in the legend

# ---- axis ticks: app.fmt's figures without trailing zeros -----------------


def tick_label(s: str) -> str:
    """An axis tick without trailing zeros: `2.0k` -> `2k`, `2.50ms` -> `2.5ms`."""
    m = re.fullmatch(r"(-?\d+)\.(\d+)(\D*)", s)
    if not m:
        return s
    frac = m[2].rstrip("0")
    return f"{m[1]}.{frac}{m[3]}" if frac else f"{m[1]}{m[3]}"


# ---- the data --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical line: a control event or an anomaly raised."""

    x: float  # elapsed seconds
    kind: str  # the event's kind ("concurrency", "fault", ...) or "anomaly"
    label: str  # a few characters drawn by the line
    title: str  # the whole story, as the line's <title> (a tooltip in a browser)
    color: str
    group: str  # the legend's name for its colour: "load change", "fault", "anomaly (warning)"
    after: float | None = None  # the value a change set (labels of one change are shown once)


@dataclass
class ChartData:
    scenarios: list[str]
    xs: list[float]  # elapsed seconds at the end of each bucket
    ops: dict[str, list[float | None]]  # ops/s per scenario and bucket
    p95: dict[str, list[float | None]]  # ms, worst tick of the bucket
    p99: dict[str, list[float | None]]
    markers: list[Marker] = field(default_factory=list)
    markers_dropped: int = 0
    ticks: int = 0
    ticks_per_point: int = 1
    duration: float = 0.0

    @property
    def empty(self) -> bool:
        """Nothing to draw: no tick, or no load (`loadtop watch` only watches)."""
        return not self.xs or not self.scenarios


_LOAD_KINDS = {"concurrency": "c", "plan-step": "step", "rate": "rate", "step-size": "step"}
# colour and legend name by kind; any other kind is an "event", drawn all the same
_GROUPS = {
    **{k: ("load change", "#4b5563") for k in (
        "concurrency", "plan-step", "rate", "pause", "resume", "start", "stop", "plan-start",
        "plan-stop", "plan-paused", "step-size")},
    "panic": ("panic / abort", "#b91c1c"),
    "abort": ("panic / abort", "#b91c1c"),
    "fault": ("fault", "#7c3aed"),
}  # fmt: skip
_OTHER = ("event", "#9ca3af")
_SEVERITY_COLORS = {"critical": "#dc2626", "warning": "#d97706", "info": "#2563eb"}


def _num(v: float | None) -> str:
    if v is None:
        return "–"
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def event_marker(e: ControlEvent, x: float) -> Marker:
    """Any control event, whatever its kind (faults included), as a marker."""
    short = _LOAD_KINDS.get(e.kind, e.kind[:14])
    label = (
        f"{short}→{_num(e.after)}{'/s' if e.kind == 'rate' else ''}"
        if e.after is not None
        else short
    )
    change = (
        f" {_num(e.before)}→{_num(e.after)}" if e.before is not None or e.after is not None else ""
    )
    note = f": {e.note}" if e.note else ""
    title = f"{fmt.clock(x)} {e.kind} by {e.source}{change}{note}"
    group, color = _GROUPS.get(e.kind, _OTHER)
    return Marker(x, e.kind, label, title, color, group, e.after)


def labelled(markers: list[Marker]) -> list[tuple[Marker, bool]]:
    """Each marker, and whether its label is shown: one change often comes as
    two events at once (the plan's step and the concurrency it set), which
    need one label; the concurrency's (`c→4`) is kept."""
    seen: dict[tuple[int, float], int] = {}
    out: list[tuple[Marker, bool]] = []
    for m in markers:
        if m.after is None:
            out.append((m, True))
            continue
        key = (round(m.x * 2), m.after)
        j = seen.get(key)
        if j is None:
            seen[key] = len(out)
            out.append((m, True))
        elif m.kind == "concurrency":
            out[j] = (out[j][0], False)
            seen[key] = len(out)
            out.append((m, True))
        else:
            out.append((m, False))
    return out


class ChartBuilder:
    """Feed ticks in order with `add`, then take `data()`. Keeps at most
    `max_points` buckets of a few floats per scenario."""

    def __init__(self, *, started: float | None = None, max_points: int = MAX_POINTS) -> None:
        self.started = started
        self.max_points = max(4, max_points)
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        # per bucket: [x, seconds, then per scenario: ops, p95, p99 (nan: none)]
        self._buckets: list[list[float]] = []
        self._size = 1  # ticks per bucket
        self._fill = 0  # ticks in the last bucket
        self.markers: list[Marker] = []
        self.markers_dropped = 0
        self._raised: set[str] = set()
        self.ticks = 0
        self.duration = 0.0

    def _slot(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            i = self._index[name] = len(self.names)
            self.names.append(name)
            for b in self._buckets:
                b.extend((math.nan, math.nan, math.nan))
        return i

    def _mark(self, m: Marker) -> None:
        if len(self.markers) < MAX_MARKERS:
            self.markers.append(m)
        else:
            self.markers_dropped += 1

    def add(self, tick: Tick, hists: Sequence[HdrHistogram] | None = None) -> None:
        """Take one tick. `hists`: its windows' histograms already decoded (the
        report's pass decodes each once); default: read from the tick."""
        if self.started is None:
            self.started = tick.t - tick.elapsed
        self.ticks += 1
        self.duration = max(self.duration, tick.elapsed)
        for e in tick.events:
            self._mark(event_marker(e, max(0.0, e.t - self.started)))
        for a in (*tick.anomalies, *tick.cleared):
            if a.key not in self._raised:
                self._raised.add(a.key)
                x = max(0.0, a.started_at - self.started)
                title = (
                    f"{fmt.clock(x)} anomaly {a.kind} ({a.severity}) on {a.subject}: {a.summary}"
                )
                color = _SEVERITY_COLORS.get(a.severity, "#dc2626")
                self._mark(
                    Marker(x, "anomaly", a.kind[:16], title, color, f"anomaly ({a.severity})")
                )
        if tick.is_drain or tick.interval <= 0:
            return  # the in-flight tail after the stop: its rate and percentiles mislead
        hs = hists if hists is not None else window_hists(tick)
        slots = [(self._slot(s.name), s, h) for s, h in zip(tick.scenarios, hs, strict=True)]
        if not self._buckets or self._fill >= self._size:
            if len(self._buckets) >= self.max_points:
                self._halve()  # room for the new bucket, or the last one fills up further
            if not self._buckets or self._fill >= self._size:
                self._buckets.append([tick.elapsed, 0.0] + [math.nan] * (3 * len(self.names)))
                self._fill = 0
        b = self._buckets[-1]
        b[0] = tick.elapsed
        b[1] += tick.interval
        for i, s, h in slots:
            k = 2 + 3 * i
            b[k] = (0.0 if math.isnan(b[k]) else b[k]) + s.completed
            if s.completed:
                p95, p99 = (v / 1000.0 for v in values_at_percentiles(h, (95, 99)))
                b[k + 1] = p95 if math.isnan(b[k + 1]) else max(b[k + 1], p95)
                b[k + 2] = p99 if math.isnan(b[k + 2]) else max(b[k + 2], p99)
        self._fill += 1

    def _halve(self) -> None:
        """Merge neighbouring buckets: sums add, worst percentiles stay."""
        out = []
        bs = self._buckets
        for j in range(0, len(bs) - 1, 2):
            a, b = bs[j], bs[j + 1]
            m = [b[0], a[1] + b[1]]
            for k in range(2, len(a), 3):
                m.append(_add(a[k], b[k]))
                m.append(_max(a[k + 1], b[k + 1]))
                m.append(_max(a[k + 2], b[k + 2]))
            out.append(m)
        if len(bs) % 2:
            out.append(bs[-1])  # holds `_fill` ticks still: it fills up to the new size
        else:
            self._fill = 2 * self._size  # the last bucket is two full ones: full
        self._buckets = out
        self._size *= 2

    def data(self) -> ChartData:
        n = len(self.names)
        ops: dict[str, list[float | None]] = {name: [] for name in self.names}
        p95: dict[str, list[float | None]] = {name: [] for name in self.names}
        p99: dict[str, list[float | None]] = {name: [] for name in self.names}
        for b in self._buckets:
            b = b + [math.nan] * (2 + 3 * n - len(b))
            for i, name in enumerate(self.names):
                k = 2 + 3 * i
                ops[name].append(None if math.isnan(b[k]) else b[k] / b[1])
                p95[name].append(None if math.isnan(b[k + 1]) else b[k + 1])
                p99[name].append(None if math.isnan(b[k + 2]) else b[k + 2])
        return ChartData(
            scenarios=list(self.names),
            xs=[b[0] for b in self._buckets],
            ops=ops,
            p95=p95,
            p99=p99,
            markers=sorted(self.markers, key=lambda m: m.x),
            markers_dropped=self.markers_dropped,
            ticks=self.ticks,
            ticks_per_point=self._size,
            duration=self.duration,
        )


def _add(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else a + b


def _max(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


def chart_data(
    ticks: Iterable[Tick], *, started: float | None = None, max_points: int = MAX_POINTS
) -> ChartData:
    """The chart's data from ticks in order, in one pass."""
    cb = ChartBuilder(started=started, max_points=max_points)
    for t in ticks:
        cb.add(t)
    return cb.data()
