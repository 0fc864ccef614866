"""Faults under load (issue 15), for real: every action injected and healed
against embedded PostgreSQL and Valkey (ours alone: they get paused and
locked), the demo service killed and restarted under load with its recovery
measured, heal on SIGTERM of a headless run, the Kubernetes DELETE against a
loopback fake serving the API's JSON, and the proxy's latency in p50."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.demo_service import DemoService
from app.embedded import EmbeddedPostgres, EmbeddedRedis
from app.engine.engine import EngineConfig
from app.engine.thresholds import ThresholdSet, parse_thresholds
from app.faults import FaultError, FaultSpec, parse_fault_spec
from app.faults.actions import ACTIONS, FaultTargets
from app.faults.recovery import RecoveryTracker, fault_rows
from app.faults.scheduler import FaultScheduler
from app.scenario import load_scenarios
from app.session.config import UsageError, build_run_config
from app.session.runner import RunConfig, Session
from app.tick import ControlEvent, ScenarioWindow, Tick, new_histogram

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as s:
        yield s


@pytest.fixture(scope="module")
def rds() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as s:
        yield s


class Events:
    """Collects what the scheduler would hand the engine as ControlEvents."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, str, Any, Any, str]] = []

    def __call__(self, kind: str, source: str, before: Any = None, after: Any = None,
                 note: str = "") -> None:  # fmt: skip
        self.items.append((time.monotonic(), kind, source, before, after, note))

    def kinds(self) -> list[str]:
        return [e[1] for e in self.items]


async def _table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS chaos_t (id int PRIMARY KEY, v int)")
    await conn.execute("INSERT INTO chaos_t SELECT g, 0 FROM generate_series(1, 10) g"
                       " ON CONFLICT DO NOTHING")  # fmt: skip
    await conn.close()


# ---- spec and config: bad input is one line, exit 2 ---------------------------------------


def _cfg(**kw: Any) -> Any:
    args = SimpleNamespace(scenario=["pg-select"], pg="postgresql://u@127.0.0.1/db", **kw)
    return build_run_config(args, profile={}, env={})


def test_fault_flags_checked_up_front() -> None:
    cfg = _cfg(fault=["at=30s,kind=pg-terminate,app=shop"], allow_faults=True)
    assert cfg.faults == [FaultSpec("pg-terminate", 30.0, {"app": "shop"})]
    for kw, needle in [
        ({"fault": ["at=30s,kind=pod-kill"]}, "--allow-faults"),
        ({"fault": ["kind=redis-pause"], "allow_faults": True, "readonly": True}, "--readonly"),
        ({"fault": ["at=3s,kind=pg-lok,table=t"], "allow_faults": True}, "did you mean pg-lock"),
        ({"fault": ["kind=redis-pause,ms=90000"], "allow_faults": True}, "at most 60000"),
        ({"fault": ["kind=pg-terminate"], "allow_faults": True}, "there is no 'all'"),
        ({"fault": ["kind=http-503"], "allow_faults": True}, "--http-via-proxy"),
        ({"fault": ["kind=redis-kill-clients,name=loadtop:load"], "allow_faults": True},
         "loadtop's own"),
        ({"fault": ["kind=redis-lock-steal,key=lock:*"], "allow_faults": True}, "patterns"),
        ({"fault": ["kind=pg-lock,table=t;drop"], "allow_faults": True}, "not a table name"),
    ]:  # fmt: skip
        with pytest.raises(UsageError) as e:
            _cfg(**kw)
        assert needle in str(e.value) and "\n" not in str(e.value), (kw, str(e.value))
    prof = {"scenario": ["pg-select"], "fault": ["kind=pg-lock,table=t,s=2"], "allow_faults": True}
    assert build_run_config(SimpleNamespace(pg="postgresql://u@h/d"), profile=prof, env={}).faults


def test_cli_bad_fault_is_exit_2_one_line() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", "--headless", "--pg", "postgresql://u@127.0.0.1/d",
         "-s", "pg-select", "--fault", "at=1s,kind=redis-pause,mode=SOME"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "mode=" in lines[0] and "WRITE, ALL" in lines[0], p.stderr


# ---- PostgreSQL actions -----------------------------------------------------------------


async def _lock_holders(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE a.application_name = 'loadtop:fault' AND l.relation = 'chaos_t'::regclass"
            " AND l.granted"
        )
        return [r["mode"] for r in rows]
    finally:
        await conn.close()


def test_pg_lock_held_for_its_duration_then_healed(pg: EmbeddedPostgres) -> None:
    async def go() -> None:
        await _table(pg.dsn)
        ev = Events()
        sch = FaultScheduler(FaultTargets(pg_dsn=pg.dsn), ev)
        spec = parse_fault_spec("kind=pg-lock,table=chaos_t,s=2")
        _, text = await sch.describe(spec)
        assert text == "LOCK TABLE chaos_t IN ACCESS EXCLUSIVE MODE for 2 s"
        t0 = time.monotonic()
        assert "holding ACCESS EXCLUSIVE" in await sch.inject(spec)
        assert await _lock_holders(pg.dsn) == ["AccessExclusiveLock"]
        # the application is stalled behind it: a read waits until the heal
        conn = await asyncpg.connect(pg.dsn)
        await conn.fetchval("SELECT count(*) FROM chaos_t")
        waited = time.monotonic() - t0
        await conn.close()
        assert 1.5 <= waited <= 3.0, waited  # the 2 s, within a tick
        await asyncio.sleep(0.2)
        assert await _lock_holders(pg.dsn) == []
        assert ev.kinds() == ["fault", "fault-heal"]
        assert ev.items[0][3] == 1.0 and ev.items[0][4] == 2.0  # number, planned duration
        assert 1.8 <= ev.items[1][0] - ev.items[0][0] <= 2.6

    asyncio.run(go())


def test_pg_idle_tx_holds_a_row_and_heal_all_ends_it(pg: EmbeddedPostgres) -> None:
    async def go() -> None:
        await _table(pg.dsn)
        ev = Events()
        sch = FaultScheduler(FaultTargets(pg_dsn=pg.dsn), ev)
        spec = parse_fault_spec("kind=pg-idle-tx,table=chaos_t,id=3,s=30")
        assert "row id = 3" in (await sch.describe(spec))[1]
        await sch.inject(spec)
        conn = await asyncpg.connect(pg.dsn)
        state = await conn.fetchval(
            "SELECT state FROM pg_stat_activity WHERE application_name = 'loadtop:fault'"
        )
        assert state == "idle in transaction"
        await conn.execute("SET lock_timeout = '300ms'")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await conn.execute("UPDATE chaos_t SET v = v + 1 WHERE id = 3")
        await conn.execute("UPDATE chaos_t SET v = v + 1 WHERE id = 4")  # only that row
        await sch.heal_all("quit")  # long before its 30 s
        await conn.execute("UPDATE chaos_t SET v = v + 1 WHERE id = 3")
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'loadtop:fault'"
        )
        await conn.close()
        assert left == 0
        assert ev.kinds() == ["fault", "fault-heal"] and "(quit)" in ev.items[1][5]
        assert await sch.inject(spec) == "the session is ending: no new faults"

    asyncio.run(go())


def test_pg_terminate_hits_the_match_and_never_loadtop(pg: EmbeddedPostgres) -> None:
    async def go() -> None:
        victims = [await asyncpg.connect(pg.dsn, server_settings={"application_name": "shop-api"})
                   for _ in range(3)]  # fmt: skip
        ours = await asyncpg.connect(pg.dsn, server_settings={"application_name": "loadtop:pool"})
        other = await asyncpg.connect(pg.dsn, server_settings={"application_name": "billing"})
        pids = sorted([v.get_server_pid() for v in victims])
        sch = FaultScheduler(FaultTargets(pg_dsn=pg.dsn), Events())
        spec = parse_fault_spec("kind=pg-terminate,app=shop-api")
        _, text = await sch.describe(spec)
        assert text.startswith("terminate 3 backends of app=shop-api: pids ")
        assert all(str(p) in text for p in pids)
        assert await sch.inject(spec) == "#1 pg-terminate: terminated 3 of 3 backends"
        for _ in range(50):  # the backends exit within moments
            alive = await ours.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            )
            if not alive:
                break
            await asyncio.sleep(0.05)
        assert alive == 0
        for v in victims:
            v.terminate()
        assert await ours.fetchval("SELECT 1") == 1
        assert await other.fetchval("SELECT 1") == 1
        with pytest.raises(FaultError, match="no backend matches app=shop-api"):
            await sch.describe(spec)
        db = await other.fetchval("SELECT current_database()")
        other2 = await asyncpg.connect(pg.dsn, server_settings={"application_name": "billing"})
        lim = parse_fault_spec(f"kind=pg-terminate,database={db},max=1")
        with pytest.raises(FaultError, match="more than max=1"):
            await sch.describe(lim)
        for c in (ours, other, other2):
            await c.close()

    asyncio.run(go())


# ---- Redis actions ------------------------------------------------------------------------


def test_redis_pause_write_is_honoured_and_heals(rds: EmbeddedRedis) -> None:
    async def go() -> None:
        ev = Events()
        sch = FaultScheduler(FaultTargets(redis_url=rds.url), ev)
        r = aioredis.from_url(rds.url)
        await sch.inject(parse_fault_spec("kind=redis-pause,ms=1500,mode=WRITE"))
        t0 = time.monotonic()
        assert await r.get("x") is None  # reads pass a WRITE pause
        read = time.monotonic() - t0
        await r.set("x", 1)
        wrote = time.monotonic() - t0
        assert read < 0.3 and 1.2 <= wrote <= 2.2, (read, wrote)
        await asyncio.sleep(0.3)
        assert ev.kinds() == ["fault", "fault-heal"]
        # ALL holds reads too, for its duration
        await sch.inject(parse_fault_spec("kind=redis-pause,ms=1000,mode=ALL"))
        t0 = time.monotonic()
        await r.get("x")
        assert 0.7 <= time.monotonic() - t0 <= 1.8
        await asyncio.sleep(0.3)
        # healed early: CLIENT UNPAUSE before the server's own timeout
        await sch.inject(parse_fault_spec("kind=redis-pause,ms=20000,mode=WRITE"))
        t0 = time.monotonic()
        task = asyncio.create_task(r.set("y", 1))
        await asyncio.sleep(0.5)
        assert not task.done()
        await sch.heal_all("quit")
        await task
        assert time.monotonic() - t0 < 2.0
        await r.aclose()

    asyncio.run(go())


def test_redis_kill_clients_by_name_never_loadtop(rds: EmbeddedRedis) -> None:
    async def go() -> None:
        victims = [aioredis.from_url(rds.url, client_name="shop-worker") for _ in range(3)]
        ours = aioredis.from_url(rds.url, client_name="loadtop:load")
        for c in (*victims, ours):
            await c.ping()
        admin = aioredis.from_url(rds.url)
        before = {c["id"] for c in await admin.client_list() if c["name"] == "shop-worker"}
        assert len(before) == 3
        sch = FaultScheduler(FaultTargets(redis_url=rds.url), Events())
        spec = parse_fault_spec("kind=redis-kill-clients,name=shop-worker")
        assert (await sch.describe(spec))[1].startswith("kill 3 clients of name=shop-worker")
        assert await sch.inject(spec) == "#1 redis-kill-clients: killed 3 of 3 clients"
        names = {c["id"]: c["name"] for c in await admin.client_list()}
        assert not before & set(names)
        assert "loadtop:load" in names.values()
        for c in (*victims, ours, admin):
            await c.aclose()

    asyncio.run(go())


def test_redis_lock_steal_deletes_only_the_named_key(rds: EmbeddedRedis) -> None:
    async def go() -> None:
        r = aioredis.from_url(rds.url)
        await r.set("shop:lock:order-7", "token-a", px=30_000)
        await r.set("shop:lock:order-8", "token-b", px=30_000)
        sch = FaultScheduler(FaultTargets(redis_url=rds.url), Events())
        spec = parse_fault_spec("kind=redis-lock-steal,key=shop:lock:order-7")
        assert "held, ttl" in (await sch.describe(spec))[1]
        assert "deleted shop:lock:order-7" in await sch.inject(spec)
        assert await r.exists("shop:lock:order-7") == 0
        assert await r.exists("shop:lock:order-8") == 1
        await r.aclose()

    asyncio.run(go())


# ---- pod-kill against a loopback Kubernetes API -----------------------------------------------


def _pod(name: str, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "labels": {"app": "api"},
                            "uid": f"uid-{name}", "resourceVersion": "101"}  # fmt: skip
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T03:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "api", "image": "shop/api:1"}]},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "api", "ready": phase == "Running", "restartCount": 0}]}}  # fmt: skip


@contextlib.asynccontextmanager
async def _kube_api(
    pods: list[dict[str, Any]], seen: list[tuple[str, str, dict[str, str], str]]
) -> AsyncIterator[int]:
    """A loopback Kubernetes API with the real shapes for the pods of namespace
    `shop`: list them, delete one. Every request lands in `seen` as (method,
    path, query, Authorization). Yields its port."""
    from aiohttp import web

    async def list_pods(req: web.Request) -> web.Response:
        seen.append(("GET", req.path, dict(req.query), req.headers.get("Authorization", "")))
        return web.json_response({"kind": "PodList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": "102"}, "items": pods})  # fmt: skip

    async def delete_pod(req: web.Request) -> web.Response:
        seen.append(("DELETE", req.path, dict(req.query), req.headers.get("Authorization", "")))
        return web.json_response(_pod(req.match_info["name"], deleting=True))

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/shop/pods", list_pods)
    app.router.add_delete("/api/v1/namespaces/shop/pods/{name}", delete_pod)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def test_pod_kill_deletes_one_pod_of_the_selector_through_the_api() -> None:
    from app.probes.kube import KubeConfig

    pods = [_pod("api-7d9f-a"), _pod("api-7d9f-b"), _pod("api-7d9f-c", "Pending"),
            _pod("api-7d9f-d", deleting=True)]  # fmt: skip
    seen: list[tuple[str, str, dict[str, str], str]] = []

    async def go() -> None:
        async with _kube_api(pods, seen) as port:
            kube = KubeConfig(server=f"http://127.0.0.1:{port}", token="fault-token")
            t = FaultTargets(k8s_namespace="shop", k8s_selector="app=api", kube_config=kube)
            ev = Events()
            sch = FaultScheduler(t, ev)
            _, text = await sch.describe(parse_fault_spec("kind=pod-kill,grace=0"))
            assert "1 of 2 running pods of app=api" in text and "grace 0" in text
            out = await sch.inject(parse_fault_spec("kind=pod-kill,pod=api-7d9f-b,grace=0"))
            assert out == "#1 pod-kill: deleted pod shop/api-7d9f-b"
            deletes = [s for s in seen if s[0] == "DELETE"]
            assert deletes == [("DELETE", "/api/v1/namespaces/shop/pods/api-7d9f-b",
                                {"gracePeriodSeconds": "0"}, "Bearer fault-token")]  # fmt: skip
            # a pod that is not a running pod of the selector is refused, nothing deleted
            for name in ("api-7d9f-c", "api-7d9f-d", "db-0"):
                res = await sch.inject(parse_fault_spec(f"kind=pod-kill,pod={name}"))
                assert "is not a running pod of app=api" in res
            assert len([s for s in seen if s[0] == "DELETE"]) == 1
            assert ev.kinds() == ["fault", "fault-failed", "fault-failed", "fault-failed"]
            # every listing asked for the selector's pods only
            gets = [s for s in seen if s[0] == "GET"]
            assert gets and all(s[2].get("labelSelector") == "app=api" for s in gets), gets
            # no selector: never "all pods"
            bare = FaultTargets(k8s_namespace="shop", kube_config=kube)
            assert "--k8s-selector" in (ACTIONS["pod-kill"].available(bare) or "")

    asyncio.run(go())


# ---- under load: the demo service killed and restarted; recovery measured -------------------


def test_demo_service_kill_recovery_measured(pg: EmbeddedPostgres, rds: EmbeddedRedis) -> None:
    service = DemoService(pg.dsn, rds.url).start()
    service.supervise()
    try:
        killed_pid = service.pid
        cfg = RunConfig(
            scenarios=[(c, 1.0) for c in load_scenarios("http-reserve")], pg_dsn=pg.dsn,
            redis_url=rds.url, http_url=service.url, params={"products": "5"},
            engine=EngineConfig(concurrency=16, rate=100.0, duration=16.0), probes=False,
            faults=[parse_fault_spec("at=4s,kind=pod-kill")], allow_faults=True,
            fault_processes={"demo-service": lambda: service.pid},
        )  # fmt: skip
        session = Session(cfg)
        outcome = asyncio.run(session.run())
        assert outcome.reason == "duration"
        assert service.restarts == 1 and service.pid != killed_pid
        events = [e for t in session.ticks for e in t.events if e.kind.startswith("fault")]
        assert [e.kind for e in events] == ["fault"]
        assert f"killed demo-service pid {killed_pid}" in events[0].note
        rows = fault_rows(session.ticks)
        assert len(rows) == 1
        r = rows[0]
        print(f"\ndemo-service kill: baseline {r['baseline']}, impact {r['impact']},"
              f" recovery {r['recovery_s']} s, outage {r['outage_s']} s")  # fmt: skip
        assert r["recovered"], [
            (round(t.elapsed), round(t.ops_per_s), t.failed) for t in session.ticks
        ]
        assert sum(r["impact"]["errors"].values()) > 0  # the kill was felt
        assert any("connection" in k for k in r["impact"]["errors"])
        assert 0.0 <= r["recovery_s"] <= 10.0
        assert r["baseline"]["ops_per_s"] > 0 and 3.0 <= r["at_s"] <= 5.5
        # the same figures from the ticks alone (what report --redetect does)
        raw = [dataclasses.replace(t, anomalies=(), cleared=()) for t in session.ticks]
        tracker = RecoveryTracker(None)
        again = fault_rows([tracker.evaluate(t) for t in raw])[0]
        # session.ticks are the recorded lines read back (times rounded to 1 ms)
        assert again["recovered"] and again["impact"]["errors"] == r["impact"]["errors"]
        assert again["recovery_s"] == pytest.approx(r["recovery_s"], abs=0.01)
        assert again["baseline"]["ops_per_s"] == pytest.approx(r["baseline"]["ops_per_s"], rel=1e-3)
    finally:
        service.close()


def test_recovery_threshold_fails_the_run() -> None:
    """recovery>5s trips on a fault whose ops stay down: pure over synthetic ticks."""

    def tick(i: int, ops: int, events: tuple[ControlEvent, ...] = ()) -> Tick:
        h = new_histogram()
        for _ in range(ops):
            h.record_value(2000)
        w = ScenarioWindow("s", 4, 4, ops, ops, 0, {}, h)
        return Tick(index=i, t=1000.0 + i, elapsed=float(i), interval=1.0, mode="workers",
                    target_concurrency=4, concurrency=4, scenarios=(w,), events=events)  # fmt: skip

    fault = ControlEvent(1010.5, "fault", "cli", 1.0, 0.0, "#1 pod-kill: deleted pod shop/a")
    ticks = [tick(i, 100) for i in range(11)] + [tick(11, 100, (fault,))]
    ticks += [tick(i, 20) for i in range(12, 22)] + [tick(i, 100) for i in range(22, 26)]
    tr, ths = RecoveryTracker(None), ThresholdSet(parse_thresholds(["recovery>5s"]))
    tripped_at = None
    for t in ticks:
        t = tr.evaluate(t)
        ths.evaluate(t)
        if ths.tripped is not None and tripped_at is None:
            tripped_at = t.index
    assert tripped_at == 16  # t=1016: 5.5 s after the kill, still down
    again = RecoveryTracker(None)
    rows = fault_rows([again.evaluate(t) for t in ticks])
    assert rows[0]["recovered"] and rows[0]["recovery_s"] == pytest.approx(10.5)
    assert rows[0]["baseline"]["ops_per_s"] == 100 and rows[0]["impact"]["min_ops_per_s"] == 20


# ---- the proxy: latency in p50 ------------------------------------------------------------------


def test_http_latency_through_the_proxy_shows_in_p50(
    pg: EmbeddedPostgres, rds: EmbeddedRedis
) -> None:
    service = DemoService(pg.dsn, rds.url).start()
    try:
        cfg = RunConfig(
            scenarios=[(c, 1.0) for c in load_scenarios("http")], http_url=service.url,
            params={"path": "/health"}, engine=EngineConfig(concurrency=2, duration=8.0),
            probes=False, http_via_proxy=True, allow_faults=True,
            faults=[parse_fault_spec("at=3s,kind=http-latency,ms=150,s=3")],
        )  # fmt: skip
        session = Session(cfg)
        asyncio.run(session.run())
        kinds = [(round(t.elapsed), e.kind) for t in session.ticks for e in t.events
                 if e.kind.startswith("fault")]  # fmt: skip
        assert [k for _, k in kinds] == ["fault", "fault-heal"], kinds
        lat = {round(t.elapsed): t.latency().p50 for t in session.ticks if t.completed}
        before = [lat[s] for s in (2, 3) if s in lat]
        during = [lat[s] for s in (5, 6) if s in lat]
        after = [lat[s] for s in (8,) if s in lat]
        print(f"\np50 before {before} during {during} after {after} ms")
        assert before and max(before) < 50
        assert during and min(during) >= 140
        assert session.targets["http"].endswith("(via loadtop's fault proxy)")
    finally:
        service.close()


# ---- heal on SIGTERM: no lock outlives loadtop -------------------------------------------------


def test_sigterm_heals_the_lock(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    asyncio.run(_table(pg.dsn))
    rec = tmp_path / "run.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADTOP_")}
    p = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--headless", "--pg", pg.dsn, "-s", "pg-select",
         "-d", "60s", "--allow-faults", "--fault", "at=1s,kind=pg-lock,table=chaos_t,mode=SHARE,s=60",
         "--record", str(rec)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and asyncio.run(_lock_holders(pg.dsn)) != ["ShareLock"]:
            time.sleep(0.2)
        assert asyncio.run(_lock_holders(pg.dsn)) == ["ShareLock"]
        p.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        p.wait(20)
        assert asyncio.run(_lock_holders(pg.dsn)) == []
        assert time.monotonic() - t0 < 10
    finally:
        if p.poll() is None:
            p.kill()
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    ev = [(e["kind"], e["source"], e["note"]) for x in lines if x.get("type") == "tick"
          for e in x["events"] if e["kind"].startswith("fault")]  # fmt: skip
    assert [k for k, _, _ in ev] == ["fault", "fault-heal"], ev
    assert "signal SIGTERM" in ev[1][2] or "session ending" in ev[1][2]


# ---- the console's side: SessionControl from another thread -------------------------------------


def test_session_control_describe_then_inject(pg: EmbeddedPostgres) -> None:
    asyncio.run(_table(pg.dsn))

    def session(**kw: Any) -> Session:
        cfg = RunConfig(scenarios=[(c, 1.0) for c in load_scenarios("pg-select")], pg_dsn=pg.dsn,
                        engine=EngineConfig(concurrency=1, duration=30.0), probes=False, **kw)  # fmt: skip
        return Session(cfg)

    off = session()
    assert "--allow-faults" in (off.fault_disabled() or "")
    assert off.fault_actions() == {} and "--allow-faults" in off.describe_fault("kind=pod-kill")[1]
    ro = session(readonly=True, allow_faults=True)
    assert "read-only" in ro.inject_fault("kind=pg-lock,table=chaos_t")

    s = session(allow_faults=True, fault_hints={"pg_table": "chaos_t"})
    s.start_thread()
    try:
        assert s.error is None
        actions = s.fault_actions()
        assert actions["pg-lock"] is None and "needs --redis" in str(actions["redis-pause"])
        assert s.fault_suggestions()["pg-lock"] == "kind=pg-lock,table=chaos_t"
        assert s.describe_fault("kind=nope")[0] is False
        assert "no fault kind" in s.describe_fault("kind=nope")[1]
        ok, why = s.describe_fault("kind=pg-lock,table=no_such_table")
        assert not ok and why == "pg-lock: no table no_such_table on the target"
        spec = "kind=pg-lock,table=chaos_t,mode=EXCLUSIVE,s=1"
        assert s.describe_fault(spec) == (True, "LOCK TABLE chaos_t IN EXCLUSIVE MODE for 1 s")
        assert s.inject_fault(spec).startswith("#1 pg-lock: holding EXCLUSIVE on chaos_t")
        time.sleep(2.5)
        # panic lifts a fault at once, long before its 60 s
        assert s.inject_fault("kind=pg-lock,table=chaos_t,s=60").startswith("#2 pg-lock")
        assert asyncio.run(_lock_holders(pg.dsn)) == ["AccessExclusiveLock"]
        s.panic()
        deadline = time.monotonic() + 5
        while asyncio.run(_lock_holders(pg.dsn)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert asyncio.run(_lock_holders(pg.dsn)) == []
        time.sleep(1.2)  # the heal's event reaches a tick
    finally:
        s.stop()
        assert s.wait(30)
    ev = [(e.kind, e.note) for t in s.ticks for e in t.events if e.kind.startswith("fault")]
    assert [k for k, _ in ev] == ["fault", "fault-heal", "fault", "fault-heal"], ev
    assert ev[3][1].endswith("(panic)")
    assert asyncio.run(_lock_holders(pg.dsn)) == []
    assert any(a.kind == "fault" for t in s.ticks for a in (*t.anomalies, *t.cleared))


def test_http_503_and_drop_through_the_proxy_then_healed() -> None:
    import aiohttp
    from aiohttp import web

    from app.faults.proxy import FaultProxy

    async def ok(_req: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/health", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        proxy = await FaultProxy(f"http://127.0.0.1:{port}").start()
        ev = Events()
        sch = FaultScheduler(FaultTargets(proxy=proxy), ev)

        async def statuses(n: int) -> list[int | str]:
            out: list[int | str] = []
            async with aiohttp.ClientSession() as http:  # keep-alive, like the load's
                for _ in range(n):
                    try:
                        async with http.get(f"{proxy.url}/health") as r:
                            out.append(r.status)
                    except aiohttp.ClientError as e:
                        out.append(type(e).__name__)
            return out

        try:
            assert await statuses(3) == [200, 200, 200]
            await sch.inject(parse_fault_spec("kind=http-503,s=1"))
            assert await statuses(3) == [503, 503, 503]
            await asyncio.sleep(1.2)
            assert await statuses(2) == [200, 200]
            await sch.inject(parse_fault_spec("kind=http-drop,pct=100,s=30"))
            dropped = await statuses(3)
            assert all(isinstance(x, str) for x in dropped), dropped
            await sch.heal_all("quit")
            assert await statuses(2) == [200, 200]
            assert ev.kinds() == ["fault", "fault-heal", "fault", "fault-heal"]
        finally:
            await proxy.aclose()
            await runner.cleanup()

    asyncio.run(go())


def test_pod_kill_through_kubectl_when_only_kubectl_knows_the_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kubeconfig whose user is an auth-provider (only kubectl can use it):
    pod-kill lists and deletes through `kubectl get|delete --raw`, like the pods
    probe. The kubectl here is a shim that sends the raw request to a loopback
    API serving the real shapes, as kubectl would to the cluster."""
    import textwrap

    from tests.unit.test_probes_pods import write_kubeconfig

    pods = [_pod("api-1"), _pod("api-2")]
    seen: list[tuple[str, str, dict[str, str], str]] = []

    async def go() -> None:
        bindir = tmp_path / "bin"
        bindir.mkdir()
        log = tmp_path / "kubectl.log"
        user = {"auth-provider": {"name": "oidc", "config": {"id-token": "x"}}}
        kc = write_kubeconfig(tmp_path / "config", "https://k8s.example:6443", user, name="corp")
        monkeypatch.setenv("KUBECONFIG", str(kc))
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
        async with _kube_api(pods, seen) as port:
            shim = bindir / "kubectl"
            shim.write_text(textwrap.dedent(f"""\
                #!{sys.executable}
                import sys, urllib.request
                verb, path = sys.argv[1], sys.argv[sys.argv.index("--raw") + 1]
                open({str(log)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
                req = urllib.request.Request("http://127.0.0.1:{port}" + path, method=verb.upper())
                sys.stdout.write(urllib.request.urlopen(req).read().decode())
            """))  # fmt: skip
            shim.chmod(0o755)
            t = FaultTargets(k8s_namespace="shop", k8s_selector="app=api")
            sch = FaultScheduler(t, Events())
            out = await sch.inject(parse_fault_spec("kind=pod-kill,pod=api-2,grace=0"))
            assert out == "#1 pod-kill: deleted pod shop/api-2", out
            # kubectl carries the credentials itself: no Authorization from loadtop
            assert ("DELETE", "/api/v1/namespaces/shop/pods/api-2",
                    {"gracePeriodSeconds": "0"}, "") in seen  # fmt: skip
            calls = log.read_text().splitlines()
            assert any(c.startswith("delete --raw") and "--context corp" in c for c in calls)

    asyncio.run(go())
