"""The console over a recording: replay navigation, hidden panes, snapshots.

The timeline is synthetic and fixed (fixed wall times, fixed histograms, fixed
probe readings), so the SVG snapshots are byte-stable: no real clock, no
network. The snapshots live in tests/__snapshots__/test_ui_replay/; after a
deliberate change to the console, refresh them with
`uv run pytest tests/test_ui_replay.py --snapshot-update`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from app.session.recording import Recording, read_recording
from app.tick import (
    Anomaly,
    ControlEvent,
    Reading,
    ScenarioWindow,
    Tick,
    new_histogram,
    tick_to_json,
)
from app.ui.main import LoadtopApp, make_replay_app
from app.ui.panes import AnomalyFeed, PodsPane, PostgresPane, RedisPane
from app.ui.textshot import screen_text

T0 = 1_790_000_000.0  # a fixed wall time: the snapshots never see a real clock
PLAN = [2, 4, 8]


def _hist(base_us: int, spread_us: int, n: int) -> Any:
    h = new_histogram()
    for i in range(n):
        h.record_value(base_us + (i * 7919) % max(spread_us, 1))
    return h


def _pg(i: int) -> Reading:
    waiting = 2 if i >= 12 else 0
    tree = []
    if waiting:
        tree = [
            {
                "root": {
                    "pid": 4242,
                    "application_name": "loadtop:stock-reservation:w3",
                    "usename": "app",
                    "state": "idle in transaction",
                    "wait_event_type": "Client",
                    "wait_event": "ClientRead",
                    "xact_age_s": 3.5 + i,
                    "state_age_s": 3.0,
                    "query": "UPDATE products SET quantity = quantity - $2 WHERE id = $1",
                },
                "waiters": [
                    {
                        "pid": 4300 + k,
                        "application_name": f"loadtop:stock-reservation:w{k}",
                        "state": "active",
                        "wait_event_type": "Lock",
                        "wait_event": "transactionid",
                        "xact_age_s": 1.0 + k,
                        "query": "SELECT quantity FROM products WHERE id = $1 FOR UPDATE",
                        "blocked_by": [4242],
                    }
                    for k in range(2)
                ],
                "depth": 1,
                "waiting_count": 2,
            }
        ]
    data = {
        "server_version": "18.0",
        "max_connections": 100,
        "connections": 6 + i % 3,
        "by_state": {"active": 4, "idle": 2, "idle in transaction": 1 if waiting else 0},
        "by_wait": {"Lock:transactionid": waiting},
        "waiting": waiting,
        "blocking_tree": tree,
        "oldest_xact_s": 3.5 + i if waiting else 0.01,
        "rates": {"commits": 900.0 + i, "rollbacks": 0.0, "deadlocks": 0.0},
    }
    return Reading("postgres", T0 + i, True, 4.0, data)


def _redis(i: int) -> Reading:
    data = {
        "version": "8.0.0",
        "ops_per_sec": 1500.0,
        "connected_clients": 9,
        "blocked_clients": 1,
        "used_memory": 2_000_000,
        "maxmemory": 0,
        "locks": [
            {"key": "orders:lock:7", "holder": "w1:ab12", "pttl_ms": 4200, "age_s": 0.8},
            {
                "key": "cron:lock",
                "holder": "host-3",
                "pttl_ms": None,
                "age_s": 60.0 + i,
                "no_ttl": True,
            },
        ],  # fmt: skip
        "queues": [
            {"name": "jobs", "layout": "list", "depth": 10 * i, "in_flight": 2, "failed": 0}
        ],
    }
    return Reading("redis", T0 + i, True, 2.0, data)


def _pods(i: int) -> Reading:
    data = {
        "source": "kubernetes",
        "namespace": "staging",
        "containers": [
            {"pod": "shop-7f9c", "container": "api", "cpu_cores": 0.45, "cpu_limit_cores": 0.5,
             "memory_bytes": 300 * 2**20, "memory_limit_bytes": 512 * 2**20, "restarts": 1,
             "last_reason": "OOMKilled"},
            {"pod": "shop-8d1e", "container": "api", "cpu_cores": 0.12, "cpu_limit_cores": 0.5,
             "memory_bytes": 200 * 2**20, "memory_limit_bytes": 512 * 2**20, "restarts": 0},
        ],
    }  # fmt: skip
    return Reading("pods", T0 + i, True, 30.0, data)


def make_ticks(n: int = 20, *, probes: bool = True, anomalies: bool = True) -> list[Tick]:
    ticks = []
    target = PLAN[0]
    for i in range(n):
        events: tuple[ControlEvent, ...] = ()
        step = min(i // 7, len(PLAN) - 1)
        if i % 7 == 0 and i // 7 < len(PLAN):
            before, target = target, PLAN[step]
            events = (
                ControlEvent(T0 + i, "plan-step", "plan", before, target),
                ControlEvent(T0 + i, "concurrency", "plan", before, target),
            )
        scen = []
        for name, base in (("stock-reservation", 1500), ("redis-lock", 600)):
            ops = 400 * target // (1 + i // 10)
            scen.append(
                ScenarioWindow(
                    name=name,
                    concurrency=target // 2,
                    target=target // 2,
                    started=ops,
                    ok=ops - (3 if i == 15 else 0),
                    failed=3 if i == 15 else 0,
                    errors={"40P01": 3} if i == 15 else {},
                    hist=_hist(base * (1 + i // 5), base * 4, max(ops, 1)),
                )  # fmt: skip
            )
        active: list[Anomaly] = []
        cleared: list[Anomaly] = []
        if anomalies and i >= 12:
            active.append(
                Anomaly(
                    "lock-chain:postgres",
                    "lock-chain",
                    "warning",
                    "postgres",
                    12,
                    T0 + 12,
                    "backend 4242 (idle in transaction) blocks 2 backends",
                    {"root_pid": 4242},
                )  # fmt: skip
            )
        if anomalies and 14 <= i < 17:
            active.append(
                Anomaly(
                    "slo:stock-reservation",
                    "slo-breach",
                    "critical",
                    "stock-reservation",
                    14,
                    T0 + 14,
                    "p99 1200ms above the SLO 1000ms",
                    {"p99": 1200},
                )  # fmt: skip
            )
        if anomalies and i == 17:
            cleared.append(
                Anomaly(
                    "slo:stock-reservation",
                    "slo-breach",
                    "critical",
                    "stock-reservation",
                    14,
                    T0 + 14,
                    "p99 1200ms above the SLO 1000ms",
                    {"p99": 1200},
                    cleared_tick=17,
                    cleared_at=T0 + 17,
                )  # fmt: skip
            )
        readings = {"postgres": _pg(i), "redis": _redis(i), "pods": _pods(i)} if probes else {}
        ticks.append(
            Tick(
                index=i,
                t=T0 + i + 1,
                elapsed=float(i + 1),
                interval=1.0,
                mode="workers",
                target_concurrency=target,
                concurrency=target,
                plan_step=step,
                scenarios=tuple(scen),
                readings=readings,
                anomalies=tuple(active),
                cleared=tuple(cleared),
                events=events,
            )  # fmt: skip
        )
    return ticks


def make_recording(**kw: Any) -> Recording:
    header = {
        "type": "header",
        "version": 1,
        "run_id": "snap0001",
        "started": T0,
        "targets": {"postgres": "postgresql://app@db:5432/shop", "redis": "redis://cache:6379/0"},
        "scenarios": [{"name": "stock-reservation", "weight": 1.0}],
        "load": {"mode": "workers", "plan": PLAN, "step_seconds": 7, "interval_s": 1.0},
    }
    return Recording(header=header, ticks=make_ticks(**kw), end={"type": "end", "reason": "x"})


def replay_app(**kw: Any) -> LoadtopApp:
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
        from app.ui.screens import BlockerScreen

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
