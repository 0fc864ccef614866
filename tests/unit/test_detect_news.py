"""Headless news (issue 11): a line when an anomaly is raised, when it escalates
(warning -> critical) and when its evidence changes materially (a figure doubles
or halves), not for every tick it stays the same."""

from __future__ import annotations

from app.detect.news import AnomalyNews
from app.tick import Anomaly


def a(sev: str, depth: int, summary: str = "queue jobs") -> Anomaly:
    return Anomaly("queue-backlog:redis:queue:jobs", "queue-backlog", sev, "redis:queue:jobs",
                   0, 0.0, summary, {"queue": "jobs", "depth": depth, "consumers_gone": False})  # fmt: skip


def test_raised_escalated_and_material_changes_only() -> None:
    n = AnomalyNews()
    lines = [n.news(x) for x in (a("warning", 230), a("warning", 250), a("warning", 300))]
    assert lines[0] is not None and lines[0].startswith("! queue-backlog")
    assert lines[1:] == [None, None]  # the same anomaly, a little deeper: not news
    up = n.news(a("critical", 310))
    assert up is not None and up.startswith("!! queue-backlog warning -> critical")
    assert n.news(a("critical", 320)) is None
    doubled = n.news(a("critical", 640))
    assert doubled is not None and "depth 310 -> 640" in doubled
    assert n.news(a("warning", 650)) is None  # a lower severity is not news
    n.cleared(a("warning", 0))
    assert n.news(a("warning", 10)) is not None  # raised again after clearing
