"""Synthetic ticks for tests without a server: real HdrHistograms (filled
through `app.tick.new_histogram`), fixed wall times, fixed probe readings, so
what the console shows is the same on every run.

`tick()` builds one tick from a few figures (the fake session uses it);
`make_ticks()` / `make_recording()` build the fixed 20-tick timeline of the
replay tests and snapshots: a ramp plan 2 → 4 → 8, a lock chain from tick
12, an SLO breach at ticks 14-16, deadlocks at tick 15.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hdrh.histogram import HdrHistogram

from app.session.recording import Recording
from app.tick import (
    Anomaly,
    ControlEvent,
    ControlState,
    Reading,
    ScenarioWindow,
    Tick,
    new_histogram,
)

T0 = 1_790_000_000.0  # a fixed wall time: the snapshots never see a real clock
PLAN = [2, 4, 8]


def hist(base_us: int, spread_us: int, n: int) -> HdrHistogram:
    """n latencies spread over base_us .. base_us + spread_us, deterministically."""
    h = new_histogram()
    for i in range(n):
        h.record_value(base_us + (i * 7919) % max(spread_us, 1))
    return h


def window(
    name: str,
    workers: int,
    *,
    target: int | None = None,
    ops: int = 100,
    base_us: int = 10_000,
    failed: int = 0,
    errors: Mapping[str, int] | None = None,
    counters: Mapping[str, int] | None = None,
) -> ScenarioWindow:
    return ScenarioWindow(
        name=name,
        concurrency=workers,
        target=workers if target is None else target,
        started=ops,
        ok=ops - failed,
        failed=failed,
        errors=dict(errors or {}),
        hist=hist(base_us, base_us * 4, max(ops, 1)),
        counters=dict(counters or {}),
    )


def tick(
    index: int,
    *,
    t: float | None = None,
    concurrency: int = 1,
    target: int | None = None,
    scenarios: Sequence[str] = ("sleepy",),
    paused: bool = False,
    plan_step: int | None = None,
    events: Iterable[ControlEvent] = (),
    readings: Mapping[str, Reading] | None = None,
    anomalies: Iterable[Anomaly] = (),
    ops_per_worker: int = 100,
    control: ControlState | None = None,
) -> Tick:
    """One tick: `concurrency` workers split over `scenarios`, each worker
    completing `ops_per_worker` operations of about 10 ms."""
    names = list(scenarios)
    windows = []
    for k, name in enumerate(names):
        share = concurrency // len(names) + (1 if k < concurrency % len(names) else 0)
        windows.append(window(name, share, ops=share * ops_per_worker))
    return Tick(
        index=index,
        t=T0 + index + 1 if t is None else t,
        elapsed=float(index + 1),
        interval=1.0,
        mode="workers",
        target_concurrency=concurrency if target is None else target,
        concurrency=concurrency,
        paused=paused,
        plan_step=plan_step,
        scenarios=tuple(windows),
        readings=dict(readings or {}),
        anomalies=tuple(anomalies),
        events=tuple(events),
        control=control,
    )


# ---- probe readings ------------------------------------------------------------------


def blocking_tree(
    root_pid: int, *, app_name: str, waiters: int = 2, age_s: float = 3.5
) -> list[dict[str, Any]]:
    """pg probe's `blocking_tree`: one idle-in-transaction root, `waiters` behind it."""
    return [
        {
            "root": {
                "pid": root_pid,
                "application_name": app_name,
                "usename": "app",
                "state": "idle in transaction",
                "wait_event_type": "Client",
                "wait_event": "ClientRead",
                "xact_age_s": age_s,
                "state_age_s": 3.0,
                "query": "UPDATE products SET quantity = quantity - $2 WHERE id = $1",
            },
            "waiters": [
                {
                    "pid": root_pid + 58 + k,
                    "application_name": f"loadtop:stock-reservation:w{k}",
                    "state": "active",
                    "wait_event_type": "Lock",
                    "wait_event": "transactionid",
                    "xact_age_s": 1.0 + k,
                    "query": "SELECT quantity FROM products WHERE id = $1 FOR UPDATE",
                    "blocked_by": [root_pid],
                }
                for k in range(waiters)
            ],
            "depth": 1,
            "waiting_count": waiters,
        }
    ]


def pg_reading(
    i: int,
    *,
    waiting: int | None = None,
    root_pid: int = 4242,
    app_name: str = "loadtop:stock-reservation:w3",
) -> Reading:
    """The pg probe at tick i: from tick 12 (or with `waiting`), backend
    `root_pid` holds a row lock that `waiting` backends queue behind."""
    waiting = (2 if i >= 12 else 0) if waiting is None else waiting
    tree = []
    if waiting:
        tree = blocking_tree(root_pid, app_name=app_name, waiters=waiting, age_s=3.5 + i)
    data = {
        "server_version": "18.0",
        "max_connections": 100,
        "connections": 6 + i % 3,
        "by_state": {"active": 4, "idle": 2, "idle in transaction": 1 if waiting else 0},
        "by_wait": {"Lock:transactionid": waiting},
        "waiting": waiting,
        "blocking_tree": tree,
        "oldest_xact_s": 3.5 + i if waiting else 0.01,
        "rates": {"commits": 900.0 + i, "rollbacks": 0.0, "deadlocks": 0.0},
    }
    return Reading("postgres", T0 + i, True, 4.0, data)


def redis_reading(i: int) -> Reading:
    data = {
        "version": "8.0.0",
        "ops_per_sec": 1500.0,
        "connected_clients": 9,
        "blocked_clients": 1,
        "used_memory": 2_000_000,
        "maxmemory": 0,
        "locks": [
            {"key": "orders:lock:7", "holder": "w1:ab12", "pttl_ms": 4200, "age_s": 0.8},
            {
                "key": "cron:lock",
                "holder": "host-3",
                "pttl_ms": None,
                "age_s": 60.0 + i,
                "no_ttl": True,
            },
        ],  # fmt: skip
        "queues": [
            {"name": "jobs", "layout": "list", "depth": 10 * i, "in_flight": 2, "failed": 0}
        ],
    }
    return Reading("redis", T0 + i, True, 2.0, data)


def pods_reading(i: int) -> Reading:
    data = {
        "source": "kubernetes",
        "namespace": "staging",
        "containers": [
            {"pod": "shop-7f9c", "container": "api", "cpu_cores": 0.45, "cpu_limit_cores": 0.5,
             "memory_bytes": 300 * 2**20, "memory_limit_bytes": 512 * 2**20, "restarts": 1,
             "last_reason": "OOMKilled"},
            {"pod": "shop-8d1e", "container": "api", "cpu_cores": 0.12, "cpu_limit_cores": 0.5,
             "memory_bytes": 200 * 2**20, "memory_limit_bytes": 512 * 2**20, "restarts": 0},
        ],
    }  # fmt: skip
    return Reading("pods", T0 + i, True, 30.0, data)


def pg_queues_reading(i: int, queues: list[dict[str, Any]]) -> Reading:
    """The pg_queues probe at tick i with these `queues` (the keys of a Redis
    queue plus source "postgres"), as app.probes.pg_queues reports them."""
    qs = [{"source": "postgres", "consumers": {"kind": "polling", "count": None}, **q}
          for q in queues]  # fmt: skip
    systems = sorted({f"{q['layout']} public" for q in qs})
    return Reading("pg_queues", T0 + i, True, 2.0, {"queues": qs, "systems": systems})


def readings(i: int) -> dict[str, Reading]:
    return {"postgres": pg_reading(i), "redis": redis_reading(i), "pods": pods_reading(i)}


# ---- the fixed replay timeline -----------------------------------------------------------

LOCK_CHAIN = Anomaly(
    "lock-chain:postgres",
    "lock-chain",
    "warning",
    "postgres",
    12,
    T0 + 12,
    "backend 4242 (idle in transaction) blocks 2 backends",
    {"root_pid": 4242},
)
SLO_BREACH = Anomaly(
    "slo:stock-reservation",
    "slo-breach",
    "critical",
    "stock-reservation",
    14,
    T0 + 14,
    "p99 1200ms above the SLO 1000ms",
    {"p99": 1200},
)


def make_ticks(n: int = 20, *, probes: bool = True, anomalies: bool = True) -> list[Tick]:
    ticks = []
    target = PLAN[0]
    for i in range(n):
        events: tuple[ControlEvent, ...] = ()
        step = min(i // 7, len(PLAN) - 1)
        if i % 7 == 0 and i // 7 < len(PLAN):
            before, target = target, PLAN[step]
            events = (
                ControlEvent(T0 + i, "plan-step", "plan", before, target),
                ControlEvent(T0 + i, "concurrency", "plan", before, target),
            )
        scen = []
        for name, base in (("stock-reservation", 1500), ("redis-lock", 600)):
            ops = 400 * target // (1 + i // 10)
            scen.append(
                ScenarioWindow(
                    name=name,
                    concurrency=target // 2,
                    target=target // 2,
                    started=ops,
                    ok=ops - (3 if i == 15 else 0),
                    failed=3 if i == 15 else 0,
                    errors={"40P01": 3} if i == 15 else {},
                    hist=hist(base * (1 + i // 5), base * 4, max(ops, 1)),
                )  # fmt: skip
            )
        active: list[Anomaly] = []
        cleared: list[Anomaly] = []
        if anomalies and i >= 12:
            active.append(LOCK_CHAIN)
        if anomalies and 14 <= i < 17:
            active.append(SLO_BREACH)
        if anomalies and i == 17:
            cleared.append(dataclasses.replace(SLO_BREACH, cleared_tick=17, cleared_at=T0 + 17))
        ticks.append(
            Tick(
                index=i,
                t=T0 + i + 1,
                elapsed=float(i + 1),
                interval=1.0,
                mode="workers",
                target_concurrency=target,
                concurrency=target,
                plan_step=step,
                scenarios=tuple(scen),
                readings=readings(i) if probes else {},
                anomalies=tuple(active),
                cleared=tuple(cleared),
                events=events,
            )  # fmt: skip
        )
    return ticks


def recording_header(**load: Any) -> dict[str, Any]:
    return {
        "type": "header",
        "version": 1,
        "run_id": "snap0001",
        "started": T0,
        "targets": {"postgres": "postgresql://app@db:5432/shop", "redis": "redis://cache:6379/0"},
        "scenarios": [{"name": "stock-reservation", "weight": 1.0}],
        "load": {"mode": "workers", "plan": PLAN, "step_seconds": 7, "interval_s": 1.0, **load},
    }


def make_recording(**kw: Any) -> Recording:
    return Recording(
        header=recording_header(), ticks=make_ticks(**kw), end={"type": "end", "reason": "x"}
    )
