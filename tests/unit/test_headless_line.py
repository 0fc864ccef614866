"""The headless line's throughput (issue 13): ops/s is completed operations per
second, as in the report; when some failed, the successful rate is shown
beside it, so failures are never read as throughput."""

from __future__ import annotations

import dataclasses

import pytest

from app.frontends.headless import headless_printer
from app.session.recording import Recording
from app.session.report import render_markdown
from app.session.runner import RunConfig
from tests.unit.ticks import make_recording, tick, window


def test_ok_per_second_is_shown_apart_when_operations_fail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = headless_printer(RunConfig(scenarios=[]))
    clean = tick(0, concurrency=2, ops_per_worker=500)  # 1000 ops in 1 s, none failed
    failing = dataclasses.replace(clean, scenarios=(window("sleepy", 2, ops=1000, failed=400),))
    line(clean)
    line(failing)
    a, b = capsys.readouterr().out.splitlines()
    assert "1.0k ops/s" in a and "ok/s" not in a, a
    assert "1.0k ops/s (600 ok/s)" in b, b
    assert "err 40.00%" in b, b


def test_report_headline_says_the_successful_rate_too() -> None:
    rec = make_recording(probes=False, anomalies=False)
    ticks = [
        dataclasses.replace(t, scenarios=(window("stock-reservation", 2, ops=100, failed=25),))
        for t in rec.ticks
    ]
    md = render_markdown(Recording(header=rec.header, ticks=ticks, end=rec.end))
    head = next(ln for ln in md.splitlines() if "ops/s overall" in ln)
    n = len(ticks)
    assert head.startswith(f"{100 * n:,} operations"), head
    assert "ops/s overall (" in head and " ok/s)," in head, head
    ok_s = float(head.split("ops/s overall (")[1].split(" ok/s")[0])
    total_s = float(head.split(" operations, ")[1].split(" ops/s")[0])
    assert ok_s == pytest.approx(0.75 * total_s, rel=0.02), head
