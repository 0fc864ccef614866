"""`--metrics`: Prometheus metrics from the ticks, scraped during a real run
and parsed with prometheus_client's OpenMetrics parser; at the end the
counters equal the recording's totals and the histogram counts every
operation."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from app.frontends.metrics import MetricsExporter, MetricsServer, bucket_counts, latency_buckets
from app.session.config import build_run_config
from app.session.recording import read_recording
from app.session.runner import Session
from app.tick import Anomaly, ControlEvent, Reading, ScenarioWindow, Tick, new_histogram


def _scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list, name: str, **labels: str) -> float:
    hits = [s.value for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]  # fmt: skip
    assert len(hits) == 1, (name, labels, samples)
    return hits[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bucket_counts_come_from_the_histogram() -> None:
    h = new_histogram()
    values = [3, 24, 25, 26, 49, 50, 51, 999, 1000, 1001, 2500, 2501, 70_000, 1_200_000]
    for v in values:
        h.record_value(v)
    bounds = latency_buckets()
    got = bucket_counts(h, [round(b * 1e6) for b in bounds])
    for b, n in zip(bounds, got, strict=True):
        # a value counts under a bound when its HdrHistogram bucket starts at or under it
        want = sum(1 for v in values if h.get_lowest_equivalent_value(v) <= round(b * 1e6))
        assert n == want, (b, n, want)
    assert got[-1] == len(values)
    # the SLO's and the thresholds' latencies become bounds of their own
    assert 0.3 in latency_buckets({"p95_ms": 300.0}) and 0.75 in latency_buckets(limits_ms=[750])


def _tick(i: int, *, anomalies=(), events=(), step=None, failed: int = 0) -> Tick:
    h = new_histogram()
    for v in range(1 + failed):
        h.record_value(1000 + i + v)
    w = ScenarioWindow(name="s", concurrency=2, target=3, started=2 + failed, ok=1,
                       failed=failed, errors={"timeout": failed} if failed else {},
                       hist=h)  # fmt: skip
    return Tick(index=i, t=100.0 + i, elapsed=i + 1.0, interval=1.0, mode="workers",
                target_concurrency=3, concurrency=2, scenarios=(w,), anomalies=tuple(anomalies),
                events=tuple(events), plan_step=step)  # fmt: skip


def test_anomalies_faults_and_plan_step() -> None:
    ex = MetricsExporter(run_id="r1")
    spike = Anomaly(key="latency-spike:s", kind="latency-spike", severity="warning", subject="s",
                    started_tick=0, started_at=100.0, summary="p95 up")  # fmt: skip
    fault = ControlEvent(100.5, "fault", "key", 1.0, 10.0, "#1 pg-lock: table orders")
    ex.on_tick(_tick(0, anomalies=[spike], events=[fault], step=0))
    m = {f.name: f.samples for f in text_string_to_metric_families(ex.render().decode())}
    assert _value(m["loadtop_anomaly_active"], "loadtop_anomaly_active",
                  kind="latency-spike", severity="warning") == 1  # fmt: skip
    assert _value(m["loadtop_faults"], "loadtop_faults_total", kind="pg-lock") == 1
    assert _value(m["loadtop_plan_step"], "loadtop_plan_step") == 1
    assert _value(m["loadtop_in_flight"], "loadtop_in_flight", scenario="s") == 1
    ex.on_tick(_tick(1, events=[ControlEvent(101.5, "fault-heal", "system", 1.0)], step=1))
    m = {f.name: f.samples for f in text_string_to_metric_families(ex.render().decode())}
    # cleared: the series stays, at 0, so a graph shows it end
    assert _value(m["loadtop_anomaly_active"], "loadtop_anomaly_active",
                  kind="latency-spike", severity="warning") == 0  # fmt: skip
    assert _value(m["loadtop_faults"], "loadtop_faults_total", kind="pg-lock") == 1
    assert _value(m["loadtop_plan_step"], "loadtop_plan_step") == 2
    assert _value(m["loadtop_ticks"], "loadtop_ticks_total") == 2
    assert _value(m["loadtop_target_workers"], "loadtop_target_workers", scenario="s") == 3


def test_probe_readings_are_gauges_of_the_latest_poll() -> None:
    ex = MetricsExporter(run_id="r1")
    pg = Reading("postgres", 100.0, True, 12.5, {
        "by_state": {"active": 3, "idle in transaction": 1}, "waiting": 2,
        "usable_connections": 97, "oldest_xact_s": 4.5, "idle_in_tx_count": 1})  # fmt: skip
    rd = Reading("redis", 100.0, True, 3.0, {
        "connected_clients": 7, "blocked_clients": 2, "ops_per_sec": 1500.0,
        "used_memory": 1_048_576, "locks": [{"key": "lock:a"}, {"key": "lock:b"}],
        "queues": [{"name": "emails", "layout": "rq", "depth": 40, "oldest_age_s": 12.0,
                    "consumers": {"count": 0, "kind": "heartbeats"}},
                   {"name": "raw", "layout": "list", "depth": 5, "oldest_age_s": None}]})  # fmt: skip
    pods = Reading("pods", 100.0, False, 2000.0, {"failures": 3}, "pods: timed out")
    t = _tick(0)
    ex.on_tick(replace(t, readings={"postgres": pg, "redis": rd, "pods": pods}))
    m = {f.name: f.samples for f in text_string_to_metric_families(ex.render().decode())}
    assert _value(m["loadtop_probe_up"], "loadtop_probe_up", probe="postgres") == 1
    assert _value(m["loadtop_probe_up"], "loadtop_probe_up", probe="pods") == 0
    assert _value(m["loadtop_probe_duration_seconds"], "loadtop_probe_duration_seconds",
                  probe="pods") == 2.0  # fmt: skip
    assert _value(m["loadtop_pg_connections"], "loadtop_pg_connections",
                  state="idle in transaction") == 1  # fmt: skip
    assert _value(m["loadtop_pg_lock_waiters"], "loadtop_pg_lock_waiters") == 2
    assert _value(m["loadtop_redis_locks"], "loadtop_redis_locks") == 2
    assert _value(m["loadtop_redis_used_memory_bytes"], "loadtop_redis_used_memory_bytes") == 2**20
    assert _value(m["loadtop_queue_depth"], "loadtop_queue_depth", queue="emails", layout="rq",
                  source="redis") == 40  # fmt: skip
    assert _value(m["loadtop_queue_consumers"], "loadtop_queue_consumers", queue="emails") == 0
    # a value the reading does not hold is left out, not shown as 0
    ages = m["loadtop_queue_oldest_age_seconds"]
    assert [s.labels["queue"] for s in ages] == ["emails"]
    assert "loadtop_pod_restarts" not in m  # the pods poll failed: no pod series
    # the next tick without the queue: its series is gone (the set tracks what exists now)
    rd2 = Reading("redis", 101.0, True, 3.0, {"connected_clients": 5, "queues": []})
    ex.on_tick(replace(t, index=1, readings={"redis": rd2}))
    m = {f.name: f.samples for f in text_string_to_metric_families(ex.render().decode())}
    assert "loadtop_queue_depth" not in m and "loadtop_pg_connections" not in m
    assert _value(m["loadtop_redis_connected_clients"], "loadtop_redis_connected_clients") == 5


@pytest.mark.integration
async def test_scraped_during_a_real_run_and_equal_to_the_recording_at_the_end(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    rec_path = tmp_path / "run.jsonl"
    args = SimpleNamespace(
        scenario=["opposite-order", "rate-limit"], pg=pg_dsn, redis=redis_url, concurrency="4",
        duration="4s", headless=True, record=str(rec_path), params=["hold_ms=2"],
        slo="p95=40ms", no_probes=True, allow_faults=True,
        fault=["at=1s,kind=redis-pause,ms=300"],
    )  # fmt: skip
    cfg = build_run_config(args, profile={}, env={})
    exporter = MetricsExporter(run_id=cfg.run_id, slo=cfg.slo,
                               scenarios=[c.name for c, _ in cfg.scenarios])  # fmt: skip
    server = MetricsServer(exporter, "127.0.0.1", 0).start()
    try:
        session = Session(cfg)
        session.subscribe(exporter.on_tick)
        run = asyncio.create_task(session.run())
        during = []
        while not run.done():
            await asyncio.sleep(0.7)
            during.append(await asyncio.to_thread(_scrape, server.url))
        outcome = await run
        final = await asyncio.to_thread(_scrape, server.url)
    finally:
        server.close()
    assert outcome.ticks >= 4
    # during the run: the counters only grow, and were non-zero before the end
    seen = [_value(m["loadtop_operations"], "loadtop_operations_total",
                   scenario="rate-limit", outcome="ok") for m in during]  # fmt: skip
    assert seen == sorted(seen) and any(v > 0 for v in seen[:-1]), seen
    rec = read_recording(rec_path)
    assert rec.complete and len(rec.ticks) == outcome.ticks
    for name in ("opposite-order", "rate-limit"):
        wins = [s for t in rec.ticks for s in t.scenarios if s.name == name]
        ok, failed = sum(w.ok for w in wins), sum(w.failed for w in wins)
        errors: dict[str, int] = {}
        for w in wins:
            for k, v in w.errors.items():
                errors[k] = errors.get(k, 0) + v
        ops = final["loadtop_operations"]
        assert _value(ops, "loadtop_operations_total", scenario=name, outcome="ok") == ok > 0
        assert _value(ops, "loadtop_operations_total", scenario=name, outcome="failed") == failed
        for cls, n in errors.items():
            assert _value(final["loadtop_errors"], "loadtop_errors_total",
                          scenario=name, **{"class": cls}) == n  # fmt: skip
        got = {s.labels["class"] for s in final["loadtop_errors"]
               if s.labels["scenario"] == name}  # fmt: skip
        assert got == set(errors)
        lat = final["loadtop_operation_duration_seconds"]
        count = _value(lat, "loadtop_operation_duration_seconds_count", scenario=name)
        assert count == ok + failed
        inf = _value(lat, "loadtop_operation_duration_seconds_bucket", scenario=name, le="+Inf")
        assert inf == count
        # 40 ms, the SLO's p95, is a bound of its own
        assert any(s.labels.get("le") == "0.04" for s in lat)
        assert _value(final["loadtop_in_flight"], "loadtop_in_flight", scenario=name) == 0
    # opposite order deadlocks: the errors by class are not an empty promise
    assert any("deadlock" in s.labels["class"] for s in final["loadtop_errors"])
    assert _value(final["loadtop_ticks"], "loadtop_ticks_total") == len(rec.ticks)
    # the fault injected during the run: counted by kind, as the recording has it
    faults = [e for t in rec.ticks for e in t.events if e.kind == "fault"]
    assert len(faults) == 1 and "redis-pause" in faults[0].note
    assert _value(final["loadtop_faults"], "loadtop_faults_total", kind="redis-pause") == 1


def test_the_flag_serves_metrics_during_a_cli_run(pg_dsn: str) -> None:
    port = _free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select", "--pg", pg_dsn,
         "-d", "8s", "--metrics", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LOADTOP_METRICS": ""},
    )  # fmt: skip
    try:
        scraped = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.5)
            try:
                m = _scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                continue
            if _value(m["loadtop_ticks"], "loadtop_ticks_total") >= 1 and "loadtop_probe_up" in m:
                scraped = m
                break
        assert scraped is not None, "no scrape with a tick"
        assert _value(scraped["loadtop_operations"], "loadtop_operations_total",
                      scenario="pg-select", outcome="ok") > 0  # fmt: skip
        # the Postgres probe's reading: pg-select's workers are client backends it counts
        assert _value(scraped["loadtop_probe_up"], "loadtop_probe_up", probe="postgres") == 1
        assert sum(s.value for s in scraped["loadtop_pg_connections"]) >= 1
        # scrapers that leave mid-answer: EPIPE in the server's thread, never a
        # SIGPIPE that would stop the run as if its stdout had closed
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and gone, unread
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "stopped: duration" in out, out
    assert "Traceback" not in err and "reset" not in err, err
    assert f"metrics on http://127.0.0.1:{port}/metrics" in err


@pytest.mark.parametrize(
    ("value", "says"),
    [("localhost:99999", "out of range"), ("nohost.invalid:9108", "not an address"),
     ("9108:x", "not HOST:PORT")],
)  # fmt: skip
def test_bad_metrics_address_is_one_line_exit_2(value: str, says: str) -> None:
    p = subprocess.run([sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select",
                        "--metrics", value], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_metrics_port_in_use_is_exit_2_before_anything_starts(pg_dsn: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select",
                            "--pg", pg_dsn, "--metrics", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "cannot listen" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_the_grafana_dashboard_reads_only_metrics_loadtop_serves() -> None:
    import json
    import re

    dash = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "grafana-loadtop.json").read_text()
    )
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    ex = MetricsExporter(run_id="r1", scenarios=["s"])
    spike = Anomaly(key="k", kind="latency-spike", severity="warning", subject="s",
                    started_tick=0, started_at=100.0, summary="p95 up")  # fmt: skip
    fault = ControlEvent(1.0, "fault", "key", 1.0, 0.0, "#1 pod-kill: api-1")
    pg = Reading("postgres", 100.0, True, 5.0, {"by_state": {"active": 1}, "waiting": 0})
    rd = Reading("redis", 100.0, True, 5.0, {"queues": [{"name": "q", "layout": "rq", "depth": 1,
                                                         "consumers": {"count": 1}}]})  # fmt: skip
    t = _tick(0, anomalies=[spike], events=[fault], failed=2)
    ex.on_tick(replace(t, readings={"postgres": pg, "redis": rd}))
    served = {s.name: set(s.labels) for f in text_string_to_metric_families(ex.render().decode())
              for s in f.samples}  # fmt: skip
    used = {name for e in exprs for name in re.findall(r"\bloadtop_\w+", e)}
    assert used and used <= set(served), used - set(served)
    assert {"loadtop_operation_duration_seconds_bucket", "loadtop_errors_total",
            "loadtop_anomaly_active", "loadtop_faults_total", "loadtop_queue_depth",
            "loadtop_pg_connections"} <= used  # fmt: skip
    labels = {x.strip() for e in exprs for g in re.findall(r"by \(([^)]*)\)", e)
              for x in g.split(",")}  # fmt: skip
    assert labels <= set().union(*served.values()), labels
