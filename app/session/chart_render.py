"""The report's chart drawn two ways, from one `ChartData`:

- `render_svg`: a self-contained SVG (no script, no external font, text as
  <text>, a white background) that GitHub and browsers show as is: throughput
  on the left axis, p95/p99 on the right, one line per scenario and metric,
  a dashed vertical line per marker with a short label above the plot;
- `render_text`: a small plotext chart for the Markdown's fenced block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

from app import fmt
from app.session.chart import ChartData, labelled, tick_label


def nice_ticks(hi: float, n: int = 5) -> list[float]:
    """About `n` round values (1, 2, 2.5 or 5 × 10^k apart) from 0 to >= hi."""
    hi = hi if hi > 0 and math.isfinite(hi) else 1.0
    raw = hi / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)
    top = math.ceil(hi / step - 1e-9)
    return [round(k * step, 9) for k in range(top + 1)]


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
        o.append(_text(x0 - 6, y + 4, tick_label(fmt.rate(v)), anchor="end"))
    o.append(_text(16, (y0 + y1) / 2, "throughput (ops/s)", anchor="middle", color="#1f2937",
                   extra=f' transform="rotate(-90 16 {_f((y0 + y1) / 2)})"'))  # fmt: skip
    o.append("</g>")
    o.append('<g class="axis" data-axis="right">')
    for v in right:
        y = Y(v, right)
        o.append(f'<line x1="{x1}" y1="{_f(y)}" x2="{x1 + 4}" y2="{_f(y)}" stroke="#9ca3af"/>')
        o.append(_text(x1 + 6, y + 4, tick_label(fmt.ms(v)) if v else "0"))
    xr = width - 14
    o.append(_text(xr, (y0 + y1) / 2, "latency (p95, p99)", anchor="middle", color="#1f2937",
                   extra=f' transform="rotate(90 {xr} {_f((y0 + y1) / 2)})"'))  # fmt: skip
    o.append("</g>")
    o.append('<g class="axis" data-axis="x">')
    for v in fmt.time_ticks(0, span, 8):
        x = X(v)
        o.append(f'<line x1="{_f(x)}" y1="{y1}" x2="{_f(x)}" y2="{y1 + 4}" stroke="#9ca3af"/>')
        o.append(_text(x, y1 + 17, fmt.clock(v), anchor="middle"))
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
        for xv, val in zip(data.xs, s.values, strict=True):
            if val is None:
                pen = "M"
                continue
            d.append(f"{pen}{_f(X(xv))} {_f(Y(val, ticks))}")
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
    f.ruler("y", "left").ticks(top, [tick_label(fmt.rate(v)) for v in top]).lim(0, top[-1])
    if lat:
        rt = nice_ticks(max(v for _, v in lat), 4)
        f.ruler("y", "right").ticks(rt, [tick_label(fmt.ms(v)) if v else "0" for v in rt]).lim(
            0, rt[-1]
        )
    span = max(data.duration, xs[-1], 1.0)
    xt = fmt.time_ticks(0, span, 6)
    f.ruler("x").ticks(xt, [fmt.clock(v) for v in xt]).lim(0, span)
    for m in data.markers[:40]:
        if m.x <= span:
            f.line(round(m.x, 3), "v", style="dotted")
    every = " (all scenarios)" if len(data.scenarios) > 1 else ""
    worst = "worst " if every or data.ticks_per_point > 1 or step > 1 else ""
    f.title(f"ops/s{every} ⠒ left · {worst}p99 • right · ┊ event")
    text = f.build().string(True)
    return "\n".join(line.rstrip() for line in text.splitlines())
