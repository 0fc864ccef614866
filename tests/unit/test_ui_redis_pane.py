"""The Redis pane at 100 and 140 columns (issue 11): depth, trend, age, in
flight and failed stay visible; long queue names and lock holders elide in the
middle, so the tail of a name and the host and pid of a holder survive."""

from __future__ import annotations

import dataclasses

import pytest

from app.session.recording import Recording
from app.tick import Reading
from app.ui.main import make_replay_app
from app.ui.textshot import screen_text
from tests.unit.ticks import T0, make_recording

HOLDER = "worker-host-42:pid-7731:6f1c0e4a9b2d4c3e8f7a6b5c4d3e2f1a"
QUEUE = "tenant-eu-west-1:billing:invoices:pending-emails"


def recording() -> Recording:
    rec = make_recording()
    last = rec.ticks[-1]
    data = dict(last.readings["redis"].data)
    data["locks"] = [{"key": "lock:payments:settlement", "holder": HOLDER, "pttl_ms": 900,
                      "age_s": 3.2}]  # fmt: skip
    data["queues"] = [
        {"name": QUEUE, "layout": "list", "depth": 4321, "in_flight": 7, "failed": 3,
         "oldest_age_s": 95.0, "scheduled": 12, "consumed_per_s": 0.0},
        {"name": "emails", "layout": "rq", "depth": 2, "in_flight": 0, "failed": 0,
         "oldest_age_s": None, "scheduled": None, "consumed_per_s": 4.5},
    ]  # fmt: skip
    data["unmatched_keys"] = ["myapp_mutex_orders"]
    readings = {**last.readings, "redis": Reading("redis", T0 + 19, True, 2.0, data)}
    ticks = [*rec.ticks[:-1], dataclasses.replace(last, readings=readings)]
    return dataclasses.replace(rec, ticks=ticks)


@pytest.mark.parametrize("width", [100, 140])
async def test_redis_pane_fits_and_elides_in_the_middle(width: int) -> None:
    app = make_replay_app(recording(), clock=lambda: T0, autoplay=False)
    async with app.run_test(size=(width, 44)) as pilot:
        await pilot.press("end")
        await pilot.pause()
        lines = screen_text(app).splitlines()
        pane = [ln for ln in lines if "infl" in ln or "4321" in ln or "lock:" in ln]
        header = next(ln for ln in lines if "infl" in ln)
        for col in ("depth", "trend", "age", "infl", "fail"):
            assert col in header, header
        row = next(ln for ln in lines if "4321" in ln)
        assert "1m35s" in row  # the oldest ready item's age
        assert " 7 " in row and " 3 " in row  # in flight, failed
        assert "…" in row and "tenan" in row and "mails" in row  # start and tail survive
        lock = next(ln for ln in lines if "lock:" in ln and "ms" in ln)
        assert "…" in lock and "worker-h" in lock and lock.rstrip("│ ").endswith("900ms")
        if width >= 140:
            assert "worker-host-42:pid-7731:" in lock  # host and pid whole
        assert any("myapp_mutex_orders" in ln for ln in lines)  # the hint
        assert len(pane) >= 3
