"""Issue 12 report parts on constructed ticks: invariants with the latest
figures (and the first), every violation or "and N more", and the probe-blind
and server-error sections."""

from __future__ import annotations

import dataclasses

from app.detect import build_detectors
from app.session.recording import Recording
from app.session.report import build_summary, render_markdown
from app.tick import Reading, Tick
from tests.pg_watch_support import with_verify

T0 = 1_790_000_000.0


def _tick(i: int, readings: dict | None = None) -> Tick:
    return Tick(index=i, t=T0 + i, elapsed=float(i), interval=1.0, mode="workers",
                target_concurrency=0, concurrency=0, readings=readings or {})  # fmt: skip


def _run(feed, dl: int = 2) -> Recording:
    ds = build_detectors(None)
    ticks = []
    for i in range(6):
        base = with_verify(ds, _tick(i, _pg(i, dl)), feed(i))
        act, clr = ds.evaluate(base)
        ticks.append(dataclasses.replace(base, anomalies=act, cleared=clr))
    header = {"type": "header", "version": 1, "run_id": "r", "started": T0, "targets": {},
              "scenarios": [{"name": "stock"}], "load": {"mode": "workers"}}  # fmt: skip
    return Recording(header=header, ticks=ticks, end={"type": "end", "reason": "duration"})


def _pg(i: int, dl: int = 2) -> dict:
    data = {"database": "shop", "connections": 3, "max_connections": 100, "waiting": 0,
            "blocking_tree": [], "totals": {"deadlocks": dl * i}, "rates": {"deadlocks": 0.0},
            "deltas": {"commits": 100, "rollbacks": 5, "deadlocks": dl if i else 0,
                       "conflicts": 0, "temp_files": 0, "temp_bytes": 0}}  # fmt: skip
    if i == 0:
        data.pop("deltas")
    return {"postgres": Reading("postgres", T0 + i, True, 1.0, data)}


def test_report_shows_latest_invariant_figures_every_violation_and_server_counts() -> None:
    def feed(i: int) -> dict[str, list[str]]:
        if i == 1:
            return {"stock": ["product 3: oversold by 1645 units"]}
        if i == 3:
            return {"stock": ["product 3: oversold by 7395 units"]
                    + [f"order {k}: lost" for k in range(30)]}  # fmt: skip
        return {}

    rec = _run(feed)
    s = build_summary(rec)
    lines = s["invariants"]["stock"]
    assert (
        lines[0]
        == "product 3: oversold by 7395 units (first check: product 3: oversold by 1645 units)"
    )
    assert len(lines) == 31  # 20 anomalies' worth, then the rest carried by "and N more"
    md = render_markdown(rec, s)
    assert "oversold by 7395 units (first check: product 3: oversold by 1645 units)" in md
    assert "- **stock**: and 11 more (all in `--json`)" in md
    # server-side: 5 polls with deltas, 2 deadlocks each, beside loadtop's own 0
    assert s["server_errors"]["deadlocks"] == 10 and s["server_errors"]["polls"] == 5
    assert "| deadlocks (40P01) | 10 | 0 |" in md
    assert md.splitlines()[2].startswith("**FAIL**") and "Server side: 10 deadlocks" in md


def test_watch_report_judges_the_systems_not_an_slo() -> None:
    rec = _run(lambda i: {})
    rec.header["load"] = {"mode": "watch", "interval_s": 1.0}
    md = render_markdown(rec)
    for gone in ("## Steps", "## Thresholds", "SLO verdict", "### Capacity",
                 "Recommended maximum concurrency", "## Invariants", "0 operations"):  # fmt: skip
        assert gone not in md, gone
    # 10 deadlocks on the server: the systems failed, whatever loadtop did
    assert md.splitlines()[2].startswith("**FAIL**")
    assert "Server side: 10 deadlocks (see Errors)." in md
    assert "## Errors" in md and "## Anomalies" in md
    quiet = _run(lambda i: {}, dl=0)
    quiet.header["load"] = {"mode": "watch"}
    md = render_markdown(quiet)
    assert md.splitlines()[2].startswith("**PASS**"), md
    assert "Server side:" not in md
