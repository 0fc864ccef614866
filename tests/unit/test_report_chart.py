"""The report's chart: an SVG that parses, holds each series with its points,
human axis labels and a marker per control event and anomaly raised; built in
one pass with bounded buckets; written next to the Markdown and linked."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import fmt
from app.cli import main
from app.session.chart import (
    MAX_POINTS,
    ChartBuilder,
    chart_data,
    tick_label,
)
from app.session.chart_render import render_svg, render_text
from app.session.export import chart_path_for, write_report
from app.session.recording import Recorder, Recording
from app.targets import Redactor
from app.tick import Anomaly, ControlEvent, ScenarioWindow, Tick, new_histogram

NS = {"s": "http://www.w3.org/2000/svg"}
T0 = 1_780_000_000.0


def window(name: str, ops: int, lat_us: int) -> ScenarioWindow:
    h = new_histogram()
    if ops:
        h.record_value(lat_us, ops)
    return ScenarioWindow(name, 1, 1, ops, ops, 0, {}, h)


def session(
    n: int = 30, names: tuple[str, ...] = ("checkout",), *, drain: bool = True
) -> Iterator[Tick]:
    """A ramp 1 -> 4 -> 16 over n one-second ticks, a fault event and an anomaly
    raised in the middle (held for 3 ticks, then cleared), and a drain tick."""
    conc = 1
    for i in range(1, n + 1):
        events: list[ControlEvent] = []
        if i == 1:
            events.append(ControlEvent(T0 + 0.01, "start", "cli", None, 1))
        for at, new in ((n // 3, 4), (2 * n // 3, 16)):
            if i == at:
                events.append(ControlEvent(T0 + i - 0.5, "plan-step", "plan", conc, new, "step"))
                events.append(ControlEvent(T0 + i - 0.5, "concurrency", "plan", conc, new))
                conc = new
        if i == n // 2:
            events.append(ControlEvent(T0 + i - 0.2, "fault", "cli", note="restart postgres"))
        a = Anomaly("latency:checkout", "latency-spike", "warning", "checkout", n // 2 + 1,
                    T0 + n // 2 + 1, "p99 rose 5×")  # fmt: skip
        yield Tick(
            i, T0 + i, float(i), 1.0, "workers", conc, conc,
            scenarios=tuple(window(s, 100 * conc * (k + 1), 1000 * conc) for k, s in enumerate(names)),
            events=tuple(events),
            anomalies=(a,) if n // 2 + 1 <= i < n // 2 + 4 else (),
            cleared=(a,) if i == n // 2 + 4 else (),
        )  # fmt: skip
    if drain:
        yield Tick(
            n + 1, T0 + n + 1.05, n + 0.05, 0.05, "workers", conc, 0,
            scenarios=tuple(window(s, 3, 9_000_000) for s in names),
            events=(ControlEvent(T0 + n + 0.01, "stop", "system", note="plan finished"),),
        )  # fmt: skip


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def points(path: ET.Element) -> list[tuple[float, float]]:
    return [
        (float(x), float(y)) for x, y in re.findall(r"[ML]([\d.]+) ([\d.]+)", path.get("d", ""))
    ]


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_svg_parses_and_holds_each_series_axis_and_marker() -> None:
    data = chart_data(session(30))
    root = parse(render_svg(data, title="loadtop — checkout"))
    series = {
        p.get("data-series"): points(p) for p in root.findall(".//s:path[@class='series']", NS)
    }
    assert set(series) == {"ops/s", "p95", "p99"}
    for name, pts in series.items():
        assert len(pts) == 30, name  # one point per tick; the drain tick is left out
        xs = [x for x, _ in pts]
        assert xs == sorted(xs)
    # throughput steps up with the ramp: a higher value is drawn higher (smaller y)
    ops = series["ops/s"]
    assert ops[0][1] > ops[12][1] > ops[25][1]
    # a drain tick's 9 s tail is not on the chart: the right axis stays in ms
    words = texts(root)
    assert "throughput (ops/s)" in words and "latency (p95, p99)" in words
    assert "elapsed time" in words
    assert "1.6k" in words or "2k" in words  # 1,600 ops/s at the top, written as people read it
    assert any(w.endswith("ms") for w in words) and not any("e+" in w or "e3" in w for w in words)
    assert "00:30" in words  # elapsed time on a clock, as the console's chart writes it
    # every control event (start, 2 plan-steps, 2 concurrency changes, the fault, the stop)
    # and the one anomaly raised (seen on 3 ticks, then cleared) is one marker
    kinds = [g.get("data-kind") for g in root.findall(".//s:g[@class='marker']", NS)]
    assert sorted(kinds) == sorted(
        [
            "start",
            "plan-step",
            "concurrency",
            "plan-step",
            "concurrency",
            "fault",
            "stop",
            "anomaly",
        ]
    )
    # one change, two events (the plan's step, the concurrency it set): one label
    assert "c→4" in words and "c→16" in words and "step→4" not in words
    legend = texts(root.find(".//s:g[@class='legend']", NS))
    assert {"load change", "fault", "anomaly (warning)"} <= set(legend)
    fault = next(
        g for g in root.findall(".//s:g[@class='marker']", NS) if g.get("data-kind") == "fault"
    )
    assert "restart postgres" in (fault.findtext("s:title", namespaces=NS) or "")
    assert fault.find("s:line", NS) is not None
    # self-contained: nothing to fetch or run
    assert root.find(".//s:script", NS) is None
    raw = render_svg(data)
    assert "href" not in raw and "@import" not in raw and "url(" not in raw


def test_several_scenarios_get_a_line_each() -> None:
    odd = 'say "hi" & <bye>'  # a scenario's name is text, never markup
    data = chart_data(session(12, ("checkout", odd)))
    root = parse(render_svg(data, title=f"loadtop — checkout, {odd}"))
    names = {p.get("data-series") for p in root.findall(".//s:path[@class='series']", NS)}
    assert names == {f"{m} {s}" for m in ("ops/s", "p95", "p99") for s in ("checkout", odd)}
    legend = texts(root.find(".//s:g[@class='legend']", NS))
    assert "ops/s checkout" in legend and "p99 checkout" in legend


def test_a_window_without_operations_breaks_the_latency_line() -> None:
    ticks = list(session(10, drain=False))
    paused = [
        Tick(
            t.index,
            t.t,
            t.elapsed,
            1.0,
            "workers",
            0,
            0,
            paused=True,
            scenarios=(window("checkout", 0, 0),),
        )  # fmt: skip
        if 4 <= t.index <= 5
        else t
        for t in ticks
    ]
    root = parse(render_svg(chart_data(paused)))
    p99 = root.find(".//s:path[@data-series='p99']", NS)
    ops = root.find(".//s:path[@data-series='ops/s']", NS)
    assert p99 is not None and ops is not None
    assert p99.get("d", "").count("M") == 2 and len(points(p99)) == 8
    assert len(points(ops)) == 10  # 0 ops/s is a value: throughput drops to the axis


def test_eight_hours_in_one_pass_with_bounded_buckets() -> None:
    n = 8 * 3600
    cb = ChartBuilder()
    most = 0

    def stream() -> Iterator[Tick]:
        for i in range(1, n + 1):
            spike = i == 20_001
            yield Tick(i, T0 + i, float(i), 1.0, "workers", 4, 4,
                       scenarios=(window("s", 250 if i % 2 else 150, 4_000_000 if spike else 2000),))  # fmt: skip

    for t in stream():
        cb.add(t)
        most = max(most, len(cb._buckets))
    data = cb.data()
    assert most <= MAX_POINTS
    assert MAX_POINTS // 2 <= len(data.xs) <= MAX_POINTS
    assert data.ticks == n and data.ticks_per_point == 64
    steps = {b - a for a, b in zip(data.xs, data.xs[1:-1], strict=False)}
    assert steps == {64.0}  # every bucket but the last holds the same number of ticks
    # throughput is the mean over each bucket: 200 ops/s exactly
    assert {round(v or 0, 6) for v in data.ops["s"]} == {200.0}
    # the worst tick survives the merging: one bucket holds the 4 s spike
    p99 = [v for v in data.p99["s"] if v is not None]
    assert max(p99) == pytest.approx(4000, rel=1e-3) and sorted(p99)[-2] < 3
    root = parse(render_svg(data))
    assert len(points(root.find(".//s:path[@data-series='p99']", NS))) == len(data.xs)
    assert "8:00:00" in texts(root)
    # the text chart groups points the same way: the spike is still its top
    text = render_text(data)
    assert "worst p99" in text and "4s" in text


@pytest.mark.parametrize("max_points", [5, 6, 7])
def test_buckets_stay_even_whatever_the_limit(max_points: int) -> None:
    data = chart_data(session(100, drain=False), max_points=max_points)
    size = data.ticks_per_point
    assert len(data.xs) <= max_points
    assert all(b - a == size for a, b in zip(data.xs, data.xs[1:-1], strict=False)), data.xs
    assert data.xs[-1] == 100 and data.xs[-1] - data.xs[-2] <= size


def test_text_chart_is_plain_with_human_axes() -> None:
    text = render_text(chart_data(session(30)))
    assert "\x1b[" not in text
    assert "┊" in text  # events as dotted vertical lines
    assert "1.6k" in text or "2k" in text
    assert "ms" in text and "e3" not in text and "e+" not in text
    assert len(text.splitlines()) == 16


def test_axis_labels_are_app_fmt_without_trailing_zeros() -> None:
    assert [tick_label(fmt.rate(v)) for v in (0, 950, 2000, 12_345, 1_500_000)] == [
        "0", "950", "2k", "12.3k", "1.5M"]  # fmt: skip
    assert [tick_label(fmt.ms(v)) for v in (0.5, 2.0, 2.5, 1000, 1500)] == [
        "500µs", "2ms", "2.5ms", "1s", "1.5s"]  # fmt: skip


def _record(path: Path, ticks: list[Tick]) -> None:
    r = Recorder(path, {"run_id": "chart", "started": T0, "scenarios": [{"name": "checkout"}]})
    for t in ticks:
        r.write_tick(t)
    r.close({"reason": "plan finished"})


def test_report_writes_the_svg_next_to_the_markdown_and_links_it(tmp_path: Path, capsys) -> None:
    rec = tmp_path / "F.jsonl"
    _record(rec, list(session(20)))
    md = tmp_path / "F.md"
    assert main(["report", str(rec), "-o", str(md)]) == 0
    svg = tmp_path / "F.svg"
    assert svg.exists()
    root = parse(svg.read_text())
    assert len(root.findall(".//s:path[@class='series']", NS)) == 3
    text = md.read_text()
    assert "![Throughput and latency over the session, each change marked](F.svg)" in text
    assert "```text\n" in text and "ops/s ⠒ left" in text
    assert text.index("## Chart") < text.index("## Run")
    capsys.readouterr()
    # to stdout: no file, no link; the text chart is still there
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["report", str(rec)]) == 0
    out = capsys.readouterr().out
    assert "## Chart" in out and "F.svg" not in out and "](" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # JSON: unchanged, no chart written
    assert main(["report", str(rec), "--json", "-o", str(tmp_path / "G.json")]) == 0
    assert not (tmp_path / "G.svg").exists()
    assert "chart" not in json.loads((tmp_path / "G.json").read_text())


def test_the_svg_is_masked_and_a_chart_that_cannot_be_written_is_said(tmp_path: Path) -> None:
    ticks = list(session(10))
    leak = ControlEvent(T0 + 3, "fault", "cli", note="reconnect postgresql://app:hunter22@db/x")
    ticks[3] = Tick(**{**{f: getattr(ticks[3], f) for f in ticks[3].__slots__}, "events": (leak,)})
    rec = Recording(header={"started": T0}, ticks=ticks)
    red = Redactor()
    red.add("hunter22")
    write_report(rec, str(tmp_path / "r.md"), redactor=red)
    svg = (tmp_path / "r.svg").read_text()
    assert "hunter22" not in svg and "postgresql://app:***@db/x" in svg
    # the chart's path is taken by a directory: the report is written and says so
    (tmp_path / "q.svg").mkdir()
    write_report(rec, str(tmp_path / "q.md"))
    text = (tmp_path / "q.md").read_text()
    assert "The chart could not be written to q.svg" in text and "](q.svg)" not in text


def test_chart_path_is_next_to_the_report_and_only_for_files(tmp_path: Path) -> None:
    assert chart_path_for(tmp_path / "F.md") == tmp_path / "F.svg"
    assert chart_path_for(tmp_path / "report") == tmp_path / "report.svg"
    assert chart_path_for(tmp_path / "F.svg") == tmp_path / "F.chart.svg"
    assert chart_path_for("/dev/null") is None  # no "next to" a device


def test_a_session_without_load_has_no_chart(tmp_path: Path) -> None:
    """`loadtop watch --export`: probes only, nothing to plot, no empty picture."""
    ticks = [Tick(i, T0 + i, float(i), 1.0, "workers", 0, 0) for i in range(1, 6)]
    write_report(Recording(header={"started": T0}, ticks=ticks), str(tmp_path / "w.md"))
    assert (tmp_path / "w.md").exists() and not (tmp_path / "w.svg").exists()
    assert "## Chart" not in (tmp_path / "w.md").read_text()
