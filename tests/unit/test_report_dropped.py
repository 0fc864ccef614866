"""A fixed-rate run that could not start what it was asked to is not a PASS:
its latencies describe a lighter load than the one asked for. Judged from the
ticks' scheduled and dropped counts, with `--slo dropped=N%` to set the bar."""

from __future__ import annotations

import dataclasses

import pytest

from app.session.config import parse_slo
from app.session.recording import Recording
from app.session.report import build_summary, render_markdown
from tests.unit.ticks import make_recording


def rate_run(scheduled: int, dropped: int, slo: dict[str, float] | None = None) -> Recording:
    """The stock recording as a --rate run: every window scheduled `scheduled`
    starts and dropped `dropped` of them."""
    rec = make_recording(anomalies=False)
    for i, t in enumerate(rec.ticks):
        wins = tuple(dataclasses.replace(s, scheduled=scheduled, dropped=dropped)
                     for s in t.scenarios)  # fmt: skip
        rec.ticks[i] = dataclasses.replace(t, mode="rate", scenarios=wins)
    if slo is not None:
        rec.header["slo"] = slo
    return rec


def test_most_starts_dropped_fails_and_says_what_to_do() -> None:
    s = build_summary(rate_run(1000, 600))
    assert s["total"]["dropped_pct"] == 60.0
    assert s["verdict"]["verdict"] == "FAIL"
    why = s["verdict"]["why"]
    assert "dropped < 1%" in why and "60% of" in why and "raise -c or lower --rate" in why, why
    md = render_markdown(rate_run(1000, 600))
    assert "dropped (60%, no free worker)" in md and "dropped < 1% ❌" in md


def test_a_few_drops_under_the_bar_pass() -> None:
    s = build_summary(rate_run(1000, 5))
    assert s["verdict"]["verdict"] == "PASS", s["verdict"]
    assert "dropped < 1% ✅" in render_markdown(rate_run(1000, 5))


def test_the_bar_is_the_users_to_set() -> None:
    assert build_summary(rate_run(1000, 600, {"dropped_pct": 70.0}))["verdict"]["verdict"] == "PASS"
    # dropped=0%: not one start may be dropped
    zero = {"dropped_pct": 0.0}
    assert build_summary(rate_run(1000, 0, zero))["verdict"]["verdict"] == "PASS"
    assert build_summary(rate_run(1000, 1, zero))["verdict"]["verdict"] == "FAIL"


def test_a_closed_model_run_has_no_such_check() -> None:
    s = build_summary(make_recording(anomalies=False))
    assert not any(k.startswith("dropped") for k in s["slo"]["checks"]), s["slo"]["checks"]


@pytest.mark.parametrize(
    ("text", "want"),
    [("dropped=5%", {"dropped_pct": 5.0}), ("p95=300ms,dropped=0.5", {"p95_ms": 300.0,
                                                                       "dropped_pct": 0.5})],
)  # fmt: skip
def test_slo_flag_takes_dropped(text: str, want: dict[str, float]) -> None:
    assert parse_slo(text) == want
