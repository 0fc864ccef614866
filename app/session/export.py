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
from collections.abc import Callable, Sequence
from pathlib import Path

from hdrh.histogram import HdrHistogram

from app import fmt
from app.session.chart import ChartBuilder, ChartData, labelled
from app.session.chart_render import render_svg, render_text
from app.session.recording import Recording
from app.session.report import render_json, render_markdown
from app.targets import Redactor
from app.tick import Tick

CHART_ALT = "Throughput and latency over the session, each change marked"


def chart_title(rec: Recording, data: ChartData) -> str:
    """`loadtop — checkout, browse · 2026-11-30 03:12 UTC · 5m`."""
    parts = [f"loadtop — {', '.join(data.scenarios) or 'session'}"]
    started = rec.header.get("started")
    if isinstance(started, int | float):
        parts.append(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)))
    parts.append(fmt.seconds(data.duration))
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
        marks = " · ".join(f"{fmt.clock(m.x)} {m.label}" for m in shown)
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


class ChartSection:
    """The report's chart section, fed in the report's one pass over the
    ticks (`app.session.report.TickSection`). With `svg_path`, `markdown()`
    writes the SVG there (masked) and links it; without, it is the text
    chart alone (a report printed to stdout writes no file)."""

    def __init__(
        self,
        rec: Recording,
        svg_path: Path | None = None,
        mask: Callable[[str], str] = str,
    ) -> None:
        self.rec = rec
        self.svg_path = svg_path
        self.mask = mask
        self.builder = ChartBuilder()
        self.written: Path | None = None

    def add(self, tick: Tick, hists: Sequence[HdrHistogram]) -> None:
        self.builder.add(tick, hists)

    def markdown(self) -> str:
        data = self.builder.data()
        link, note = None, ""
        if self.svg_path is not None and not data.empty:
            try:
                svg = self.mask(render_svg(data, title=chart_title(self.rec, data)))
                self.svg_path.write_text(svg, "utf-8")
                self.written, link = self.svg_path, self.svg_path.name
            except OSError as e:
                note = f"(The chart could not be written to {self.svg_path.name}: {e.strerror}.)"
        return chart_section(data, link, note)


def render_report(
    rec: Recording,
    *,
    json: bool = False,
    redactor: Callable[[str], str] | None = None,
    chart: ChartSection | None = None,
) -> str:
    """The report's text, masked by `redactor` (default: the generic masks).
    `chart`: the chart section (default: the text chart, no SVG)."""
    mask = redactor or Redactor()
    if json:
        text = render_json(rec)
    else:
        text = render_markdown(rec, chart=chart or ChartSection(rec, None, mask))
    return mask(text)


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
    chart = None if json else ChartSection(rec, chart_path_for(path), mask)
    text = render_report(rec, json=json, redactor=mask, chart=chart)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
