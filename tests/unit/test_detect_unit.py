"""Detectors on constructed ticks: each kind raises, clears, does not flap,
and stays quiet on clean input."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from app.detect import BUILTIN, KINDS, DetectConfig, build_detectors, fit_usl
from app.tick import GeneratorStats, Percentiles, new_histogram
from tests.detect_support import T0, Run, only, reading, tick, window

# ---- framework -----------------------------------------------------------------------


def test_every_issue_kind_is_registered() -> None:
    wanted = {
        "latency-spike", "slo-breach", "error-burst", "lock-wait-chain",
        "idle-in-transaction-blocker", "long-transaction", "connection-saturation",
        "redis-lock", "queue-backlog", "redis-pressure", "pod", "capacity-knee",
        "invariant", "generator-saturated",
        # issue 11: queues and locks you can trust
        "queue-stuck", "consumers-gone", "queue-pending", "lock-takeover",
    }  # fmt: skip

    # issue 12: server-side errors, contention, cycles, blind probes
    wanted |= {"probe-blind", "pg-deadlocks", "pg-rollbacks", "pg-conflicts", "pg-temp-files",
               "lock-contention", "deadlock-cycle"}  # fmt: skip
    assert wanted == set(KINDS)
    assert set(build_detectors(None).kinds) == wanted


def test_config_from_dict_and_errors() -> None:
    cfg = DetectConfig.from_dict(
        {"latency_spike": {"k": 7}, "slo-breach.p95_ms": "250", "disabled": ["pod"]}, BUILTIN
    )
    assert cfg.options["latency-spike"].k == 7.0
    assert cfg.options["slo-breach"].p95_ms == 250.0
    assert "pod" not in cfg.enabled_kinds()
    assert build_detectors({"enabled": "slo-breach,invariant"}).kinds == ["slo-breach", "invariant"]
    slo = DetectConfig.from_dict({"slo": {"p95_ms": 300, "error_pct": 1}}, BUILTIN).options[
        "slo-breach"
    ]
    assert (slo.p95_ms, slo.p99_ms, slo.error_ratio) == (300.0, 1000.0, 0.01)
    for bad, words in [
        ({"nope": 1}, "valid: enabled, disabled"),
        ({"latency-spike": {"kk": 1}}, "valid: enabled, raise_ticks"),
        ({"enabled": ["latency-spikes"]}, "unknown kind"),
        ({"slo-breach": {"p95_ms": "fast"}}, "not a valid float"),
        ({"slo": {"p90": 1}}, "unknown slo key"),
    ]:
        with pytest.raises(ValueError) as e:
            build_detectors(bad)
        assert words in str(e.value)
        assert "\n" not in str(e.value)


def test_detect_flags() -> None:
    from app.detect import detect_flags

    table = detect_flags(["latency-spike.k=6", "disabled=pod,redis-lock"], {"slo": {"p95_ms": 1}})
    cfg = DetectConfig.from_dict(table, BUILTIN)
    assert cfg.options["latency-spike"].k == 6.0 and cfg.options["slo-breach"].p95_ms == 1.0
    assert "pod" not in cfg.enabled_kinds() and "redis-lock" not in cfg.enabled_kinds()
    for bad in (["k"], ["latency-spike.kk=1"]):
        with pytest.raises(ValueError):
            detect_flags(bad)


def test_config_reference_lists_every_kind() -> None:
    from app.detect import config_reference

    ref = config_reference()
    assert all(f"| `{k}` |" in ref for k in KINDS)
    assert "min_delta_ms=10.0" in ref and "raise_ticks=2" in ref


def test_fast_percentiles_match_hdrh() -> None:
    import random

    h = new_histogram()
    rng = random.Random(3)
    for _ in range(3000):
        h.record_value(rng.randint(1, 5_000_000))
    lat = Percentiles.of(h)  # what TickView.latency gives every detector
    fast = [lat.p50, lat.p95, lat.p99, lat.p999]
    slow = [h.get_value_at_percentile(p) / 1000 for p in (50, 95, 99, 99.9)]
    assert fast == slow
    assert Percentiles.of(new_histogram()).p95 == 0.0


def test_evaluate_is_fast_and_state_bounded() -> None:
    ds = build_detectors(None)
    r = Run(ds)
    pg = {"connections": 10, "max_connections": 100, "blocking_tree": [], "oldest_xact_s": 0.1}
    rd = {"locks": [{"key": f"lock:{i}", "holder": "h", "pttl_ms": 5000, "age_s": 0.1}
                    for i in range(20)], "queues": [{"name": "q", "depth": 3}]}  # fmt: skip
    windows = [window("a", seed=i) for i in range(3)]
    t = []
    for i in range(300):
        tk = tick(i, windows, readings={"postgres": reading("postgres", pg, t=T0 + i),
                                        "redis": reading("redis", rd, t=T0 + i)})  # fmt: skip
        t0 = time.perf_counter()
        r.feed(tk)
        t.append(time.perf_counter() - t0)
    t.sort()
    assert t[len(t) // 2] < 0.002, f"median evaluate {t[len(t) // 2] * 1e3:.2f} ms"
    assert r.kinds_ever() == set()
    assert len(ds._tracks) == 0


def test_a_failing_detector_is_skipped_not_fatal() -> None:
    ds = only(None, "slo-breach", "invariant")

    def boom(*a, **k):
        raise RuntimeError("bug")

    ds.detectors[0].check = boom  # type: ignore[method-assign]
    act, _ = ds.evaluate(replace(tick(0, [window()]), invariants={"s": ("bad",)}))
    assert [a.kind for a in act] == ["invariant"]


# ---- latency-spike -------------------------------------------------------------------


def _steady(i: int, lat: float = 5.0, target: int = 4):
    return tick(i, [window(lat_ms=lat, target=target, seed=i)])


def test_latency_spike_raises_clears_and_names_the_baseline() -> None:
    r = Run(only(None, "latency-spike"))
    for i in range(12):
        r.feed(_steady(i))
    assert r.kinds_ever() == set()
    r.feed(_steady(12, lat=40.0))  # one slow tick is not a spike
    r.feed(_steady(13))
    assert r.kinds_ever() == set()
    for i in range(14, 16):
        r.feed(_steady(i, lat=40.0))
    assert r.first_raised("latency-spike") == 15
    a = r.of("latency-spike")[0]
    assert a.subject == "s" and a.started_tick == 14
    assert a.evidence["baseline_p95_ms"] == pytest.approx(6.0, rel=0.1)
    assert "baseline" in a.summary and "x" in a.summary
    for i in range(16, 24):
        r.feed(_steady(i))
    assert r.first_cleared("latency-spike") == 18  # 3 clean ticks
    assert r.raise_count("latency-spike") == 1


def test_latency_spike_waits_for_a_step_to_settle() -> None:
    r = Run(only(None, "latency-spike"))
    for i in range(10):
        r.feed(_steady(i, target=4))
    # a step change to 16 workers: latency rises with it, which is not a spike
    for i in range(10, 30):
        r.feed(_steady(i, lat=20.0, target=16))
    assert r.kinds_ever() == set()
    # a spike inside the new step is judged against the new step's baseline
    r.feed(_steady(30, lat=200.0, target=16))
    r.feed(_steady(31, lat=200.0, target=16))
    assert r.first_raised("latency-spike") == 31
    assert r.of("latency-spike")[0].evidence["baseline_p95_ms"] > 15


def test_latency_spike_hysteresis_no_flapping() -> None:
    r = Run(only(None, "latency-spike"))
    for i in range(10):
        r.feed(_steady(i))
    # high, then alternate high and "a bit elevated": stays raised, never re-raised
    for i in range(10, 30):
        r.feed(_steady(i, lat=40.0 if i < 12 or i % 2 == 0 else 9.0))
    assert r.raise_count("latency-spike") == 1
    assert r.first_cleared("latency-spike") is None


def _tail(i: int, ops: int, slow_share: float):
    """ops operations at ~5 ms, of which slow_share take 300 ms (a tail-only spike)."""
    w = window(ok=ops, lat_ms=5.0, seed=i)
    for _ in range(int(ops * slow_share)):
        w.hist.record_value(300_000)
    return tick(i, [w])


def test_a_tail_only_spike_needs_enough_operations_to_judge_p99() -> None:
    big = Run(only(None, "latency-spike"))
    small = Run(only(None, "latency-spike"))
    for i in range(10):
        big.feed(_tail(i, 2000, 0.0))
        small.feed(_tail(i, 300, 0.0))
    for i in range(10, 14):  # 2% of operations stall: p99 moves, p95 does not
        big.feed(_tail(i, 2000, 0.02))
        small.feed(_tail(i, 300, 0.02))
    a = big.of("latency-spike")
    assert a and a[0].evidence["metric"] == "p99"
    assert small.kinds_ever() == set()  # 6 slow operations out of 300 are not a p99 to trust


def test_latency_noise_raises_nothing() -> None:
    r = Run(only(None, "latency-spike", "slo-breach"))
    for i in range(200):
        r.feed(tick(i, [window(lat_ms=5.0, spread=0.5, seed=i)]))
    assert r.kinds_ever() == set()


# ---- slo-breach ----------------------------------------------------------------------


def test_slo_breach_latency_and_errors() -> None:
    r = Run(only(None, "slo-breach"))
    for i in range(5):
        r.feed(_steady(i))
    for i in range(5, 8):
        r.feed(_steady(i, lat=700.0))
    assert r.first_raised("slo-breach") == 6  # two ticks in a row
    a = r.of("slo-breach")[0]
    assert a.started_tick == 5 and "p95" in a.summary and a.evidence["p95_ms"] > 500
    for i in range(8, 20):
        r.feed(_steady(i))
    assert r.first_cleared("slo-breach") == 10
    r2 = Run(only(None, "slo-breach"))
    for i in range(5):
        r2.feed(tick(i, [window(ok=99, failed=1, errors={"timeout": 1}, seed=i)]))
    assert r2.first_raised("slo-breach") == 1
    assert "errors" in r2.of("slo-breach")[0].summary


def test_slo_one_slow_tick_is_not_a_breach() -> None:
    r = Run(only(None, "slo-breach"))
    for i in range(10):
        r.feed(_steady(i, lat=800.0 if i == 5 else 5.0))
    assert r.kinds_ever() == set()


# ---- error-burst ---------------------------------------------------------------------


def test_error_burst_names_the_class() -> None:
    r = Run(only(None, "error-burst"))
    for i in range(5):
        r.feed(_steady(i))
    for i in range(5, 9):
        r.feed(tick(i, [window(ok=90, failed=10, errors={"40001 serialization": 10}, seed=i)]))
    assert r.first_raised("error-burst") == 5
    a = r.of("error-burst")[0]
    assert a.subject == "s:40001 serialization"
    assert a.evidence["class"] == "40001 serialization" and "retry" in a.summary
    for i in range(9, 20):
        r.feed(_steady(i))
    cleared = r.first_cleared("error-burst")
    assert cleared is not None and 11 <= cleared <= 14


def test_error_burst_rare_errors_are_not_a_burst_but_deadlocks_are() -> None:
    r = Run(only(None, "error-burst"))
    for i in range(60):  # one timeout every 10 ticks in 100 ops
        r.feed(tick(i, [window(ok=99 + (i % 10 != 0), failed=int(i % 10 == 0),
                               errors={"timeout": 1} if i % 10 == 0 else {}, seed=i)]))  # fmt: skip
    assert r.kinds_ever() == set()
    r.feed(tick(60, [window(ok=98, failed=2, errors={"40P01 deadlock": 2}, seed=1)]))
    assert r.of("error-burst")[0].evidence["class"] == "40P01 deadlock"
    assert r.of("error-burst")[0].severity == "critical"


# ---- postgres kinds ------------------------------------------------------------------


def _be(pid: int, state: str = "active", **kw) -> dict:
    return {"pid": pid, "application_name": f"loadtop:s:w{pid}", "state": state, "query": "UPDATE t",
            "xact_age_s": kw.pop("xact", 5.0), "state_age_s": kw.pop("age", 3.0), **kw}  # fmt: skip


def _pg(i: int, **data) -> dict:
    base = {"connections": 10, "max_connections": 100, "blocking_tree": [], "waiting": 0}
    base.update(data)
    return {"postgres": reading("postgres", base, t=T0 + i + 0.5)}


def test_lock_wait_chain_two_ticks_then_clear() -> None:
    r = Run(only(None, "lock-wait-chain"))
    node = {"root": _be(100, "active", xact=12.0), "waiters": [_be(101), _be(102)],
            "depth": 2, "waiting_count": 2}  # fmt: skip
    for i in range(3):
        r.feed(tick(i, readings=_pg(i)))
    for i in range(3, 6):
        r.feed(tick(i, readings=_pg(i, blocking_tree=[node], waiting=2)))
    assert r.first_raised("lock-wait-chain") == 4
    a = r.of("lock-wait-chain")[0]
    assert a.evidence["root"]["pid"] == 100 and a.evidence["waiting"] == 2
    assert a.evidence["depth"] == 2 and "pid 100" in a.summary
    for i in range(6, 10):
        r.feed(tick(i, readings=_pg(i)))
    assert r.first_cleared("lock-wait-chain") == 7


def test_brief_lock_waits_are_not_a_chain() -> None:
    r = Run(only(None, "lock-wait-chain", "idle-in-transaction-blocker"))
    node = {"root": _be(100, "active"), "waiters": [_be(101, age=0.02)], "depth": 1,
            "waiting_count": 1}  # fmt: skip
    for i in range(20):
        r.feed(tick(i, readings=_pg(i, blocking_tree=[node] if i % 2 else [])))
    assert r.kinds_ever() == set()


def test_idle_in_transaction_blocker() -> None:
    r = Run(only(None, "idle-in-transaction-blocker"))
    node = {"root": _be(7, "idle in transaction", age=4.0), "waiters": [_be(8)], "depth": 1,
            "waiting_count": 1}  # fmt: skip
    r.feed(tick(0, readings=_pg(0)))
    r.feed(tick(1, readings=_pg(1, blocking_tree=[node])))
    a = r.of("idle-in-transaction-blocker")[0]
    assert a.subject == "postgres:pid 7" and "pg_terminate_backend(7)" in a.summary
    assert a.evidence["blocker"]["state"] == "idle in transaction"


def test_long_transaction() -> None:
    r = Run(only({"long-transaction": {"max_xact_s": 10}}, "long-transaction"))
    for i in range(15):
        age = float(i)
        r.feed(tick(i, readings=_pg(i, oldest_xact_s=age, oldest_xact=_be(55, xact=age))))
    assert r.first_raised("long-transaction") == 10
    assert r.of("long-transaction")[0].evidence["backend"]["pid"] == 55
    for i in range(15, 18):
        r.feed(tick(i, readings=_pg(i, oldest_xact_s=0.1, oldest_xact=_be(56, xact=0.1))))
    assert r.first_cleared("long-transaction") == 16


def test_connection_saturation_with_hysteresis() -> None:
    r = Run(only(None, "connection-saturation"))
    seq = [50, 80, 91, 95, 88, 92, 87, 89, 60, 50, 40, 40]
    for i, c in enumerate(seq):
        r.feed(tick(i, readings=_pg(i, connections=c)))
    assert r.first_raised("connection-saturation") == 2
    assert r.raise_count("connection-saturation") == 1
    assert r.first_cleared("connection-saturation") == 10
    r2 = Run(only(None, "connection-saturation"))
    r2.feed(tick(0, [window(ok=50, failed=5, errors={"53300 too many connections": 5})]))
    assert r2.of("connection-saturation")[0].subject == "pool:s"


def test_stale_or_failed_readings_are_ignored() -> None:
    r = Run(only(None, "connection-saturation"))
    old = {"postgres": reading("postgres", {"connections": 99, "max_connections": 100}, t=T0 - 100)}
    bad = {"postgres": reading("postgres", {"connections": 99, "max_connections": 100},
                               t=T0 + 2, ok=False)}  # fmt: skip
    r.feed(tick(0, readings=old))
    r.feed(tick(1, readings=bad))
    assert r.kinds_ever() == set()


# ---- redis kinds ---------------------------------------------------------------------


def _rd(i: int, **data) -> dict:
    base = {"locks": [], "queues": [], "blocked_clients": 0, "connected_clients": 10,
            "used_memory": 1000,
            "maxmemory": 0, "evicted_keys_delta": 0, "rejected_connections_delta": 0}  # fmt: skip
    base.update(data)
    return {"redis": reading("redis", base, t=T0 + i + 0.5)}


def test_redis_lock_no_ttl() -> None:
    r = Run(only({"redis-lock": {"no_ttl_after_s": 3}}, "redis-lock"))
    for i in range(6):
        lk = {"key": "lock:orders", "holder": "tokA", "pttl_ms": None, "age_s": float(i),
              "no_ttl": True}  # fmt: skip
        r.feed(tick(i, readings=_rd(i, locks=[lk])))
    assert r.first_raised("redis-lock") == 3
    a = r.of("redis-lock")[0]
    assert a.subject == "redis:lock:lock:orders" and a.evidence["holder"] == "tokA"
    assert "no TTL" in a.summary
    r.feed(tick(6, readings=_rd(6)))
    r.feed(tick(7, readings=_rd(7)))
    assert r.first_cleared("redis-lock") == 7


def test_redis_lock_held_far_past_usual() -> None:
    r = Run(only({"redis-lock": {"min_excess_s": 1.0}}, "redis-lock"))
    i = 0
    # a stream of short holds (each seen once, so about half a poll) by changing holders
    for n in range(8):
        lk = {"key": "lock:job:1", "holder": f"h{n}", "pttl_ms": 9000, "age_s": 0.0}
        r.feed(tick(i, readings=_rd(i, locks=[lk])))
        i += 1
    assert r.kinds_ever() == set()
    onset = i
    for k in range(8):
        lk = {"key": "lock:job:2", "holder": "slow", "pttl_ms": 9000 + 10 * k, "age_s": float(k)}
        r.feed(tick(i, readings=_rd(i, locks=[lk])))
        i += 1
    raised = r.first_raised("redis-lock")
    assert raised is not None and raised - onset <= 5
    a = r.of("redis-lock")[0]
    assert "usually" in a.summary and a.evidence["usual_hold_s"] == pytest.approx(0.5)


def test_redis_lock_expired_under_holder_and_taken() -> None:
    r = Run(only(None, "redis-lock"))
    lkA = {"key": "lock:pay", "holder": "A", "pttl_ms": 800, "age_s": 0.2}
    lkB = {"key": "lock:pay", "holder": "B", "pttl_ms": 1500, "age_s": 0.1}
    r.feed(tick(0, readings=_rd(0, locks=[lkA])))
    r.feed(tick(1, readings=_rd(1, locks=[lkB])))
    assert r.kinds_ever() == set()  # a holder change alone proves nothing
    r.feed(tick(2, [window(ok=5, failed=1, errors={"redis LockNotOwnedError": 1})],
                readings=_rd(2, locks=[lkB])))  # fmt: skip
    a = r.of("redis-lock")[0]
    assert a.evidence["expired_holder"] == "A" and a.evidence["new_holder"] == "B"
    assert a.severity == "critical" and "two holders" in a.summary


def test_queue_backlog_growth_and_drain() -> None:
    r = Run(only(None, "queue-backlog"))
    i = 0
    for _ in range(10):  # steady small queue with blocked consumers
        r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": 5}], blocked_clients=3)))
        i += 1
    for d in range(200, 0, -50):  # a drain to learn the service rate
        r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": d}], blocked_clients=3)))
        i += 1
    onset = i
    depth = 0
    for _ in range(10):
        depth += 40
        r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": depth}],
                                    blocked_clients=3)))  # fmt: skip
        i += 1
    raised = r.first_raised("queue-backlog")
    assert raised is not None and raised - onset <= 5
    a = r.of("queue-backlog")[0]
    assert a.evidence["growth_per_s"] > 10 and a.evidence["time_to_drain_s"] is not None
    assert not a.evidence["consumers_gone"]
    for _ in range(4):  # the consumers are busy, not blocked, but still connected
        depth += 40
        r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": depth}],
                                    blocked_clients=0, connected_clients=10)))  # fmt: skip
        i += 1
    assert not r.of("queue-backlog")[0].evidence["consumers_gone"]
    for _ in range(8):  # consumers go away while it grows
        depth += 40
        r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": depth}],
                                    blocked_clients=0, connected_clients=7)))  # fmt: skip
        i += 1
    a = r.of("queue-backlog")[0]
    # server-wide blocked clients are indirect evidence (issue 11: an unrelated client
    # on another database must not make it critical)
    assert a.evidence["consumers_gone"] and a.severity == "warning"
    cons = {"kind": "blocked", "count": 3, "evidence": "direct"}
    # evidence about THIS queue's database: blocked pops drop to none AND its clients
    # disconnect (busy consumers are not blocked either, but they stay connected)
    for n, conns in ((3, 10), (3, 10), (0, 7), (0, 7)):
        depth += 40
        q = {"name": "jobs", "depth": depth,
             "consumers": {**cons, "count": n, "db_clients": conns}}  # fmt: skip
        r.feed(tick(i, readings=_rd(i, queues=[q])))
        i += 1
    a = r.of("queue-backlog")[0]
    assert a.evidence["consumers_gone"] and a.severity == "critical"
    for _ in range(10):  # growth stopped, nobody consumes: the backlog stays raised
        act = r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": depth}])))
        assert any(a.kind == "queue-backlog" for a in act), f"cleared at tick {i}"
        i += 1
    flat_end = i
    while depth > 0:  # drained fast: then it clears
        depth = max(0, depth - 300)
        r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": depth}])))
        i += 1
    for _ in range(4):
        r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": 0}])))
        i += 1
    assert any(a.kind == "queue-backlog" for c in r.cleared[flat_end:] for a in c)


def test_queue_noise_above_floor_is_not_a_backlog() -> None:
    import random

    rng = random.Random(5)
    r = Run(only(None, "queue-backlog"))
    for i in range(120):
        d = 500 + rng.randint(-20, 20)
        r.feed(tick(i, readings=_rd(i, queues=[{"name": "jobs", "depth": d}], blocked_clients=4)))
    assert r.kinds_ever() == set()


def test_redis_pressure() -> None:
    r = Run(only(None, "redis-pressure"))
    r.feed(tick(0, readings=_rd(0, used_memory=50, maxmemory=100)))
    r.feed(tick(1, readings=_rd(1, used_memory=95, maxmemory=100)))
    assert r.of("redis-pressure")[0].severity == "warning"
    r.feed(tick(2, readings=_rd(2, used_memory=99, maxmemory=100, evicted_keys_delta=30)))
    a = r.of("redis-pressure")[0]
    assert a.severity == "critical" and "evicted" in a.summary
    for i in range(3, 7):
        r.feed(tick(i, readings=_rd(i, used_memory=50, maxmemory=100)))
    assert r.first_cleared("redis-pressure") == 5


# ---- pod -----------------------------------------------------------------------------


def _pods(i: int, *containers: dict) -> dict:
    return {"pods": reading("pods", {"source": "kubernetes", "containers": list(containers)},
                            t=T0 + i + 0.5)}  # fmt: skip


def test_pod_restart_oom_cpu_memory() -> None:
    r = Run(only(None, "pod"))
    c = {"pod": "api-1", "container": "app", "restarts": 2, "last_reason": "Error",
         "cpu_cores": 0.2, "cpu_limit_cores": 1.0, "memory_bytes": 100 * 2**20,
         "memory_limit_bytes": 512 * 2**20}  # fmt: skip
    for i in range(3):
        r.feed(tick(i, readings=_pods(i, c)))
    assert r.kinds_ever() == set()  # restarts before the run are history
    r.feed(tick(3, readings=_pods(3, {**c, "restarts": 3, "last_reason": "OOMKilled"})))
    a = r.of("pod")[0]
    assert a.severity == "critical" and "OOM" in a.summary and a.subject == "pods:api-1/app"
    for i in range(4, 16):
        r.feed(tick(i, readings=_pods(i, {**c, "restarts": 3, "last_reason": "OOMKilled"})))
    assert r.first_cleared("pod") is not None
    r2 = Run(only(None, "pod"))
    r2.feed(tick(0, readings=_pods(0, {**c, "cpu_cores": 0.97})))
    assert "CPU" in r2.of("pod")[0].summary
    r3 = Run(only(None, "pod"))
    r3.feed(tick(0, readings=_pods(0, {**c, "memory_bytes": 470 * 2**20})))
    assert "memory" in r3.of("pod")[0].summary


# ---- capacity-knee -------------------------------------------------------------------


def _usl_x(n: float, lam: float = 100.0, s: float = 0.05, k: float = 0.002) -> float:
    return lam * n / (1 + s * (n - 1) + k * n * (n - 1))


def test_usl_fit_recovers_parameters() -> None:
    pts = [(n, _usl_x(n)) for n in (1, 2, 4, 8, 16, 32, 48)]
    f = fit_usl(pts)
    assert f is not None
    assert f.sigma == pytest.approx(0.05, abs=0.01)
    assert f.kappa == pytest.approx(0.002, rel=0.1)
    assert f.n_peak == pytest.approx(21.8, rel=0.1)
    assert fit_usl(pts[:2]) is None
    linear = fit_usl([(n, 50.0 * n) for n in (1, 2, 4, 8)])
    assert linear is not None and linear.kappa < 1e-5 and linear.sigma < 0.01


def _knee_ticks(steps, per_step: int = 6):
    i = 0
    for n in steps:
        x = _usl_x(n)
        lat = n / x * 1000.0  # Little's law, ms
        for _ in range(per_step):
            ok = round(x)
            yield n, tick(i, [window(target=n, ok=ok, lat_ms=lat, seed=i)])
            i += 1


def test_capacity_knee_raised_past_the_peak_only() -> None:
    r = Run(only(None, "capacity-knee"))
    onset = None
    for n, tk in _knee_ticks([1, 2, 4, 8, 16, 32, 48]):
        r.feed(tk)
        if n == 32 and onset is None:
            onset = tk.index
        if n <= 16:
            assert r.kinds_ever() == set(), f"raised at {n} workers"
    raised = r.first_raised("capacity-knee")
    assert raised is not None and onset is not None and raised - onset <= 5
    a = r.of("capacity-knee")[0]
    assert a.evidence["usl"]["n_peak"] == pytest.approx(21.8, rel=0.25)
    assert a.evidence["best_workers"] == 16
    assert "knee" in a.summary


def test_linear_scaling_raises_no_knee() -> None:
    r = Run(only(None, "capacity-knee"))
    i = 0
    for n in (1, 2, 4, 8, 16):
        for _ in range(6):
            r.feed(tick(i, [window(target=n, ok=50 * n, lat_ms=20.0, seed=i)]))
            i += 1
    assert r.kinds_ever() == set()


# ---- invariant & generator -----------------------------------------------------------


def test_invariant_raised_next_tick_and_cleared_when_gone() -> None:
    ds = only(None, "invariant")
    r = Run(ds)
    r.feed(_steady(0))
    # verify() results travel in the tick of the window they completed in
    found = ("item 7: stock -3 < 0", "item 9: oversold by 2")
    r.feed(replace(_steady(1), invariants={"stock": found}))
    got = r.of("invariant")
    assert len(got) == 2 and {a.subject for a in got} == {"stock"}
    assert {a.summary for a in got} == {"item 7: stock -3 < 0", "item 9: oversold by 2"}
    assert len({a.key for a in got}) == 2
    r.feed(replace(_steady(2), invariants={"stock": ("item 9: oversold by 2",)}))
    r.feed(_steady(3))  # no check completed in this window: the last result holds
    assert [a.summary for a in r.of("invariant")] == ["item 9: oversold by 2"]
    r.feed(replace(_steady(4), invariants={"stock": ()}))
    assert r.of("invariant") == []


def test_invariant_keeps_its_anomaly_with_the_newest_figures() -> None:
    """Issue 12: a check that finds the same violation with new figures does not
    clear and re-raise it; the anomaly shows the latest numbers and the first."""
    from tests.pg_watch_support import with_verify

    ds = only(None, "invariant")
    r = Run(ds)
    r.feed(
        with_verify(
            ds, _steady(0), {"stock": ["product 3: oversold by 1645 units (1745 reserved)"]}
        )
    )
    (a,) = r.of("invariant")
    later = ["product 3: oversold by 7395 units (7495 reserved)",
             "product 4: oversold by 1 units (101 reserved)"]  # fmt: skip
    r.feed(with_verify(ds, _steady(1), {"stock": later}))
    for i in range(2, 4):  # no check completed in these windows: the last result holds
        r.feed(_steady(i))
    now = {x.summary: x for x in r.of("invariant")}
    b = now["product 3: oversold by 7395 units (7495 reserved)"]
    assert b.key == a.key and b.started_tick == 0  # the same anomaly, never cleared
    assert b.evidence["first"] == "product 3: oversold by 1645 units (1745 reserved)"
    assert b.evidence["checks"] == 2
    assert "first" not in now["product 4: oversold by 1 units (101 reserved)"].evidence
    assert r.first_cleared("invariant") is None
    r.feed(
        with_verify(ds, _steady(4), {"stock": ["product 4: oversold by 1 units (101 reserved)"]})
    )
    assert [x.summary for x in r.of("invariant")] == [
        "product 4: oversold by 1 units (101 reserved)"
    ]
    # beyond the cap: one more anomaly that counts and lists the rest
    ds2 = only({"invariant": {"max_per_scenario": 2}}, "invariant")
    r2 = Run(ds2)
    r2.feed(with_verify(ds2, _steady(0), {"s": [f"row {i}: lost" for i in range(5)]}))
    more = [x for x in r2.of("invariant") if x.key.endswith(":more")]
    assert more[0].summary == "and 3 more invariant violations"
    assert more[0].evidence["violations"] == ["row 2: lost", "row 3: lost", "row 4: lost"]


def test_generator_saturated() -> None:
    r = Run(only(None, "generator-saturated"))
    for i in range(5):
        r.feed(tick(i, [window()], generator=GeneratorStats(loop_lag_ms=3, cpu_pct=40)))
    for i in range(5, 8):
        r.feed(tick(i, [window()], generator=GeneratorStats(loop_lag_ms=250, cpu_pct=99)))
    assert r.first_raised("generator-saturated") == 6
    a = r.of("generator-saturated")[0]
    assert a.subject == "loadtop" and "event-loop lag" in a.summary
    for i in range(8, 12):
        r.feed(tick(i, [window()], generator=GeneratorStats(loop_lag_ms=3, cpu_pct=40)))
    assert r.first_cleared("generator-saturated") == 10
    r2 = Run(only(None, "generator-saturated"))
    for i in range(8):
        r2.feed(tick(i, [window(lag_ms=150.0 * (i + 1))], mode="rate"))
    assert "schedule lag" in r2.of("generator-saturated")[0].summary


# ---- everything at once: JSON-able, nothing on clean input --------------------------


def test_anomalies_are_json_able() -> None:
    from app.tick import tick_from_json, tick_to_json

    ds = build_detectors({"long-transaction": {"max_xact_s": 1}})
    r = Run(ds)
    for i in range(5):
        r.feed(replace(tick(i, [window(ok=90, failed=10, errors={"40P01 deadlock": 10}, seed=i)],
                            readings=_pg(i, oldest_xact_s=5.0, oldest_xact=_be(1))),
                       invariants={"s": ("broken",)} if i == 0 else {}))  # fmt: skip
    last = r.ticks[-1]
    assert {a.kind for a in last.anomalies} >= {"invariant", "error-burst", "long-transaction"}
    back = tick_from_json(json.loads(json.dumps(tick_to_json(last))))
    assert back.anomalies == last.anomalies


def test_detect_never_imports_the_ui() -> None:
    import subprocess
    import sys

    code = "import sys, app.detect; assert 'textual' not in sys.modules, 'textual imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_knee_at_two_workers_and_a_fit_that_peaks_at_one() -> None:
    # one hot row: the best throughput is one worker's; two only add waiting
    r = Run(only(None, "capacity-knee"))
    i = 0
    for n, x, lat in ((1, 1700, 0.6), (2, 1150, 1.7), (4, 1180, 3.4), (8, 600, 13.0)):
        for _ in range(6):
            r.feed(tick(i, [window(target=n, ok=x, lat_ms=lat, seed=i)]))
            i += 1
    assert r.first_raised("capacity-knee") == 9  # 4th tick of the 2-worker step
    a = r.of("capacity-knee")[0]
    assert a.evidence["best_workers"] == 1 and a.severity == "critical"
    usl = a.evidence["usl"]
    assert usl is not None
    assert usl["n_peak"] is None or usl["n_peak"] >= 1
    f = fit_usl([(1, 1700), (2, 1150), (4, 1180), (8, 600)])
    assert f is not None and f.x_peak >= 0


def test_busy_but_responsive_generator_is_not_saturated() -> None:
    # a closed loop against a fast local target runs the CPU hot; with the loop
    # responsive, latency is still honest: CPU alone raises nothing
    r = Run(only(None, "generator-saturated"))
    for i in range(10):
        r.feed(tick(i, [window()], generator=GeneratorStats(loop_lag_ms=4, cpu_pct=97)))
    assert r.first_raised("generator-saturated") is None
    for i in range(10, 16):
        r.feed(tick(i, [window()], generator=GeneratorStats(loop_lag_ms=35, cpu_pct=97)))
    assert r.first_raised("generator-saturated") is not None
    assert "CPU 97%" in r.of("generator-saturated")[0].summary
