"""Issue 12, item 8: the Postgres pane uses the width. Synthetic, fixed ticks
(a deep chain, an ALTER amplifier, a wait cycle, a blind probe), so the
snapshots are byte-stable. Refresh after a deliberate change with
`uv run pytest tests/unit/test_ui_pg_pane.py --snapshot-update`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from textual.widgets import DataTable

from app.session.recording import Recording
from app.tick import Reading, Tick
from app.ui.main import ReplayConsole, make_replay_app
from app.ui.probe_panes import PostgresPane
from app.ui.textshot import screen_text
from tests.unit.ticks import make_ticks

T0 = 1_790_000_000.0


def _b(pid: int, state: str, app: str, query: str, **kw: Any) -> dict[str, Any]:
    return {"pid": pid, "state": state, "application_name": app, "usename": "app",
            "query": query, "xact_age_s": 12.0, "state_age_s": 2.5, **kw}  # fmt: skip


def _waiter(pid: int, parent: int, depth: int, rel: str = "public.accounts") -> dict[str, Any]:
    return _b(
        pid, "active", f"billing-worker-{pid % 10}",
        f"UPDATE accounts SET balance = balance - $1 WHERE id = {pid - 100}",
        wait_event_type="Lock", wait_event="transactionid", blocked_by=[parent], depth=depth,
        parent=parent,
        waits_for={"locktype": "transactionid", "mode": "ShareLock", "relation": rel,
                   "xid": str(900 + depth), "object": f"transaction {900 + depth}",
                   "holders": [{"pid": parent, "mode": "ExclusiveLock", "granted": True}]},
    )  # fmt: skip


def pg_reading(i: int) -> Reading:
    root = _b(3100, "idle in transaction", "psql",
              "UPDATE accounts SET balance = 0 WHERE id = 1", wait_event_type="Client",
              wait_event="ClientRead", xact_age_s=95.0, state_age_s=90.0, depth=0)  # fmt: skip
    chain = [root] + [_waiter(3101 + k, 3100 + k, k + 1) for k in range(5)]
    alter = _b(3200, "active", "migrate", "ALTER TABLE orders ADD COLUMN note text",
               wait_event_type="Lock", wait_event="relation", blocked_by=[3199], depth=1,
               parent=3199,
               waits_for={"locktype": "relation", "mode": "AccessExclusiveLock",
                          "relation": "public.orders", "object": "relation public.orders",
                          "holders": [{"pid": 3199, "mode": "AccessShareLock",
                                       "granted": True}]})  # fmt: skip
    readers = [
        _b(3201 + k, "active", "api", "SELECT * FROM orders WHERE customer_id = $1",
           wait_event_type="Lock", wait_event="relation", blocked_by=[3200], depth=2,
           parent=3200,
           waits_for={"locktype": "relation", "mode": "AccessShareLock",
                      "relation": "public.orders", "object": "relation public.orders",
                      "holders": [{"pid": 3200, "mode": "AccessExclusiveLock",
                                   "granted": False}]})
        for k in range(3)
    ]  # fmt: skip
    holder = _b(3199, "idle in transaction", "report", "SELECT count(*) FROM orders",
                xact_age_s=40.0, depth=0)  # fmt: skip
    tree = [
        {"root": root, "waiters": chain[1:], "depth": 5, "waiting_count": 5, "tree": chain},
        {"root": holder, "waiters": [alter, *readers], "depth": 2, "waiting_count": 4,
         "tree": [holder, alter, *readers]},
    ]  # fmt: skip
    data = {
        "server_version": "15.20", "database": "shop", "max_connections": 100,
        "usable_connections": 97, "connections": 41, "connections_total": 42,
        "by_state": {"active": 20, "idle": 19, "idle in transaction": 2},
        "idle_in_tx_count": 2, "waiting": 9, "active": 20, "blocking_tree": tree,
        "oldest_xact_s": 95.0,
        "rates": {"commits": 1400.0, "rollbacks": 6700.0, "deadlocks": 0.4},
        "cycles": [{"pids": [3831, 3840], "backends": []}],
        "amplifiers": [{"pid": 3200, "mode": "AccessExclusiveLock", "relation": "public.orders",
                        "behind": [3199], "queued": 3, "query": "ALTER TABLE orders"}],
        "blind": [{"what": "pg_locks", "hidden": "pg_locks is denied",
                   "grant": "GRANT SELECT ON pg_catalog.pg_locks TO monitor"}],
    }  # fmt: skip
    return Reading("postgres", T0 + i, True, 4.0, data)


def pg_app() -> ReplayConsole:
    ticks: list[Tick] = []
    for tk in make_ticks(6, anomalies=False):
        readings = dict(tk.readings)
        readings["postgres"] = pg_reading(tk.index)
        readings.pop("redis", None)
        readings.pop("pods", None)
        ticks.append(dataclasses.replace(tk, readings=readings))
    header = {"type": "header", "version": 1, "run_id": "snap0012", "started": T0,
              "targets": {"postgres": "postgresql://monitor@db:5432/shop"}, "scenarios": [],
              "load": {"mode": "workers", "plan": [], "interval_s": 1.0}}  # fmt: skip
    rec = Recording(header=header, ticks=ticks, end={"type": "end", "reason": "x"})
    return make_replay_app(rec, clock=lambda: T0, autoplay=False)


@pytest.mark.parametrize("width", [120, 130, 140])
async def test_pane_takes_the_width_with_a_tree(width: int) -> None:
    app = pg_app()
    async with app.run_test(size=(width, 45)) as pilot:
        await pilot.press("end")
        await pilot.pause()
        pane = app.query_one(PostgresPane)
        assert pane.region.width >= 0.6 * width, (pane.region.width, width)
        table = app.query_one("#blockers", DataTable)
        query_col = list(table.columns.values())[-1]
        assert query_col.get_render_width(table) - 2 >= 40
        text = screen_text(app)
        # the query column shows 40 characters: a root's query, 39 and the "…"
        assert "UPDATE accounts SET balance = 0 WHERE i" in text
        assert "AccessExclusive orders ALTER TABLE orde" in text  # what it waits for, first
        # tree indented by depth: depth 5 is four spaces further in than depth 1
        lines = [ln for ln in text.splitlines() if "3105" in ln or "3101" in ln]
        d1 = next(ln for ln in lines if "3101" in ln)
        d5 = next(ln for ln in lines if "3105" in ln)
        assert d5.index("└") - d1.index("└") == 4
        # the header line: total connections, idle in tx, deadlocks/s, rollbacks/s
        assert "conns 42/97" in text and "idle in tx 2" in text
        assert "deadlocks 0.4/s" in text and "rollbacks 6.7k/s" in text
        assert "deadlock cycle: 3831 ↔ 3840" in text
        assert "amplifier: pid 3200 wants AccessExclusiveLock on public.orders" in text
        assert "GRANT SELECT ON pg_catalog.pg_locks TO monitor" in text


async def test_pane_gives_the_width_back_without_a_tree() -> None:
    app = pg_app()
    async with app.run_test(size=(130, 45)) as pilot:
        await pilot.press("end")
        await pilot.pause()
        assert app.has_class("pg-tree")
        left = app.query_one("#left")
        assert left.size.width == round(130 * 0.28)  # the tree's share: the pane is wider
        pane = app.query_one(PostgresPane)
        r = app.replay
        assert r is not None
        quiet = dict(pg_reading(0).data, blocking_tree=[], waiting=0)
        tk = dataclasses.replace(r.ticks[-1], readings={"postgres": Reading(
            "postgres", T0, True, 1.0, quiet)})  # fmt: skip
        pane.show(tk, app.timeline)
        await pilot.pause()
        assert not app.has_class("pg-tree")
        assert left.size.width == round(130 * 0.45)  # restyled: the width given back


def _end(pilot: Any) -> Any:
    async def go(pilot: Any) -> None:
        await pilot.press("end")
        await pilot.pause()

    return go(pilot)


@pytest.mark.parametrize("size", [(100, 30), (140, 45), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_pg_pane(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(pg_app(), terminal_size=size, run_before=_end)


async def test_blocker_details_follow_the_backend_live() -> None:
    from app.ui.screens import BlockerScreen

    app = pg_app()
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.press("end")
        await pilot.pause()
        table = app.query_one("#blockers", DataTable)
        table.focus()
        table.move_cursor(row=table.get_row_index("r3199/3200"))  # the ALTER
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, BlockerScreen)
        text = screen_text(app)
        assert (
            "wants AccessExclusiveLock on relation public.orders; held AccessShareLock by" in text
        )
        pane = app.query_one(PostgresPane)
        r = app.replay
        assert r is not None
        data = pg_reading(9).data
        later = dict(data, blocking_tree=[dict(n) for n in data["blocking_tree"]])
        node = later["blocking_tree"][1]
        node["tree"] = [dict(b) for b in node["tree"]]
        node["tree"][1]["state_age_s"] = 75.0  # the ALTER has now waited 75 s
        tk = dataclasses.replace(r.ticks[-1], readings={"postgres": Reading(
            "postgres", T0 + 9, True, 1.0, later)})  # fmt: skip
        pane.show(tk, app.timeline)
        await pilot.pause()
        assert "1m15s" in screen_text(app)  # "in state", as read this tick
        assert app.screen.backend["state_age_s"] == 75.0
        quiet = dict(data, blocking_tree=[], waiting=0)
        pane.show(dataclasses.replace(tk, readings={"postgres": Reading(
            "postgres", T0 + 10, True, 1.0, quiet)}), app.timeline)  # fmt: skip
        await pilot.pause()
        assert "no longer in the lock tree" in screen_text(app)


def test_a_session_of_another_database_says_which() -> None:
    from app.ui.probe_panes import _backend_row

    other = _b(4000, "idle in transaction", "cron", "UPDATE jobs SET ...", database="billing")
    mine = _b(4001, "idle in transaction", "api", "UPDATE orders SET ...")
    assert str(_backend_row(other, "")[-1]).startswith("[db billing] UPDATE jobs")
    assert str(_backend_row(mine, "")[-1]).startswith("UPDATE orders")
