"""Memory that does not grow with the session's length (issue 10).

2,100 synthetic ticks (two scenarios, real histograms, probe readings, an
anomaly now and then) go through what a live session keeps per tick: the
session's retention and recording, the detectors, the fault recovery
tracker, the console's timeline and anomaly feed. tracemalloc measures what
stays allocated between tick 1,100 and tick 2,100: it must be a small fixed
amount, not the ~140 KB per scenario per tick a full histogram costs (on the
code before issue 10 this test fails with ~400 MB retained). Not a timing
test.

The ticks are 10 ms apart, as in benchmarks/soak_memory.py: a structure
bounded by time rather than by count (the recovery tracker keeps the last
10 s as a fault's baseline) then holds 1,000 ticks, and must hold them
compactly: with full ticks it held ~550 MB in the benchmark, flat once full,
so what all the windows hold once full is bounded too.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from pathlib import Path

import pytest

from app.scenario import Scenario
from app.session.recording import read_recording
from app.session.report import render_markdown
from app.session.runner import RunConfig, Session
from app.tick import Anomaly, ControlEvent, Reading, ScenarioWindow, Tick, new_histogram
from app.ui.panes import AnomalyFeed
from app.ui.timeline import Timeline

T0 = 1_790_000_000.0
STEP = 0.01  # seconds a tick: the benchmark's compressed time


class Quiet(Scenario):
    name = "quiet"
    needs = ()

    async def run(self, ctx) -> None:  # never runs here
        return None


_SHAPES: list = []


def _shape(k: int):
    """A fresh histogram (its own 139 KB counts, as the engine makes each
    tick) shaped like one of a few latency distributions."""
    if not _SHAPES:
        rng = random.Random(7)
        for _ in range(8):
            h = new_histogram()
            for _ in range(200):
                h.record_value(int(rng.lognormvariate(7.5, 0.9)) + 1)
            _SHAPES.append(h)
    h = new_histogram()
    h.add(_SHAPES[k % len(_SHAPES)])
    return h


def _at(i: int) -> float:
    return T0 + i * STEP


def make_tick(i: int, rng: random.Random) -> Tick:
    wins = []
    for name in ("a", "b"):
        h = _shape(i + rng.randrange(8))
        wins.append(ScenarioWindow(name, 8, 8, 200, 199, 1, {"timeout": 1}, h))
    events = (ControlEvent(_at(i), "concurrency", "plan", 8, 8),) if i % 50 == 0 else ()
    active = ()
    cleared = ()
    if i % 40 < 10:  # an anomaly every 40 ticks, a new key each time
        active = (Anomaly(f"slow:{i // 40}", "latency-step", "warning", "a", i - i % 40,
                          _at(i - i % 40), f"p95 up (episode {i // 40})"),)  # fmt: skip
    elif i % 40 == 10:
        cleared = (Anomaly(f"slow:{i // 40}", "latency-step", "warning", "a", i - 10,
                           _at(i - 10), "p95 up", cleared_tick=i, cleared_at=_at(i)),)  # fmt: skip
    readings = {
        "postgres": Reading("postgres", _at(i), True, 2.0, {
            "connections": 10 + i % 7, "max_connections": 100, "waiting": i % 3,
            "by_state": {"active": 4, "idle": 6}, "blocking_tree": [],
            "totals": {"deadlocks": 0, "rollbacks": i}}),
        "redis": Reading("redis", _at(i), True, 1.0, {
            "ops_per_sec": 1000.0 + i, "connected_clients": 9, "used_memory": 2_000_000,
            "locks": [{"key": f"order:{i}:lock", "holder": f"w{i % 8}", "age_s": 0.1,
                       "pttl_ms": 900}],
            "queues": [{"name": "jobs", "layout": "list", "depth": i % 100}]}),
    }  # fmt: skip
    return Tick(
        index=i, t=T0 + (i + 1) * STEP, elapsed=(i + 1) * STEP, interval=STEP, mode="workers",
        target_concurrency=8 if i < 1000 else 16, concurrency=8, scenarios=tuple(wins),
        readings=readings, anomalies=active, cleared=cleared, events=events,
    )  # fmt: skip


def test_per_tick_retained_memory_stays_bounded(tmp_path: Path) -> None:
    from app.detect import build_detectors
    from app.faults.recovery import BASELINE_S, RecoveryTracker
    from app.session.pipeline import with_recovery

    session = Session(RunConfig(scenarios=[(Quiet, 1.0)], record=str(tmp_path / "r.jsonl")))
    from app.session.recording import Recorder

    session.header = session._make_header()
    session.recorder = Recorder(session.cfg.record, session.header)
    detectors = build_detectors({})
    tracker = RecoveryTracker()
    recovery = with_recovery(tracker)
    timeline = Timeline()
    feed = AnomalyFeed()
    rng = random.Random(7)

    def feed_ticks(a: int, b: int) -> None:
        for i in range(a, b):
            tick = make_tick(i, rng)
            detectors.evaluate(tick)
            tick = recovery(tick)  # the pipeline's enricher
            session._on_tick(tick)  # the engine's tick listener
            timeline.add(tick)
            feed.ingest(tick)

    # traced from the start, so what the bounded windows hold when full is
    # counted in the base (a window filled before tracing would look like
    # growth as it turns over)
    tracemalloc.start()
    try:
        feed_ticks(0, 1100)  # every window, deque and cache is full by now
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        feed_ticks(1100, 2100)
        gc.collect()
        now, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = now - base
    per_tick = grown / 1000
    print(f"held {base / 1e6:.1f} MB at tick 1,100; retained {grown} B over 1000 ticks")
    # a full histogram is ~140 KB; two a tick retained would be ~280 KB a tick
    assert per_tick < 1024, (
        f"{grown / 1e6:.1f} MB retained over 1,000 ticks ({per_tick:.0f} B/tick)"
    )
    # and what the full windows hold is small: ~5 MB here; the recovery
    # tracker holding its 10 s of full ticks made it ~290 MB
    assert base < 25e6, f"{base / 1e6:.1f} MB held by the windows after 1,100 ticks"
    # what was dropped from memory is still in the recording, and the export
    # (streamed from it) covers the whole session
    assert session.ticks.total == 2100 and len(session.ticks) < 2100
    assert len(timeline.points) < 2100 and len(feed._seen) <= AnomalyFeed.MAX_SEEN
    # the tracker's window is by time: 10 s of 10 ms ticks (full before tick 1,100)
    assert len(tracker.history) == pytest.approx(BASELINE_S / STEP, abs=2)
    text = render_markdown(session._report_recording())
    assert "2100 ticks" in text
    assert len(read_recording(session.recorder.path).ticks) == 2100


async def test_replay_from_file_seeks_to_the_same_state_as_from_memory(tmp_path: Path) -> None:
    """A recording read from disk (indexed, decoded on demand) replays exactly
    like the same ticks held in a list: same tick, points, chart overview,
    chart marks and anomaly feed after any seek, and the same export."""
    import json

    from textual.widgets import DataTable

    from app.tick import tick_to_json
    from app.ui.main import make_replay_app
    from tests.unit.ticks import T0 as R0
    from tests.unit.ticks import make_recording

    rec = make_recording()
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(rec.header)] + [json.dumps(tick_to_json(t)) for t in rec.ticks]
    lines.append(json.dumps(rec.end))
    path.write_text("\n".join(lines) + "\n")
    back = read_recording(path)
    assert not isinstance(back.ticks, list) and len(back.ticks) == len(rec.ticks)
    assert render_markdown(back) == render_markdown(rec)
    mem = make_replay_app(rec, clock=lambda: R0, autoplay=False)
    disk = make_replay_app(back, clock=lambda: R0, autoplay=False)
    async with mem.run_test(size=(120, 40)) as p1, disk.run_test(size=(120, 40)) as p2:
        for i in (19, 3, 14, 15, 16, 0, 12, 13):
            for app in (mem, disk):
                app.seek(i)
            await p1.pause()
            await p2.pause()
            assert mem.last_tick is not None and disk.last_tick is not None
            assert tick_to_json(mem.last_tick) == tick_to_json(disk.last_tick)
            assert list(mem.timeline.points) == list(disk.timeline.points)
            assert mem.timeline.overview.xs == disk.timeline.overview.xs
            assert mem.timeline.overview.p95 == pytest.approx(disk.timeline.overview.p95, abs=1e-3)
            assert mem.timeline.changes() == disk.timeline.changes()
            rows = [
                [str(c) for c in a.query_one("#feed", DataTable).get_row_at(k)]
                for a in (mem, disk)
                for k in range(a.query_one("#feed", DataTable).row_count)
            ]
            n = mem.query_one("#feed", DataTable).row_count
            assert n == disk.query_one("#feed", DataTable).row_count
            assert rows[:n] == rows[n:]
