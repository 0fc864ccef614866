"""Issue 12: a probe that cannot see says so (Redis commands denied by ACL,
pods forbidden by RBAC), and connection saturation measured against the slots
an application can use, on private servers the tests may fill up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.embedded import EmbeddedPostgres
from app.probes.kube import load_kubeconfig
from app.probes.pods import KubernetesPodsProbe
from app.probes.postgres import PostgresProbe
from app.probes.redis import RedisProbe
from tests.pg_watch_support import Watch, record, with_user
from tests.unit.test_probes_pods import ApiServer, write_kubeconfig

pytestmark = pytest.mark.integration


def redis_as(url: str, user: str, password: str) -> str:
    u = urlsplit(url)
    return f"redis://{user}:{password}@{u.hostname}:{u.port}{u.path or '/0'}"


async def test_redis_commands_denied_by_acl_are_probe_blind(own_redis) -> None:
    admin = aioredis.Redis.from_url(own_redis.url)
    try:
        # may read everything but the slow log and the latency monitor
        await admin.execute_command(
            "ACL", "SETUSER", "mon", "on", ">pw", "~*", "&*", "+@all", "-slowlog", "-latency"
        )
        await admin.execute_command("ACL", "SETUSER", "noinfo", "on", ">pw", "~*", "+@all", "-info")
        w = Watch([RedisProbe(redis_as(own_redis.url, "mon", "pw"))])
        tk = await w.tick()
        r = tk.readings["redis"]
        assert r.ok, r.error
        assert r.data["slowlog"] == "unavailable" and r.data["latency"] == "unavailable"
        blind = sorted((a for a in tk.anomalies if a.kind == "probe-blind"), key=lambda a: a.key)
        assert [a.evidence["grant"] for a in blind] == [
            "ACL SETUSER <probe user> +latency|latest",
            "ACL SETUSER <probe user> +slowlog|get",
        ]
        assert "SLOWLOG GET is denied by ACL" in blind[1].summary
        await w.stop()

        w = Watch([RedisProbe(redis_as(own_redis.url, "noinfo", "pw"))])
        tk = await w.tick()
        assert tk.readings["redis"].ok and tk.readings["redis"].data["version"] == ""
        (a,) = [a for a in tk.anomalies if a.kind == "probe-blind"]
        assert a.evidence["grant"] == "ACL SETUSER <probe user> +info"
        await w.stop()

        # a user that may run nothing: every poll fails with NOPERM, and says so
        await admin.execute_command(
            "ACL", "SETUSER", "none", "on", ">pw", "-@all", "+auth", "+hello"
        )
        w = Watch([RedisProbe(redis_as(own_redis.url, "none", "pw"))])
        tk = await w.tick()
        r = tk.readings["redis"]
        assert not r.ok and "no permissions" in r.error, r.error
        (a,) = [a for a in tk.anomalies if a.kind == "probe-blind"]
        assert "every reading" in a.summary and "+info" in a.evidence["grant"]
        await w.stop()
    finally:
        await admin.aclose()


async def test_pods_forbidden_by_rbac_are_probe_blind(tmp_path: Path) -> None:
    async with ApiServer(metrics_status=403) as api:
        kc = write_kubeconfig(tmp_path / "c", api.url, {})
        w = Watch([KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))])
        tk = await w.tick()
        await w.stop()
    (a,) = [a for a in tk.anomalies if a.kind == "probe-blind"]
    assert a.subject == "pods:rbac"
    assert "grant get,list on pods in the metrics.k8s.io API group" in a.evidence["grant"]

    async with ApiServer(pods_status=403) as api:
        kc = write_kubeconfig(tmp_path / "c", api.url, {})
        w = Watch([KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))])
        tk = await w.tick()
        await w.stop()
    (a,) = [a for a in tk.anomalies if a.kind == "probe-blind"]
    assert "every reading" in a.summary and "grant get,list on pods" in a.evidence["grant"]


@pytest.mark.slow
async def test_saturation_against_usable_slots_and_a_probe_waiting_for_one() -> None:
    """max_connections 20 with 3 reserved for superusers: an application role can
    hold 17. The superuser probe still gets in and says 'refused', naming who holds
    them; a non-superuser probe finds no slot, says it waits, and gets in when one
    frees."""
    with EmbeddedPostgres(settings={"max_connections": 20,
                                    "superuser_reserved_connections": 3}) as pg:  # fmt: skip
        admin = await asyncpg.connect(pg.dsn)
        await admin.execute("CREATE ROLE app LOGIN; CREATE ROLE mon LOGIN IN ROLE pg_monitor")
        held: list[asyncpg.Connection] = []
        w = Watch([PostgresProbe(pg.dsn)])
        blind_w = Watch([PostgresProbe(with_user(pg.dsn, "mon"), timeout=3)])
        try:
            await w.run(2)
            onset = w.next
            while True:
                try:
                    held.append(await asyncpg.connect(
                        with_user(pg.dsn, "app"), server_settings={"application_name": "api"}))  # fmt: skip
                except asyncpg.TooManyConnectionsError:
                    break
            truth = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
            await w.run(2)
            raised, a = w.first("connection-saturation")
            assert raised is not None and raised == onset, (raised, onset)
            a = w.latest("connection-saturation")
            assert a is not None and a.severity == "critical"
            assert a.evidence["usable_connections"] == 17 and a.evidence["max_connections"] == 20
            # the server's count of client backends, the admin and the probe included
            assert a.evidence["connections"] == truth
            assert "new clients are refused with 53300" in a.summary
            top = a.evidence["holders"][0]
            assert top == {"application_name": "api", "usename": "app", "state": "idle",
                           "connections": len(held)}  # fmt: skip
            assert "api/app idle x" in a.summary

            tk = await blind_w.tick()  # a monitoring role with no reserved slot
            r = tk.readings["postgres"]
            assert not r.ok and "waiting for a connection slot" in r.error
            assert "retries" in r.error
            assert any(x.kind == "connection-saturation" for x in tk.anomalies)
            await held.pop().close()
            await asyncio.sleep(0.2)
            tk = await blind_w.tick()
            assert tk.readings["postgres"].ok  # it retried and got in
            record("saturation (own_pg, 17 usable)", seen=True, ticks=raised - onset,
                   connections=truth, holders=top)  # fmt: skip
        finally:
            await w.stop()
            await blind_w.stop()
            for c in held:
                c.terminate()
            await admin.close()


@pytest.mark.slow
async def test_watch_started_on_a_full_server_starts_and_waits_for_a_slot(tmp_path: Path) -> None:
    """`loadtop watch` with a monitoring role that has no reserved slot, on a
    server whose application slots are all taken: it starts (no exit 2), each
    tick says the probe waits for a slot, connection-saturation is raised, and
    the probe gets in by itself once a slot frees."""
    import json
    import os
    import sys

    with EmbeddedPostgres(settings={"max_connections": 12,
                                    "superuser_reserved_connections": 3}) as pg:  # fmt: skip
        admin = await asyncpg.connect(pg.dsn)
        await admin.execute("CREATE ROLE app LOGIN; CREATE ROLE mon LOGIN IN ROLE pg_monitor")
        held: list[asyncpg.Connection] = []
        rec = tmp_path / "w.jsonl"
        try:
            while True:
                try:
                    held.append(await asyncpg.connect(with_user(pg.dsn, "app")))
                except asyncpg.TooManyConnectionsError:
                    break
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "watch", "--headless", "--pg",
                with_user(pg.dsn, "mon"), "-d", "8s", "--interval", "0.5s", "--record", str(rec),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
            await asyncio.sleep(4.0)
            for c in held[:2]:  # two slots free up (the watch needs one)
                await c.close()
            _out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            for c in held:
                c.terminate()
            await admin.close()
    # the watch saw every application slot taken (a critical connection-saturation):
    # its verdict, about the system watched, is FAIL, and so is its exit code (issue 13)
    assert proc.returncode == 1, err.decode()
    last = _out.decode().strip().splitlines()[-1]
    assert last.startswith("FAIL: ") and "connection-saturation" in last, last
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    ticks = [x for x in lines if x["type"] == "tick"]
    pg_r = [t["readings"].get("postgres") for t in ticks if t["readings"].get("postgres")]
    waiting = [r for r in pg_r if not r["ok"]]
    assert waiting and all("waiting for a connection slot" in r["error"] for r in waiting)
    assert pg_r[-1]["ok"], pg_r[-1]  # it got in by itself
    kinds = {a["kind"] for t in ticks for a in t["anomalies"]}
    assert "connection-saturation" in kinds
    record("watch started on a full server", seen=True, waiting_ticks=len(waiting),
           got_in=pg_r[-1]["ok"])  # fmt: skip
