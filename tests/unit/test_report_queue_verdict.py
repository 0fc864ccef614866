"""Issue 11: the report's verdict is not PASS while a queue-stuck, lock-takeover or
consumers-gone anomaly was raised, whatever the latency SLO says."""

from __future__ import annotations

import dataclasses

import pytest

from app.session.report import render_markdown
from app.tick import Anomaly
from tests.unit.ticks import T0, make_recording


def verdict(md: str) -> str:
    return next(ln for ln in md.splitlines() if ln.startswith("**")).split("**")[1]


@pytest.mark.parametrize("kind", ["queue-stuck", "lock-takeover", "consumers-gone"])
def test_queue_and_lock_anomalies_fail_the_run(kind: str) -> None:
    rec = make_recording()
    assert verdict(render_markdown(rec)) == "PASS"
    a = Anomaly(f"{kind}:redis:queue:jobs", kind, "warning", "redis:queue:jobs", 5, T0 + 5,
                f"{kind} on jobs", {"queue": "jobs"})  # fmt: skip
    t = rec.ticks[5]
    rec.ticks[5] = dataclasses.replace(t, anomalies=(*t.anomalies, a))
    md = render_markdown(rec)
    assert verdict(md) == "FAIL"
    assert f"Raised during the run: {kind}" in md


def test_other_anomalies_alone_do_not_fail_it() -> None:
    rec = make_recording()
    a = Anomaly("queue-backlog:redis:queue:jobs", "queue-backlog", "warning",
                "redis:queue:jobs", 5, T0 + 5, "backlog", {"queue": "jobs"})  # fmt: skip
    t = rec.ticks[5]
    rec.ticks[5] = dataclasses.replace(t, anomalies=(*t.anomalies, a))
    assert verdict(render_markdown(rec)) == "PASS"


def test_the_verdict_is_said_once() -> None:
    """A merge once left the 'Verdict:' line in the headline twice."""
    md = render_markdown(make_recording())
    assert [ln for ln in md.splitlines() if ln.startswith("Verdict:")] == [
        "Verdict: every threshold, SLO and invariant held; cleanup complete."
    ]
