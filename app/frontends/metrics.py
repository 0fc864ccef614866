"""`--metrics HOST:PORT`: the session's ticks as Prometheus metrics.

A pipeline output like the headless printer: `MetricsExporter.on_tick` folds
each tick into running totals (on the session's thread), and a small HTTP
server on its own thread serves `/metrics` in the OpenMetrics text format,
built by `prometheus_client` from a custom collector over those totals.

Everything is derived from the ticks, so what Grafana shows is what the
recording holds: the counters equal the recording's totals, and the latency
histogram's buckets are counted from each tick's HdrHistogram (no sampling).

    loadtop_operations_total{scenario,outcome}    counter  outcome: ok | failed
    loadtop_errors_total{scenario,class}          counter  failed operations by error class
    loadtop_operation_duration_seconds{scenario}  histogram  (ok and failed operations)
    loadtop_in_flight{scenario}                   gauge    started and not yet completed
    loadtop_workers{scenario}                     gauge    workers alive (achieved)
    loadtop_target_workers{scenario}              gauge    workers the scenario should have
    loadtop_anomaly_active{kind,severity}         gauge    anomalies raised now (0 once cleared)
    loadtop_faults_total{kind}                    counter  fault injections ("fault" events)
    loadtop_plan_step                             gauge    the ramp plan's step (1-based; 0: none)
    loadtop_ticks_total                           counter
    loadtop_info{version,run_id}                  info

and what the probes read last (the latest reading of each probe; a series
whose subject is gone from the reading is gone from the next scrape, so the
set stays as small as what the targets hold now):

    loadtop_probe_up{probe}                          1 = the last poll answered
    loadtop_probe_duration_seconds{probe}            how long the last poll took
    loadtop_pg_connections{state}                    client backends by state
    loadtop_pg_connections_usable                    max_connections - reserved slots
    loadtop_pg_lock_waiters                          backends waiting on a lock
    loadtop_pg_oldest_xact_seconds                   the oldest open transaction's age
    loadtop_redis_connected_clients / _blocked_clients / _ops_per_sec / _used_memory_bytes
    loadtop_redis_locks                              lock keys held now
    loadtop_queue_depth{source,layout,queue}         ready items
    loadtop_queue_oldest_age_seconds{source,layout,queue}
    loadtop_queue_consumers{source,layout,queue}     consumers alive (when countable)
    loadtop_pod_cpu_cores{pod,container} / loadtop_pod_memory_bytes{pod,container}
    loadtop_pod_restarts{pod,container}
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from app import __version__
from app.frontends.streams import block_sigpipe
from app.tick import HIST_MAX_US, Tick, mean_value

# Bucket bounds in seconds: 1-2.5-5 steps from 25 µs (a Redis command on
# loopback) to 60 s (the top of the HdrHistogram), so one dashboard reads a
# Redis run and a slow HTTP run alike; the run's SLO and --abort-on latency
# limits are added as bounds of their own, so histogram_quantile is exact
# where the verdict is decided.
LADDER_S = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def latency_buckets(
    slo: Mapping[str, float] | None = None, limits_ms: Iterable[float] = ()
) -> list[float]:
    """The histogram's upper bounds in seconds (without +Inf): the ladder, plus
    the SLO's p95/p99 and the latency thresholds, within the histogram's range."""
    extra = [v for k, v in (slo or {}).items() if k.endswith("_ms")]
    bounds = set(LADDER_S)
    for ms in (*extra, *limits_ms):
        s = round(float(ms) / 1000.0, 6)
        if 0 < s <= HIST_MAX_US / 1e6:
            bounds.add(s)
    return sorted(bounds)


def bucket_counts(h: Any, bounds_us: Sequence[int]) -> list[int]:
    """How many of `h`'s values fall at or under each bound (µs), cumulative,
    from the histogram's own counts. HdrHistogram keeps a value in a bucket
    3 significant digits wide; a value counts under a bound when its bucket
    starts at or under it (below 2 ms every microsecond is its own bucket)."""
    total = h.get_total_count()
    if not total:
        return [0 for _ in bounds_us]
    top = h._counts_index_for(h.get_max_value()) + 1
    fmt: Any = {2: "H", 4: "I", 8: "Q"}[h.word_size]
    counts = memoryview(h.counts).cast("B").cast(fmt)[:top]
    cum = list(itertools.accumulate(counts))
    out = []
    for b in bounds_us:
        i = h._counts_index_for(b)
        out.append(cum[min(i, top - 1)] if i >= 0 else 0)
    return out


class _Scenario:
    __slots__ = ("buckets", "count", "errors", "failed", "ok", "started", "sum_us", "target",
                 "workers")  # fmt: skip

    def __init__(self, n_bounds: int) -> None:
        self.ok = 0
        self.failed = 0
        self.started = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * n_bounds
        self.count = 0
        self.sum_us = 0.0
        self.workers = 0
        self.target = 0


class MetricsExporter:
    """Running totals over the ticks, and the collector that exposes them.
    `on_tick` is the pipeline output; `collect` is called by the HTTP thread."""

    def __init__(
        self,
        *,
        run_id: str = "",
        scenarios: Iterable[str] = (),
        slo: Mapping[str, float] | None = None,
        limits_ms: Iterable[float] = (),
    ) -> None:
        self.bounds_s = latency_buckets(slo, limits_ms)
        self._bounds_us = [round(b * 1e6) for b in self.bounds_s]
        self.run_id = run_id
        self._lock = threading.Lock()
        # the run's scenarios are series from the first scrape, at zero
        self._scenarios = {name: _Scenario(len(self._bounds_us)) for name in scenarios}
        self._anomalies: dict[tuple[str, str], int] = {}
        self._faults: dict[str, int] = {}
        self._plan_step = 0
        self._ticks = 0
        self._probes: list[Gauge] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]

    # ---- the pipeline output (session thread) -------------------------------------
    def on_tick(self, tick: Tick) -> None:
        probes = probe_gauges(tick.readings)
        per = [(s, bucket_counts(s.hist, self._bounds_us), s.hist.get_total_count(),
                mean_value(s.hist) * s.hist.get_total_count()) for s in tick.scenarios]  # fmt: skip
        with self._lock:
            self._ticks += 1
            for s, cum, n, sum_us in per:
                sc = self._scenarios.get(s.name)
                if sc is None:
                    sc = self._scenarios[s.name] = _Scenario(len(self._bounds_us))
                sc.ok += s.ok
                sc.failed += s.failed
                sc.started += s.started
                for cls, k in s.errors.items():
                    sc.errors[cls] = sc.errors.get(cls, 0) + k
                sc.buckets = [a + b for a, b in zip(sc.buckets, cum, strict=True)]
                sc.count += n
                sc.sum_us += sum_us
                sc.workers = s.concurrency
                sc.target = s.target
            for key in self._anomalies:
                self._anomalies[key] = 0
            for a in tick.anomalies:
                key = (a.kind, a.severity)
                self._anomalies[key] = self._anomalies.get(key, 0) + 1
            for e in tick.events:
                if e.kind == "fault":
                    kind = fault_kind(e.note)
                    self._faults[kind] = self._faults.get(kind, 0) + 1
            self._plan_step = tick.plan_step + 1 if tick.plan_step is not None else 0
            self._probes = probes

    # ---- the collector (HTTP thread) ------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        with self._lock:
            scen = {
                name: (sc.ok, sc.failed, sc.started, dict(sc.errors), list(sc.buckets),
                       sc.count, sc.sum_us, sc.workers, sc.target)
                for name, sc in self._scenarios.items()
            }  # fmt: skip
            anomalies = dict(self._anomalies)
            faults = dict(self._faults)
            step, ticks = self._plan_step, self._ticks
            probes = self._probes
        info = InfoMetricFamily("loadtop", "the loadtop that serves these metrics",
                                labels=["version", "run_id"])  # fmt: skip
        info.add_metric([__version__, self.run_id], {})
        yield info
        ops = CounterMetricFamily("loadtop_operations", "completed operations by outcome",
                                  labels=["scenario", "outcome"])  # fmt: skip
        errs = CounterMetricFamily("loadtop_errors", "failed operations by error class",
                                   labels=["scenario", "class"])  # fmt: skip
        lat = HistogramMetricFamily("loadtop_operation_duration_seconds",
                                    "latency of completed operations (ok and failed)",
                                    labels=["scenario"], unit="seconds")  # fmt: skip
        inflight = GaugeMetricFamily("loadtop_in_flight", "operations started, not completed",
                                     labels=["scenario"])  # fmt: skip
        workers = GaugeMetricFamily("loadtop_workers", "workers alive at the last tick",
                                    labels=["scenario"])  # fmt: skip
        target = GaugeMetricFamily("loadtop_target_workers", "workers the scenario should have",
                                   labels=["scenario"])  # fmt: skip
        for name, (ok, failed, started, errors, cum, n, sum_us, w, tg) in scen.items():
            ops.add_metric([name, "ok"], ok)
            ops.add_metric([name, "failed"], failed)
            for cls, k in sorted(errors.items()):
                errs.add_metric([name, cls], k)
            buckets = [(_le(b), float(c)) for b, c in zip(self.bounds_s, cum, strict=True)]
            buckets.append(("+Inf", float(n)))
            lat.add_metric([name], buckets, sum_us / 1e6)
            inflight.add_metric([name], max(started - ok - failed, 0))
            workers.add_metric([name], w)
            target.add_metric([name], tg)
        yield from (ops, errs, lat, inflight, workers, target)
        active = GaugeMetricFamily("loadtop_anomaly_active", "anomalies raised now",
                                   labels=["kind", "severity"])  # fmt: skip
        for (kind, sev), k in sorted(anomalies.items()):
            active.add_metric([kind, sev], k)
        yield active
        fam = CounterMetricFamily("loadtop_faults", "fault injections by kind", labels=["kind"])
        for kind, k in sorted(faults.items()):
            fam.add_metric([kind], k)
        yield fam
        yield GaugeMetricFamily("loadtop_plan_step", "the ramp plan's step, 1-based (0: none)",
                                value=step)  # fmt: skip
        yield CounterMetricFamily("loadtop_ticks", "ticks closed", value=ticks)
        yield from _gauge_families(probes)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# One probe series: (metric name, help, labels, value). Built on the session
# thread from the tick's readings, turned into families on the HTTP thread.
Gauge = tuple[str, str, tuple[tuple[str, str], ...], float]

_PG = (
    ("connections_usable", "usable_connections", "max_connections minus reserved slots"),
    ("lock_waiters", "waiting", "backends waiting on a lock"),
    ("oldest_xact_seconds", "oldest_xact_s", "age of the oldest open transaction"),
    ("idle_in_transaction", "idle_in_tx_count", "sessions idle in a transaction"),
)
_REDIS = (
    ("connected_clients", "connected_clients", "clients connected"),
    ("blocked_clients", "blocked_clients", "clients blocked in a pop"),
    ("ops_per_sec", "ops_per_sec", "commands per second (INFO instantaneous_ops_per_sec)"),
    ("used_memory_bytes", "used_memory", "memory in use"),
)
_QUEUE = (
    ("depth", "depth", "ready items"),
    ("oldest_age_seconds", "oldest_age_s", "age of the oldest ready item"),
)
_POD = (
    ("cpu_cores", "cpu_cores", "CPU in use"),
    ("memory_bytes", "memory_bytes", "memory in use"),
    ("restarts", "restarts", "container restarts"),
)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def probe_gauges(readings: Mapping[str, Any]) -> list[Gauge]:
    """The latest probe readings as gauge series; a value the reading does not
    hold is left out, never shown as 0."""
    out: list[Gauge] = []

    def add(name: str, help_: str, value: Any, **labels: str) -> None:
        v = _num(value)
        if v is not None:
            out.append((f"loadtop_{name}", help_, tuple(sorted(labels.items())), v))

    for name, r in sorted(readings.items()):
        add("probe_up", "1 when the probe's last poll answered", 1 if r.ok else 0, probe=name)
        add("probe_duration_seconds", "how long the probe's last poll took",
            r.duration_ms / 1000.0, probe=name)  # fmt: skip
        if not r.ok:
            continue
        d = r.data
        if r.probe == "postgres":
            for state, k in sorted((d.get("by_state") or {}).items()):
                add("pg_connections", "client backends by state", k, state=state)
            for metric, key, help_ in _PG:
                add(f"pg_{metric}", help_, d.get(key))
        elif r.probe == "redis":
            for metric, key, help_ in _REDIS:
                add(f"redis_{metric}", help_, d.get(key))
            add("redis_locks", "lock keys held now", len(d.get("locks") or ()))
        elif r.probe == "pods":
            for c in d.get("containers") or ():
                for metric, key, help_ in _POD:
                    add(f"pod_{metric}", help_, c.get(key), pod=str(c.get("pod", "")),
                        container=str(c.get("container", "")))  # fmt: skip
        if r.probe in ("redis", "pg_queues"):
            for q in d.get("queues") or ():
                labels = {"source": str(q.get("source") or ("postgres" if r.probe ==
                          "pg_queues" else "redis")), "layout": str(q.get("layout", "")),
                          "queue": str(q.get("name", ""))}  # fmt: skip
                for metric, key, help_ in _QUEUE:
                    add(f"queue_{metric}", help_, q.get(key), **labels)
                add("queue_consumers", "consumers alive, where they can be counted",
                    (q.get("consumers") or {}).get("count"), **labels)  # fmt: skip
    return out


def _gauge_families(series: Sequence[Gauge]) -> Iterator[Metric]:
    fams: dict[str, GaugeMetricFamily] = {}
    for name, help_, labels, value in series:
        fam = fams.get(name)
        if fam is None:
            fam = fams[name] = GaugeMetricFamily(name, help_, labels=[k for k, _ in labels])
        fam.add_metric([v for _, v in labels], value)
    yield from fams.values()


def fault_kind(note: str) -> str:
    """The action of a "fault" event, from its note ("#2 pod-kill: pod api-7f9")."""
    head = note.split(":", 1)[0].strip()
    kind = head.split(" ", 1)[-1] if head.startswith("#") else head
    return kind or "fault"


def _le(bound_s: float) -> str:
    return repr(float(bound_s))


class MetricsServer:
    """The exporter's HTTP endpoint on a daemon thread: `GET /metrics` (and `/`).
    Binds in the constructor, so a port in use is an error at start."""

    def __init__(self, exporter: MetricsExporter, host: str, port: int) -> None:
        self.exporter = exporter

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                body = exporter.render()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the console owns the terminal

        family = _family(host)

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a scraper that left mid-answer: nothing to print on the console

        server_cls = Server
        self.httpd = server_cls((host, port), Handler)
        self.host = host
        self.port = int(self.httpd.server_address[1])

        def serve() -> None:
            block_sigpipe()
            self.httpd.serve_forever()

        self._thread = threading.Thread(target=serve, name="loadtop-metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET
