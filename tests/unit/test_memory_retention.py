"""What held the console's (and headless's) hundreds of MB in the soak
benchmark (issue 10), kept from coming back. None of these is a timing test.

- hdrh makes every histogram a reference cycle (histogram -> encoder ->
  histogram), so only the cycle collector could free its 139 KB of counts;
  `app.tick.acyclic` breaks it for every histogram loadtop makes.
- The fault recovery tracker kept the last 10 s of full ticks as a fault's
  baseline: 1,000 ticks (~550 MB) at the benchmark's 10 ms ticks. It keeps
  a compact record a tick now, and the baseline is still an exact merge.
- The console keeps no window of full ticks, mounts no widget per tick, and
  its tables' render caches (keyed on an update count every tick bumps, so
  never read again after their frame) stay under the caps it sets instead of
  filling Textual's 1,000 rows and 10,000 cells each.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from typing import Any

from hdrh.histogram import HdrHistogram
from textual.widgets import DataTable

from app.faults.recovery import BASELINE_S, RecoveryTracker
from app.tick import (
    ControlEvent,
    Percentiles,
    ScenarioWindow,
    Tick,
    decode_histogram,
    encode_histogram,
    merge_histograms,
    new_histogram,
)
from app.ui.main import make_live_app
from app.ui.panes import TABLE_CELL_CACHE, TABLE_ROW_CACHE, table_cache_sizes
from tests.unit.fakes import FakeSession
from tests.unit.ticks import T0, hist, pg_reading, redis_reading

STEP = 0.01  # the soak benchmark's tick: 10 s of baseline is 1,000 ticks
SHAPES = [hist(base, base * 4, 300) for base in (2_000, 5_000, 9_000)]


def test_histograms_are_freed_by_reference_counting_alone() -> None:
    filled = hist(10_000, 40_000, 100)
    makers = {
        "new": new_histogram,
        "decoded": lambda: decode_histogram(encode_histogram(filled)),
        "merged": lambda: merge_histograms([filled, filled]),
    }
    gc.disable()
    try:
        for name, make in makers.items():
            h = make()
            assert h.get_total_count() in (0, 100, 200)
            ref = weakref.ref(h)
            del h
            assert ref() is None, f"a {name} histogram waits for the cycle collector"
    finally:
        gc.enable()
    # and the encoder still reaches its histogram while it lives
    assert decode_histogram(encode_histogram(filled)).get_total_count() == 100


def _window(name: str, shape: HdrHistogram) -> ScenarioWindow:
    h = new_histogram()  # its own 139 KB counts, as the engine makes each tick
    h.add(shape)
    return ScenarioWindow(name, 4, 4, 300, 300, 0, {}, h)


def _tick(i: int, events: tuple[ControlEvent, ...] = ()) -> Tick:
    wins = (_window("a", SHAPES[i % 3]), _window("b", SHAPES[(i + 1) % 3]))
    return Tick(
        index=i, t=T0 + (i + 1) * STEP, elapsed=(i + 1) * STEP, interval=STEP,
        mode="workers", target_concurrency=8, concurrency=8, scenarios=wins, events=events,
    )  # fmt: skip


def test_recovery_baseline_is_kept_compact_and_stays_an_exact_merge() -> None:
    tracker = RecoveryTracker()
    n = 1_200
    tracemalloc.start()
    try:
        for i in range(n):
            tracker.evaluate(_tick(i))
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    window = len(tracker.history)
    assert abs(window - BASELINE_S / STEP) <= 2  # by time: 10 s of 10 ms ticks
    # full ticks would be 1,000 x 2 x 139 KB = ~280 MB; compact, ~3 KB a tick
    assert held < 10e6, f"{held / 1e6:.1f} MB held for a {window}-tick baseline"

    # a fault now: its baseline is the ticks of the 10 s before it, merged exactly
    t_fault = T0 + n * STEP + STEP / 2
    fault = ControlEvent(t_fault, "fault", "key", before=1, after=5.0, note="fault pod-kill: x")
    tracker.evaluate(_tick(n, (fault,)))
    f = tracker.open[1]
    inside = [i for i in range(n) if t_fault - BASELINE_S < T0 + (i + 1) * STEP <= t_fault + 1e-6]
    assert len(inside) >= 990
    want = Percentiles.of(merge_histograms(s.hist for i in inside for s in _tick(i).scenarios))
    assert f.baseline_p95 == want.p95
    assert f.baseline_ops == 600 / STEP
    assert f.baseline_by == {"a": 300 / STEP, "b": 300 / STEP}


async def test_the_console_keeps_no_window_of_full_ticks_and_its_caches_capped() -> None:
    fake = FakeSession(scenarios=("a", "b"))
    app = make_live_app(fake)
    counts: dict[int, int] = {}
    sent: list[weakref.ref[Any]] = []  # every histogram the ticks carried

    def widgets() -> int:
        return len(list(app.query("*")))

    async with app.run_test(size=(140, 45)) as pilot:
        for i in range(240):
            readings: dict[str, Any] = {"postgres": pg_reading(i), "redis": redis_reading(i)}
            t = fake.tick(readings=readings)
            sent += [weakref.ref(s.hist) for s in t.scenarios]
            del t
            fake.ticks.clear()  # the fake's own list is not the console's
            await pilot.pause()
            if i in (40, 239):
                counts[i] = widgets()
        assert app.frames >= 200
        gc.collect()
        alive = sum(r() is not None for r in sent)
        # the newest tick's two (a window of full ticks would be hundreds)
        assert alive <= 4, f"{alive} of the ticks' {len(sent)} histograms alive"
        assert counts[239] == counts[40], "widgets mounted per tick"
        sizes = {t.id: table_cache_sizes(t) for t in app.query(DataTable)}
        # uncapped, the blockers table alone holds ~550 rows by now
        for table, caches in sizes.items():
            for name, n in caches.items():
                cap = TABLE_CELL_CACHE if name == "_cell_render_cache" else TABLE_ROW_CACHE
                assert n <= cap, f"{table}.{name} holds {n} entries"
        await pilot.press("q")
