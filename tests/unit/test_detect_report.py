"""The anomaly report section: a pure function of the ticks."""

from __future__ import annotations

import json

from app.detect import anomaly_report_data, anomaly_report_section, build_detectors
from tests.detect_support import T0, Run, reading, tick, window


def _usl_x(n: float) -> float:
    return 100.0 * n / (1 + 0.05 * (n - 1) + 0.002 * n * (n - 1))


def _session() -> list:
    """Steps 1..48 on a USL curve; latency by Little's law; a lock-wait chain in
    the 16-worker step; an error burst in the 48-worker step."""
    r = Run(build_detectors(None))
    i = 0
    for n in (1, 2, 4, 8, 16, 32, 48):
        x = _usl_x(n)
        lat = n / x * 1000.0
        for k in range(6):
            errs = {"40P01 deadlock": 5} if n == 48 and k >= 2 else {}
            failed = sum(errs.values())
            pg = {"connections": n, "max_connections": 100, "waiting": 0, "blocking_tree": []}
            if n == 16 and 1 <= k <= 4:
                pg["blocking_tree"] = [
                    {
                        "root": {
                            "pid": 4242,
                            "application_name": "psql",
                            "state": "active",
                            "xact_age_s": 30.0,
                            "query": "ALTER TABLE t ADD c int",
                        },
                        "waiters": [{"pid": 1, "state_age_s": 3.0}],
                        "depth": 1,
                        "waiting_count": 6,
                    }
                ]
            # fmt: skip
            r.feed(
                tick(
                    i,
                    [window(target=n, ok=round(x) - failed, failed=failed, errors=errs,
                            lat_ms=lat, seed=i)],
                    readings={"postgres": reading("postgres", pg, t=T0 + i + 0.5)},
                )
            )  # fmt: skip
            i += 1
    return r.ticks


def test_report_data_timeline_ranking_and_capacity() -> None:
    ticks = _session()
    d = anomaly_report_data(ticks)
    json.dumps(d)  # JSON-able
    kinds = {e["kind"] for e in d["anomalies"]}
    assert {"lock-wait-chain", "error-burst", "capacity-knee"} <= kinds
    chain = next(e for e in d["anomalies"] if e["kind"] == "lock-wait-chain")
    assert chain["evidence"]["root"]["pid"] == 4242
    assert chain["to_s"] is not None and chain["duration_s"] > 0
    assert chain["time_to_detect_ticks"] == 1
    assert d["look_here_first"][0]["severity"] == "critical"
    assert [s["target"] for s in d["steps"]] == [1, 2, 4, 8, 16, 32, 48]
    usl = d["usl"]
    assert usl is not None and 15 < usl["n_peak"] < 30
    # Little's law latency: 22 ms at 16 workers, 45 ms at 32, 79 ms at 48 (with deadlocks)
    assert d["recommended_max_concurrency"] == 32
    d2 = anomaly_report_data(ticks, slo={"p95": 30})
    assert d2["recommended_max_concurrency"] == 16
    d3 = anomaly_report_data(ticks, slo={"error_pct": 1})  # the session report's unit
    assert d3["slo"]["error_ratio"] == 0.01 and d3["recommended_max_concurrency"] == 48


def test_report_markdown() -> None:
    md = anomaly_report_section(_session())
    assert "### Look here first" in md and "### Timeline" in md and "### Capacity" in md
    assert "| lock-wait-chain |" in md and "4242" in md
    assert "USL fit over 7 steps" in md and "sigma" in md
    assert "Recommended maximum concurrency: **32**" in md


def test_report_of_a_quiet_or_empty_run() -> None:
    ticks = [tick(i, [window(seed=i)]) for i in range(10)]
    md = anomaly_report_section(ticks)
    assert "No anomalies were raised." in md
    assert "needs at least 3 steps" in md
    assert anomaly_report_data([])["anomalies"] == []
    assert "No anomalies" in anomaly_report_section([])
