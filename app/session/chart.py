"""The report's chart: throughput and latency over the session, with every
control event and every anomaly raised marked by a vertical line.

Two renderings of one `ChartData`: a self-contained SVG (no script, no
external font, text as <text>; readable on GitHub and in a browser) written
next to the Markdown report, and a small plotext text chart embedded in it.

The data is built in ONE pass over an iterable of ticks (a recording may be
streamed from disk), keeping a few floats per bucket: when there are more
than `max_points` buckets, neighbours are merged pairwise, so an 8-hour
recording (28,800 ticks) costs what a 10-minute one does. A bucket's
throughput is its operations over its seconds (the mean rate); its p95 and
p99 are the worst tick's (a spike is not averaged away). No textual import:
this is the session layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from app.tick import ControlEvent, Tick, values_at_percentiles

MAX_POINTS = 480  # buckets kept while reading; merged pairwise beyond this
MAX_MARKERS = 200  # vertical lines drawn; the rest are counted in the legend

# ---- numbers a person reads (until app/fmt.py lands on main) ---------------


def fmt_rate(v: float) -> str:
    """Operations per second: `950`, `12.3k`, `1.2M`."""
    a = abs(v)
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if a >= div * 0.9995:
            return f"{v / div:.{1 if a / div < 100 else 0}f}{unit}"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.{2 if a < 10 else 1 if a < 100 else 0}f}"


def fmt_ms(v: float) -> str:
    """A duration in ms: `950µs`, `12.3ms`, `1.2s`, `2m03s`."""
    if v <= 0:
        return "0ms"
    if v < 1:
        return f"{v * 1000:.0f}µs"
    if v < 999.5:
        return f"{v:.{2 if v < 10 else 1 if v < 100 else 0}f}ms"
    s = v / 1000
    if s < 59.95:
        return f"{s:.1f}s"
    m, sec = divmod(round(s), 60)
    return f"{m}m{sec:02d}s"


def tick_label(s: str) -> str:
    """An axis tick without trailing zeros: `2.0k` -> `2k`, `2.50ms` -> `2.5ms`."""
    m = re.fullmatch(r"(-?\d+)\.(\d+)(\D*)", s)
    if not m:
        return s
    frac = m[2].rstrip("0")
    return f"{m[1]}.{frac}{m[3]}" if frac else f"{m[1]}{m[3]}"


def time_label(s: float) -> str:
    """Elapsed seconds on the x axis: `0`, `45s`, `2m`, `2m30s`, `1h`, `1h30m`."""
    t = round(s)
    if t == 0:
        return "0"
    h, rem = divmod(t, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    if m:
        return f"{m}m{sec:02d}s" if sec else f"{m}m"
    return f"{sec}s"


def nice_ticks(hi: float, n: int = 5) -> list[float]:
    """About `n` round values (1, 2, 2.5 or 5 × 10^k apart) from 0 to >= hi."""
    hi = hi if hi > 0 and math.isfinite(hi) else 1.0
    raw = hi / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)
    top = math.ceil(hi / step - 1e-9)
    return [round(k * step, 9) for k in range(top + 1)]


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200)


def time_ticks(hi: float, n: int = 8) -> list[float]:
    """About `n` positions from 0 to hi seconds, a round clock interval apart."""
    hi = hi if hi > 0 else 1.0
    raw = hi / max(1, n - 1)
    step = next((s for s in _TIME_STEPS if s >= raw), 86400 * math.ceil(raw / 86400))
    return [k * step for k in range(int(hi // step) + 1)]


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
    title = f"{time_label(x)} {e.kind} by {e.source}{change}{note}"
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

    def add(self, tick: Tick) -> None:
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
                    f"{time_label(x)} anomaly {a.kind} ({a.severity}) on {a.subject}: {a.summary}"
                )
                color = _SEVERITY_COLORS.get(a.severity, "#dc2626")
                self._mark(
                    Marker(x, "anomaly", a.kind[:16], title, color, f"anomaly ({a.severity})")
                )
        if tick.is_drain or tick.interval <= 0:
            return  # the in-flight tail after the stop: its rate and percentiles mislead
        slots = [(self._slot(s.name), s) for s in tick.scenarios]
        if not self._buckets or self._fill >= self._size:
            if len(self._buckets) >= self.max_points:
                self._halve()  # room for the new bucket, or the last one fills up further
            if not self._buckets or self._fill >= self._size:
                self._buckets.append([tick.elapsed, 0.0] + [math.nan] * (3 * len(self.names)))
                self._fill = 0
        b = self._buckets[-1]
        b[0] = tick.elapsed
        b[1] += tick.interval
        for i, s in slots:
            k = 2 + 3 * i
            b[k] = (0.0 if math.isnan(b[k]) else b[k]) + s.completed
            if s.completed:
                p95, p99 = (v / 1000.0 for v in values_at_percentiles(s.hist, (95, 99)))
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


# ---- the SVG ---------------------------------------------------------------

FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif"
PALETTE = ("#2563eb", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#4b5563")
SINGLE = {"ops/s": "#2563eb", "p95": "#f59e0b", "p99": "#dc2626"}
DASH = {"ops/s": "", "p95": "6 3", "p99": "2 2"}
LABEL_ROWS = 3
CHAR_W = 6.2  # an estimate of a 10.5 px sans-serif character's width


@dataclass(frozen=True, slots=True)
class Series:
    metric: str  # "ops/s" | "p95" | "p99"
    scenario: str
    values: list[float | None]
    color: str
    dash: str

    @property
    def name(self) -> str:
        return self.metric if not self.scenario else f"{self.metric} {self.scenario}"


def series_of(data: ChartData) -> list[Series]:
    """The lines to draw: ops/s, p95, p99 for the one scenario, or for each
    of several (colour = scenario, dash = metric)."""
    many = len(data.scenarios) > 1
    out = []
    for i, name in enumerate(data.scenarios):
        for metric, values in (("ops/s", data.ops), ("p95", data.p95), ("p99", data.p99)):
            color = PALETTE[i % len(PALETTE)] if many else SINGLE[metric]
            dash = DASH[metric] if many else ""
            out.append(Series(metric, name if many else "", values[name], color, dash))
    return out


def _attr(s: str) -> str:
    """Text for a double-quoted attribute value."""
    return escape(s, {'"': "&quot;"})


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, s: str, *, size: float = 11, anchor: str = "start",
          color: str = "#374151", weight: str = "normal", extra: str = "") -> str:  # fmt: skip
    w = f' font-weight="{weight}"' if weight != "normal" else ""
    return (f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}"'
            f' fill="{color}"{w}{extra}>{escape(s)}</text>')  # fmt: skip


def render_svg(data: ChartData, *, title: str = "", width: int = 960, height: int = 440) -> str:
    """The chart as a standalone SVG document (a string)."""
    series = series_of(data)
    legend = [(s.name, s.color, s.dash) for s in series]
    groups = dict.fromkeys((m.group, m.color) for m in data.markers)
    legend += [(g, c, "3 3") for g, c in groups]
    per_row = max(1, (width - 80) // 150)
    legend_rows = max(1, math.ceil(len(legend) / per_row))
    L, R, T = 72, 72, 34 + LABEL_ROWS * 13
    H = height + legend_rows * 18
    x0, x1, y0, y1 = L, width - R, T, height - 66
    span = max(data.duration, data.xs[-1] if data.xs else 0.0, 1.0)

    def X(v: float) -> float:
        return x0 + (x1 - x0) * v / span

    ops_max = max((v for s in series if s.metric == "ops/s" for v in s.values if v), default=0)
    lat_max = max((v for s in series if s.metric != "ops/s" for v in s.values if v), default=0)
    left, right = nice_ticks(ops_max), nice_ticks(lat_max)

    def Y(v: float, ticks: list[float]) -> float:
        return y1 - (y1 - y0) * v / ticks[-1]

    o: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}"'
        f' viewBox="0 0 {width} {H}" font-family="{_attr(FONT)}" role="img">',
        f"<title>{escape(title or 'loadtop session chart')}</title>",
        f'<rect x="0" y="0" width="{width}" height="{H}" fill="#ffffff"/>',
        _text(x0, 20, title, size=14, color="#111827", weight="bold"),
    ]
    if data.ticks_per_point > 1:
        o.append(_text(x1, 20, f"each point: {data.ticks_per_point} ticks · ops/s mean,"
                       " p95/p99 worst", size=10, anchor="end", color="#6b7280"))  # fmt: skip
    # axes and grid
    o.append('<g class="axis" data-axis="left">')
    for v in left:
        y = Y(v, left)
        o.append(f'<line x1="{x0}" y1="{_f(y)}" x2="{x1}" y2="{_f(y)}" stroke="#e5e7eb"/>')
        o.append(_text(x0 - 6, y + 4, tick_label(fmt_rate(v)), anchor="end"))
    o.append(_text(16, (y0 + y1) / 2, "throughput (ops/s)", anchor="middle", color="#1f2937",
                   extra=f' transform="rotate(-90 16 {_f((y0 + y1) / 2)})"'))  # fmt: skip
    o.append("</g>")
    o.append('<g class="axis" data-axis="right">')
    for v in right:
        y = Y(v, right)
        o.append(f'<line x1="{x1}" y1="{_f(y)}" x2="{x1 + 4}" y2="{_f(y)}" stroke="#9ca3af"/>')
        o.append(_text(x1 + 6, y + 4, tick_label(fmt_ms(v)) if v else "0"))
    xr = width - 14
    o.append(_text(xr, (y0 + y1) / 2, "latency (p95, p99)", anchor="middle", color="#1f2937",
                   extra=f' transform="rotate(90 {xr} {_f((y0 + y1) / 2)})"'))  # fmt: skip
    o.append("</g>")
    o.append('<g class="axis" data-axis="x">')
    for v in time_ticks(span):
        x = X(v)
        o.append(f'<line x1="{_f(x)}" y1="{y1}" x2="{_f(x)}" y2="{y1 + 4}" stroke="#9ca3af"/>')
        o.append(_text(x, y1 + 17, time_label(v), anchor="middle"))
    o.append(_text((x0 + x1) / 2, y1 + 34, "elapsed time", anchor="middle", color="#1f2937"))
    o.append("</g>")
    o.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none"'
             ' stroke="#9ca3af"/>')  # fmt: skip
    if data.empty:
        o.append(_text((x0 + x1) / 2, (y0 + y1) / 2, "no ticks recorded", anchor="middle"))
    # markers: a line each; labels in rows above the plot, left out where they would overlap
    ends = [-1e9] * LABEL_ROWS
    for m, show in labelled(data.markers):
        x = X(min(m.x, span))
        o.append(f'<g class="marker" data-kind="{_attr(m.kind)}"><title>{escape(m.title)}</title>')
        o.append(f'<line x1="{_f(x)}" y1="{y0}" x2="{_f(x)}" y2="{y1}" stroke="{m.color}"'
                 ' stroke-width="1" stroke-dasharray="3 3"/>')  # fmt: skip
        w = CHAR_W * len(m.label)
        lx = min(x + 2, x1 - w)
        row = next((r for r in range(LABEL_ROWS) if ends[r] < lx), None) if show else None
        if row is not None:
            ends[row] = lx + w + 4
            o.append(_text(lx, y0 - 4 - row * 13, m.label, size=10.5, color=m.color))
        o.append("</g>")
    # the series, one <path> each; a bucket with no value breaks the line
    for s in series:
        ticks = left if s.metric == "ops/s" else right
        d, pen = [], "M"
        for xv, v in zip(data.xs, s.values, strict=True):
            if v is None:
                pen = "M"
                continue
            d.append(f"{pen}{_f(X(xv))} {_f(Y(v, ticks))}")
            pen = "L"
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        width_ = 2 if s.metric == "ops/s" else 1.5
        o.append(f'<path class="series" data-series="{_attr(s.name)}" d="{" ".join(d)}"'
                 f' fill="none" stroke="{s.color}" stroke-width="{width_}"{dash}'
                 f' stroke-linejoin="round"><title>{escape(s.name)}</title></path>')  # fmt: skip
    # legend
    o.append('<g class="legend">')
    for i, (name, color, dash) in enumerate(legend):
        lx = x0 + (i % per_row) * 150
        ly = height - 8 + (i // per_row) * 18
        da = f' stroke-dasharray="{dash}"' if dash else ""
        o.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 22}" y2="{ly - 4}" stroke="{color}"'
                 f' stroke-width="2"{da}/>')  # fmt: skip
        o.append(_text(lx + 28, ly, name[:22]))
    if data.markers_dropped:
        o.append(_text(x1, height - 8 + legend_rows * 18, f"+{data.markers_dropped} events"
                       " not marked", size=10, anchor="end", color="#6b7280"))  # fmt: skip
    o.append("</g>")
    o.append("</svg>")
    return "\n".join(o) + "\n"


# ---- the text chart ---------------------------------------------------------


def render_text(data: ChartData, *, width: int = 76, height: int = 16) -> str:
    """A small plain-text chart (plotext, no colour): ops/s of all scenarios
    on the left axis, their worst p99 on the right, events as dotted lines.
    Uses its own plotext figure: safe off the UI thread."""
    import plotext as plt

    term = type(plt.terminal)()  # a figure of our own, not the console's module-level one
    term.limit(False, False)
    f = term._master
    f.plot_size(width, height)
    f.theme("colorless")
    pts = [
        (x, sum(v or 0.0 for v in ops), max((v for v in p99 if v is not None), default=None))
        for x, ops, p99 in zip(
            data.xs,
            zip(*data.ops.values(), strict=True),
            zip(*data.p99.values(), strict=True),
            strict=True,
        )
    ]
    if len(pts) < 2:
        return "(too few ticks for a chart)"
    step = -(-len(pts) // (2 * width))  # braille: two points a column at most
    if step > 1:  # group as the buckets do: mean ops/s, worst p99
        groups = [pts[i : i + step] for i in range(0, len(pts), step)]
        pts = [
            (g[-1][0], sum(p[1] for p in g) / len(g),
             max((p[2] for p in g if p[2] is not None), default=None))
            for g in groups
        ]  # fmt: skip
    xs = [round(p[0], 3) for p in pts]
    f.draw(f.signal(xs, [p[1] for p in pts], marker="braille").lines())
    lat = [(x, p[2]) for x, p in zip(xs, pts, strict=True) if p[2] is not None]
    if lat:
        f.draw(
            f.signal([x for x, _ in lat], [v for _, v in lat], marker="•", yside="right").lines()
        )
    # human axis labels (plotext would write 5.2e3)
    top = nice_ticks(max(p[1] for p in pts), 4)
    f.ruler("y", "left").ticks(top, [tick_label(fmt_rate(v)) for v in top]).lim(0, top[-1])
    if lat:
        rt = nice_ticks(max(v for _, v in lat), 4)
        f.ruler("y", "right").ticks(rt, [tick_label(fmt_ms(v)) if v else "0" for v in rt]).lim(
            0, rt[-1]
        )
    span = max(data.duration, xs[-1], 1.0)
    xt = time_ticks(span, 6)
    f.ruler("x").ticks(xt, [time_label(v) for v in xt]).lim(0, span)
    for m in data.markers[:40]:
        if m.x <= span:
            f.line(round(m.x, 3), "v", style="dotted")
    every = " (all scenarios)" if len(data.scenarios) > 1 else ""
    worst = "worst " if every or data.ticks_per_point > 1 or step > 1 else ""
    f.title(f"ops/s{every} ⠒ left · {worst}p99 • right · ┊ event")
    text = f.build().string(True)
    return "\n".join(line.rstrip() for line in text.splitlines())
