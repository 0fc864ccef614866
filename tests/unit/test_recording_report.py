"""Recording round trip, truncated recordings, and the report's figures from a
known timeline (merged histograms, never averaged percentiles)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.session.recording import Recorder, Recording, RecordingError, read_recording
from app.session.report import build_summary, render_markdown
from app.tick import (
    ControlEvent,
    Reading,
    ScenarioWindow,
    Tick,
    merge_histograms,
    new_histogram,
    steps,
    tick_from_json,
    tick_to_json,
)


def _tick(i: int, conc: int, values_us: list[int], failed: int = 0, events=()) -> Tick:
    h = new_histogram()
    for v in values_us:
        h.record_value(v)
    win = ScenarioWindow(
        name="s", concurrency=conc, target=conc, started=len(values_us) + failed,
        ok=len(values_us), failed=failed, errors={"40P01 deadlock": failed} if failed else {},
        hist=h,
    )  # fmt: skip
    return Tick(
        index=i, t=1_700_000_000.0 + i + 1, elapsed=i + 1.0, interval=1.0, mode="workers",
        target_concurrency=conc, concurrency=conc, scenarios=(win,), events=tuple(events),
        readings={"postgres": Reading("postgres", 1.0, True, 2.5, {"connections": 3})},
    )  # fmt: skip


def test_merged_histogram_equals_histogram_of_all_values() -> None:
    parts = [list(range(1, 5000, 7)), list(range(100, 90_000, 13)), [5_000_000, 7]]
    merged = merge_histograms(_tick(i, 1, p).scenarios[0].hist for i, p in enumerate(parts))
    whole = new_histogram()
    for p in parts:
        for v in p:
            whole.record_value(v)
    for q in (50, 90, 95, 99, 99.9, 100):
        assert merged.get_value_at_percentile(q) == whole.get_value_at_percentile(q)
    assert merged.get_total_count() == whole.get_total_count()


def test_tick_json_round_trip_keeps_histograms_exact() -> None:
    t = _tick(3, 4, list(range(10, 20_000, 3)), failed=2,
              events=[ControlEvent(5.0, "concurrency", "key", 2, 4)])  # fmt: skip
    back = tick_from_json(json.loads(json.dumps(tick_to_json(t))))
    assert back.index == 3 and back.events[0].after == 4
    assert back.scenarios[0].errors == {"40P01 deadlock": 2}
    a, b = t.scenarios[0].hist, back.scenarios[0].hist
    assert a.get_total_count() == b.get_total_count()
    assert a.get_value_at_percentile(99) == b.get_value_at_percentile(99)
    assert back.readings["postgres"].data == {"connections": 3}


def test_recorder_round_trip_and_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    rec = Recorder(path, {"run_id": "x", "targets": {}})
    for i in range(5):
        rec.write_tick(_tick(i, 2, [1000 + i]))
    # a killed run: no end line, and the tick in progress cut off mid-line
    rec.close_quietly()
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:40])
    back = read_recording(path)
    assert len(back.ticks) == 5 and back.truncated and back.end is None
    md = render_markdown(back)
    assert "killed run" in md


def test_corrupted_middle_line_and_future_version_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    rec = Recorder(path, {"run_id": "x"})
    for i in range(3):
        rec.write_tick(_tick(i, 1, [10]))
    rec.close({"reason": "test"})
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:30] + "garbage"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordingError, match="line 3 is corrupted"):
        read_recording(bad)
    future = tmp_path / "future.jsonl"
    header = json.loads(lines[0])
    header["version"] = 99
    future.write_text(json.dumps(header) + "\n")
    with pytest.raises(RecordingError, match="newer loadtop"):
        read_recording(future)


def test_unwritable_recording_path_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="does not exist"):
        Recorder(tmp_path / "nope" / "r.jsonl", {})
    with pytest.raises(RecordingError, match="directory"):
        Recorder(tmp_path, {})


def test_report_step_table_from_a_known_recording(tmp_path: Path) -> None:
    # step 1: two ticks at c=1, 1..1000 ms; step 2: two ticks at c=4, 2..2000 ms + errors
    ticks = [
        _tick(0, 1, [v * 1000 for v in range(1, 501)]),
        _tick(1, 1, [v * 1000 for v in range(501, 1001)]),
        _tick(2, 4, [v * 2000 for v in range(1, 1001)], failed=10),
        _tick(3, 4, [v * 2000 for v in range(1, 1001)], failed=10),
    ]
    path = tmp_path / "k.jsonl"
    rec = Recorder(path, {"run_id": "k", "targets": {"postgres": "postgresql://u:***@h/db"}})
    for t in ticks:
        rec.write_tick(t)
    rec.close({"reason": "duration", "exit_code": 0})
    back = read_recording(path)
    assert len(steps(back.ticks)) == 2
    s = build_summary(back)
    s1, s2 = s["steps"]
    assert (s1["concurrency"], s2["concurrency"]) == (1, 4)
    assert s1["ops_per_s"] == 500.0
    assert s1["p50_ms"] == pytest.approx(500, rel=0.002)
    assert s1["p99_ms"] == pytest.approx(990, rel=0.002)
    assert s1["max_ms"] == pytest.approx(1000, rel=0.002)
    assert s2["p50_ms"] == pytest.approx(1000, rel=0.002)
    assert s2["error_pct"] == pytest.approx(100 * 20 / 2020, rel=1e-3)
    assert s["total"]["errors"] == {"40P01 deadlock": 20}
    md = render_markdown(back)
    assert "| 1 | 1 | 2.0s | 500 | 500ms |" in md
    assert "`40P01 deadlock`" in md
    assert "p95 < 500 ms ❌" in md  # the SLO verdict over the run


def test_report_sections_are_imported_and_a_failing_one_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.session import report

    rec = Recording(header={"run_id": "x"}, ticks=[_tick(0, 1, [1000]), _tick(1, 1, [2000])])
    s = build_summary(rec)
    assert isinstance(s["anomalies"], dict) and "look_here_first" in s["anomalies"]
    md = render_markdown(rec)
    assert "## Anomalies" in md and "## Systems under load" in md

    class Boom:
        def add(self, t: Tick, hists: object) -> None:
            raise RuntimeError("boom")

    monkeypatch.setattr(report, "ProbeReport", Boom)
    md = render_markdown(rec)
    assert "_(probe_report_section failed: RuntimeError: boom)_" in md and "## Anomalies" in md


def test_every_report_table_splits_and_numbers_steps_alike() -> None:
    import dataclasses

    # c=4 closed model, then the open model at 100/s and 200/s with the same 4 workers:
    # three steps, which the probe section and the capacity table once saw as two
    ticks = [_tick(i, 4, [1000 * (i + 1)] * 50) for i in range(6)]
    for i, rate in ((2, 100.0), (3, 100.0), (4, 200.0), (5, 200.0)):
        ticks[i] = dataclasses.replace(ticks[i], mode="rate", rate=rate)
    assert [(s.number, s.mode, s.rate, len(s.ticks)) for s in steps(ticks)] == [
        (1, "workers", None, 2), (2, "rate", 100.0, 2), (3, "rate", 200.0, 2),
    ]  # fmt: skip
    rec = Recording(header={"run_id": "r"}, ticks=ticks)
    s = build_summary(rec)
    assert [st["step"] for st in s["steps"]] == [1, 2, 3]
    assert [st["step"] for st in s["anomalies"]["steps"]] == [1, 2, 3]
    md = render_markdown(rec)
    assert "### Step 1: concurrency 4" in md and "### Step 3: rate 200/s" in md
    capacity = md.split("### Capacity")[1]
    assert "| 1 | 4 |" in capacity and "| 3 | 200/s |" in capacity and "| 0 |" not in capacity


def test_fast_percentiles_and_mean_equal_hdrh_own() -> None:
    import random

    from app.tick import Percentiles, mean_value, values_at_percentiles

    rng = random.Random(7)
    h = new_histogram()
    for _ in range(20_000):
        h.record_value(rng.choice([rng.randint(1, 900), rng.randint(1_000, 2_000_000)]))
    ps = (0.1, 1, 50, 90, 95, 99, 99.9, 99.99, 100)
    assert values_at_percentiles(h, ps) == [h.get_value_at_percentile(p) for p in ps]
    assert mean_value(h) == pytest.approx(h.get_mean_value(), rel=1e-12)
    lat = Percentiles.of(h, with_mean=True)
    assert lat.mean == pytest.approx(h.get_mean_value() / 1000.0, rel=1e-12)
    assert lat.p99 == h.get_value_at_percentile(99) / 1000.0
    assert values_at_percentiles(new_histogram(), (50,)) == [0]
