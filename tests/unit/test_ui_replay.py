"""The console over a recording: replay navigation, hidden panes, snapshots.

The timeline is synthetic and fixed (tests/unit/ticks.py: fixed wall times,
fixed histograms, fixed probe readings), so the SVG snapshots are
byte-stable: no real clock, no network. The snapshots live in
tests/unit/__snapshots__/test_ui_replay/; after a deliberate change to the
console, refresh them with
`uv run pytest tests/unit/test_ui_replay.py --snapshot-update`.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from app.session.recording import read_recording
from app.tick import tick_to_json
from app.ui.main import ReplayConsole, make_replay_app
from app.ui.panes import TABLE_CELL_CACHE, TABLE_ROW_CACHE, AnomalyFeed
from app.ui.probe_panes import PodsPane, PostgresPane, RedisPane
from app.ui.replay import ReplayCursor
from app.ui.screens import BlockerScreen
from app.ui.textshot import screen_text
from app.ui.timeline import point_of
from tests.unit.ticks import T0, make_recording


def replay_app(**kw: Any) -> ReplayConsole:
    return make_replay_app(make_recording(**kw), clock=lambda: T0, autoplay=False)


# ---- navigation ---------------------------------------------------------------------


async def test_replay_keys_step_seek_and_play(tmp_path: Path) -> None:
    app = replay_app()
    app.export_dir = str(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        rp = app.replay
        assert rp is not None and rp.pos == 0 and not rp.playing
        assert "tick 1/20" in screen_text(app)
        await pilot.press("right", "right")
        assert rp.pos == 2
        assert app.last_tick is rp.ticks[2]
        await pilot.press("left")
        assert rp.pos == 1
        await pilot.press("end")
        assert rp.pos == 19
        assert "tick 20/20" in screen_text(app)
        await pilot.press("right")  # past the end: stays
        assert rp.pos == 19
        await pilot.press("home")
        assert rp.pos == 0
        await pilot.press("g")
        await pilot.press(*"12", "enter")
        assert rp.pos == 11 and rp.ticks[11].elapsed == 12.0
        assert "00:12" in screen_text(app)
        await pilot.press("g", *"0:05", "enter")
        assert rp.pos == 4
        await pilot.press("space")
        assert rp.playing
        await pilot.press("space")
        assert not rp.playing
        # live-only keys are inert in replay
        await pilot.press("plus", "x", "p")
        assert rp.pos == 4
        await pilot.press("e")
        await app.workers.wait_for_complete()
        assert app.exports and Path(app.exports[0]).exists()
        assert "# " in Path(app.exports[0]).read_text()
        assert Path(app.exports[0]).with_suffix(".svg").exists()
        await pilot.press("q")
    assert app.return_code == 0
    assert app.return_value == 0  # what app.run() hands `loadtop replay`


async def test_replay_play_advances_and_stops_at_end() -> None:
    rec = make_recording(n=4)
    rec.header["load"]["interval_s"] = 0.05
    app = make_replay_app(rec, autoplay=True)
    async with app.run_test(size=(120, 40)) as pilot:
        rp = app.replay
        assert rp is not None and rp.playing
        for _ in range(60):
            await pilot.pause(0.05)
            if not rp.playing:
                break
        assert rp.pos == 3 and not rp.playing


async def test_seek_back_rebuilds_the_feed_and_charts() -> None:
    app = replay_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("end")
        feed = app.query_one("#feed", DataTable)
        assert feed.row_count == 2  # lock-chain active, slo-breach cleared
        assert len(app.timeline.points) == 20
        await pilot.press("home")
        assert len(app.timeline.points) == 1
        assert not app.query_one(AnomalyFeed).display  # no anomaly yet at tick 0


# ---- hidden panes ------------------------------------------------------------------


async def test_panes_without_data_stay_hidden() -> None:
    app = replay_app(probes=False, anomalies=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("end")
        for pane in (PostgresPane, RedisPane, PodsPane, AnomalyFeed):
            assert not app.query_one(pane).display, pane
        assert not app.query_one("#right").display
        text = screen_text(app)
        assert "latency" in text and "postgres ─" not in text and "redis ─" not in text


async def test_panes_with_data_show_it() -> None:
    app = replay_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("end")
        for pane in (PostgresPane, RedisPane, PodsPane, AnomalyFeed):
            assert app.query_one(pane).display, pane
        text = screen_text(app)
        assert "4242" in text  # root blocker
        assert "orders:lock:7" in text and "NO TTL" in text  # never an emoji for ":lock:"
        pods = app.query_one("#pods-table", DataTable)
        assert str(pods.get_row("shop-7f9c/api")[4]) == "OOMKilled"
        assert str(pods.get_row("shop-7f9c/api")[1]) == "0.45 90%"
        assert "lock-chain" in text
        blockers = app.query_one("#blockers", DataTable)
        assert [k.value for k in blockers.rows][:1] == ["r4242"]
        assert blockers.row_count == 3


async def test_scenario_counters_get_a_column_only_when_counted() -> None:
    import dataclasses

    rec = make_recording(probes=False, anomalies=False)
    plain = make_replay_app(rec, clock=lambda: T0, autoplay=False)
    async with plain.run_test(size=(120, 40)) as pilot:
        await pilot.press("end")
        cols = [c.value for c in plain.query_one("#latency-table", DataTable).columns]
        assert "counts" not in cols  # nobody counted: no empty column
    # from tick 5 on, redis-lock counts its contended acquisitions
    ticks = [
        dataclasses.replace(t, scenarios=tuple(
            dataclasses.replace(w, counters={"contended": 7 * t.index})
            if w.name == "redis-lock" and t.index >= 5 else w
            for w in t.scenarios
        ))
        for t in rec.ticks
    ]  # fmt: skip
    counted = dataclasses.replace(rec, ticks=ticks)
    app = make_replay_app(counted, clock=lambda: T0, autoplay=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("end")
        table = app.query_one("#latency-table", DataTable)
        assert [c.value for c in table.columns][-1] == "counts"
        last = ticks[-1].index
        assert str(table.get_cell("redis-lock", "counts")) == f"contended {7 * last}"
        assert str(table.get_cell("stock-reservation", "counts")) == ""


async def test_blocker_details_in_replay_have_no_cancel_keys() -> None:
    app = replay_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("end")
        table = app.query_one("#blockers", DataTable)
        table.focus()
        await pilot.press("enter")
        assert isinstance(app.screen, BlockerScreen)
        assert app.screen.act is None
        assert "read-only" in screen_text(app)
        await pilot.press("c")  # inert: no confirmation opens
        assert isinstance(app.screen, BlockerScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, BlockerScreen)


async def test_critical_anomaly_toasts_when_playing() -> None:
    rec = make_recording()
    app = make_replay_app(rec, autoplay=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.seek(12)
        await pilot.press("space")  # playing: stepping forward one tick at a time
        app.seek(13)
        app.seek(14)
        await pilot.pause()
        assert any("slo-breach" in (n.title or "") for n in app._notifications)


async def test_resize_and_small_terminals() -> None:
    app = replay_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("end")
        for size in ((80, 24), (60, 15), (30, 8), (200, 60), (120, 40)):
            await pilot.resize_terminal(*size)
            await pilot.pause()
            assert app.size == size
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert app.has_class("narrow")
        text = screen_text(app)
        assert "workers" in text and "latency" in text


async def test_help_screen() -> None:
    app = replay_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        text = screen_text(app)
        assert "seek to a time" in text
        await pilot.press("escape")
        assert "seek to a time" not in screen_text(app)


def test_replay_of_a_written_recording(tmp_path: Path) -> None:
    """A recording on disk round-trips into the same app (cli `loadtop replay`)."""
    rec = make_recording(n=5)
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(rec.header)] + [json.dumps(tick_to_json(t)) for t in rec.ticks]
    path.write_text("\n".join(lines) + "\n")
    back = read_recording(path)
    assert len(back.ticks) == 5
    app = make_replay_app(back, autoplay=False)
    assert app.replay is not None and len(app.replay.ticks) == 5


def test_points_of_a_recording_on_disk_use_its_indexed_p95(tmp_path: Path) -> None:
    """A seek builds points with the p95 the recording's index holds instead of
    merging each tick's histograms again: the same figures either way."""
    rec = make_recording()
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(rec.header)] + [json.dumps(tick_to_json(t)) for t in rec.ticks]
    path.write_text("\n".join(lines) + "\n")
    cursor = ReplayCursor(read_recording(path))
    assert cursor.file is not None
    for k, t in enumerate(rec.ticks):
        assert cursor.point(k) == point_of(t)


async def test_replay_leaves_the_garbage_collector_as_it_found_it() -> None:
    """The console freezes the heap it starts with (so a seek's collections do
    not walk it) and unfreezes it when it ends."""
    before = gc.get_freeze_count()
    app = replay_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert gc.get_freeze_count() > before
        await pilot.press("end")
        await pilot.pause()
    assert gc.get_freeze_count() == before


async def test_replay_tables_keep_small_render_caches() -> None:
    """Textual's DataTable keeps up to 10,000 rendered cells whose keys go
    stale with every added row: replay caps them, so seeking through a long
    recording does not pile up objects for the garbage collector to walk."""
    app = replay_app()
    async with app.run_test(size=(120, 40)) as pilot:
        for k in range(0, 20, 3):
            app.seek(k)
            await pilot.pause()
        tables = list(app.query(DataTable))
        assert len(tables) >= 5
        for t in tables:
            assert t._cell_render_cache.maxsize <= TABLE_CELL_CACHE
            assert t._line_cache.maxsize <= TABLE_ROW_CACHE
            assert len(t._cell_render_cache) <= TABLE_CELL_CACHE


# ---- snapshots (fixed timeline, fixed size, no real clock) ------------------------------


def _to_end(pilot: Any) -> Any:
    async def go(pilot: Any) -> None:
        await pilot.press("end")
        await pilot.pause()

    return go(pilot)


def test_snapshot_replay_120x40(snap_compare: Any) -> None:
    assert snap_compare(replay_app(), terminal_size=(120, 40), run_before=_to_end)


def test_snapshot_replay_80x24(snap_compare: Any) -> None:
    assert snap_compare(replay_app(), terminal_size=(80, 24), run_before=_to_end)


def test_snapshot_blocker_details(snap_compare: Any) -> None:
    async def go(pilot: Any) -> None:
        await pilot.press("end")
        pilot.app.query_one("#blockers", DataTable).focus()
        await pilot.press("enter")
        await pilot.pause()

    assert snap_compare(replay_app(), terminal_size=(120, 40), run_before=go)


def test_snapshot_no_color(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(replay_app(), terminal_size=(120, 40), run_before=_to_end)
