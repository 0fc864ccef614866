"""The one report writer: render a recording (Markdown or JSON), mask every
secret, write it. Used by `loadtop report -o`, `--export` at the end of a
run, watch or demo, and the console's `e` key (live and replay).

A Markdown report written to a file gets its chart next to it (`F.md` ->
`F.svg`), linked from the Markdown; the Markdown also carries a small text
chart for places that do not show images. The JSON report is unchanged."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from app.session.chart import ChartData, chart_data, labelled, time_label
from app.session.chart_render import render_svg, render_text
from app.session.recording import Recording
from app.session.report import render_json, render_markdown
from app.targets import Redactor

CHART_ALT = "Throughput and latency over the session, each change marked"


def report_chart(rec: Recording) -> ChartData:
    """The chart's data, in one pass over the recording's ticks."""
    return chart_data(rec.ticks)


def chart_title(rec: Recording, data: ChartData) -> str:
    """`loadtop — checkout, browse · 2026-11-30 03:12 UTC · 5m`."""
    parts = [f"loadtop — {', '.join(data.scenarios) or 'session'}"]
    started = rec.header.get("started")
    if isinstance(started, int | float):
        parts.append(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)))
    parts.append(time_label(data.duration))
    return " · ".join(parts)


def chart_section(data: ChartData, link: str | None = None, note: str = "") -> str:
    """The Markdown chart section: the SVG link (when one was written), the
    text chart, and the marked events in words. Empty without ticks."""
    if data.empty:
        return ""
    out = ["## Chart", ""]
    if link:
        out += [f"![{CHART_ALT}]({link})", ""]
    if note:
        out += [note, ""]
    out += ["```text", render_text(data), "```", ""]
    if data.markers:
        named = [m for m, show in labelled(data.markers) if show]
        shown = named[:16]
        more = len(named) - len(shown) + data.markers_dropped
        marks = " · ".join(f"{time_label(m.x) if m.x >= 0.5 else '0s'} {m.label}" for m in shown)
        out.append(f"Marked: {marks}" + (f" · and {more} more" if more else ""))
        out.append("")
    return "\n".join(out).rstrip("\n")


def chart_path_for(path: str | os.PathLike[str]) -> Path | None:
    """Where the SVG of a report written to `path` goes: the same name with
    `.svg`. None when the report does not go to a regular file (a device or
    a pipe: `-o /dev/stdout`), where there is no "next to it"."""
    p = Path(path)
    try:
        if p.exists() and not stat.S_ISREG(p.stat().st_mode):
            return None
    except OSError:
        return None
    svg = p.with_suffix(".svg")
    return svg if svg != p else p.with_suffix(".chart.svg")


def render_report(
    rec: Recording,
    *,
    json: bool = False,
    redactor: Callable[[str], str] | None = None,
    chart: str | None = None,
) -> str:
    """The report's text, masked by `redactor` (default: the generic masks).
    `chart`: the Markdown chart section (default: the text chart, no link)."""
    if json:
        text = render_json(rec)
    else:
        if chart is None:
            chart = chart_section(report_chart(rec))
        text = render_markdown(rec, chart=chart)
    return (redactor or Redactor())(text)


def write_report(
    rec: Recording,
    path: str,
    *,
    json: bool = False,
    redactor: Callable[[str], str] | None = None,
) -> str:
    """Render, mask and write the report to `path` (and, for Markdown, its
    SVG chart next to it); returns `path`. An OSError writing the report (a
    directory, no permission, a full disk) is the caller's to word; one
    writing the chart is said in the report, which is still written."""
    mask = redactor or Redactor()
    chart = None
    if not json:
        data = report_chart(rec)
        link, note = None, ""
        svg_path = chart_path_for(path) if not data.empty else None
        if svg_path is not None:
            try:
                svg_path.write_text(mask(render_svg(data, title=chart_title(rec, data))), "utf-8")
                link = svg_path.name
            except OSError as e:
                note = f"(The chart could not be written to {svg_path.name}: {e.strerror}.)"
        chart = chart_section(data, link, note)
    text = render_report(rec, json=json, redactor=mask, chart=chart)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
