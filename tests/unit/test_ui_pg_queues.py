"""Postgres-native queues on screen (issue 11): a pg_queues reading's queues
show in the Postgres pane, in the Redis pane's queue columns, with their
layout and depth, at 100 and 140 columns."""

from __future__ import annotations

import dataclasses

import pytest

from app.session.recording import Recording
from app.ui.main import make_replay_app
from app.ui.textshot import screen_text
from tests.unit.ticks import T0, make_recording, pg_queues_reading


def recording() -> Recording:
    rec = make_recording()
    last = rec.ticks[-1]
    pgq = pg_queues_reading(19, [
        {"name": "default", "layout": "procrastinate", "key": "public.procrastinate_jobs",
         "depth": 8765, "in_flight": 5, "failed": 2, "retry": 1, "scheduled": 3,
         "oldest_age_s": 95.0, "consumed_per_s": 12.5},
    ])  # fmt: skip
    readings = {**last.readings, "pg_queues": pgq}
    ticks = [*rec.ticks[:-1], dataclasses.replace(last, readings=readings)]
    return dataclasses.replace(rec, ticks=ticks)


@pytest.mark.parametrize("width", [100, 140])
async def test_a_procrastinate_queue_shows_with_its_depth(width: int) -> None:
    app = make_replay_app(recording(), clock=lambda: T0, autoplay=False)
    async with app.run_test(size=(width, 44)) as pilot:
        await pilot.press("end")
        await pilot.pause()
        lines = screen_text(app).splitlines()
        # procrastinate's default queue with its layout: it fits at 100 columns too
        row = next((ln for ln in lines if "default (procrastinate)" in ln), None)
        assert row is not None, "\n".join(lines)
        assert "8765" in row, row  # the depth
        assert "1m35s" in row and " 5 " in row and " 2 " in row, row  # age, in flight, failed
        assert all(len(ln) <= width for ln in lines)


async def test_no_queue_table_before_the_pg_queues_reading() -> None:
    app = make_replay_app(recording(), clock=lambda: T0, autoplay=False)
    async with app.run_test(size=(120, 44)) as pilot:
        await pilot.press("home")
        await pilot.pause()
        assert "8765" not in screen_text(app)
