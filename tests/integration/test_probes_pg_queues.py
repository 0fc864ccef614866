"""Postgres-native queues against a real PostgreSQL.

procrastinate drives the main test with its own schema, its own `defer` and
its own worker process, which is then killed. pgmq, River and Oban (whose
packages need a Postgres extension, Go or Elixir) get their documented table
layouts created here and rows written the way they write them. Every figure
is checked against ground truth read with plain SQL. Each test uses fresh
schemas and drops them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.cli import main
from app.probes.base import run_poll
from app.probes.factory import build_probes
from app.probes.pg_queues import (
    PgQueuesProbe,
    QueueConfigError,
    SqlQueue,
    consumed,
    found_from_catalog,
    parse_sql_queues,
)
from app.probes.schema import RedisQueue

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def poll(probe: PgQueuesProbe) -> dict[str, Any]:
    r = await run_poll(probe)
    assert r.ok, r.error
    return dict(r.data)


def queue(data: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    hits = [q for q in data["queues"] if q["key"] == key and q["name"].split(":")[-1] == name]
    assert len(hits) == 1, f"queue {name} of {key} not found once in {data['queues']}"
    return hits[0]


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_dsn, server_settings={"application_name": "pgq-test"})
    yield c
    await c.close()


@pytest.fixture
async def schema(conn: asyncpg.Connection, run_id: str) -> AsyncIterator[str]:
    name = f"lt_pgq_{run_id}"
    await conn.execute(f"CREATE SCHEMA {name}")
    yield name
    await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


# ---- procrastinate: its own schema, defer and worker -----------------------------------


async def truth_procrastinate(c: asyncpg.Connection, s: str, q: str) -> dict[str, Any]:
    """The figures read with plain SQL, independently of the probe."""
    return dict(
        await c.fetchrow(
            f"""
SELECT count(*) FILTER (WHERE status = 'todo'
                          AND (scheduled_at IS NULL OR scheduled_at <= now())) AS depth,
       count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'doing') AS in_flight,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status IN ('succeeded', 'failed')) AS done,
       (SELECT extract(epoch FROM now() - min(e.at))::float8
          FROM {s}.procrastinate_events e JOIN {s}.procrastinate_jobs j ON j.id = e.job_id
         WHERE e.type = 'deferred' AND j.status = 'todo' AND j.scheduled_at IS NULL) AS oldest_s
FROM {s}.procrastinate_jobs WHERE queue_name = $1""",
            q,
        )
    )


def assert_matches(got: dict[str, Any], truth: dict[str, Any]) -> None:
    for k in ("depth", "scheduled", "in_flight", "failed"):
        assert got[k] == truth[k], (k, got, truth)
    assert got["oldest_age_s"] is not None and truth["oldest_s"] is not None
    # the probe and the ground truth read at slightly different instants
    assert abs(got["oldest_age_s"] - truth["oldest_s"]) < 1.0, (got, truth)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_procrastinate_real_worker_killed(
    pg_dsn: str, conn: asyncpg.Connection, schema: str, run_id: str
) -> None:
    from tests.pgq_procrastinate_app import make_app

    qname = f"emails_{run_id}"
    key = f"{schema}.procrastinate_jobs"
    app = make_app(pg_dsn, schema, qname)
    probe = PgQueuesProbe(pg_dsn)
    worker: subprocess.Popen[bytes] | None = None
    try:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()  # procrastinate's own schema
            work, boom = app.tasks["work"], app.tasks["boom"]
            for i in range(3):
                await boom.defer_async(n=i)
            for i in range(60):
                await work.defer_async(n=i)
            for i in range(4):  # due in an hour: scheduled, not backlog
                await work.configure(schedule_in={"hours": 1}).defer_async(n=100 + i)
            await asyncio.sleep(1.0)

            # 1. a backlog nobody consumes yet
            d = await poll(probe)
            assert f"procrastinate {schema}" in d["systems"]
            q = queue(d, key, qname)
            assert_matches(q, await truth_procrastinate(conn, schema, qname))
            assert q["depth"] == 63 and q["scheduled"] == 4 and q["in_flight"] == 0
            assert q["layout"] == "procrastinate" and q["source"] == "postgres"
            assert q["oldest_age_s"] >= 1.0
            assert q["consumed_per_s"] is None  # no previous poll yet
            # no worker has ever heartbeated: direct evidence that nobody consumes
            assert q["consumers"]["kind"] == "registry" and q["consumers"]["count"] == 0
            check_queue_contract(q)

            # 2. procrastinate's own worker consumes (2 at a time, 0.15 s a job)
            worker = subprocess.Popen(
                [sys.executable, "-m", "tests.pgq_procrastinate_app", pg_dsn, schema, qname],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            rates: list[float] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                q = queue(await poll(probe), key, qname)
                if q["consumed_per_s"] is not None:
                    rates.append(q["consumed_per_s"])
                if q["failed"] == 3 and q["depth"] <= 40 and max(rates, default=0) > 0:
                    break
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            assert q["failed"] == 3, q
            assert q["consumers"]["count"] == 1 and q["consumers"]["evidence"] == "direct"
            # 2 workers x 1 job / 0.15 s: ~13/s at most (boom jobs are instant)
            assert 2.0 < max(rates) < 40.0, rates

            # 3. the worker dies mid-job (SIGKILL, like an OOM kill)
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            await asyncio.sleep(0.3)
            truth = await truth_procrastinate(conn, schema, qname)
            q = queue(await poll(probe), key, qname)
            assert_matches(q, truth)
            assert q["depth"] > 0

            # 4. producers go on, nobody consumes: the rate drops to 0, age grows
            for i in range(5):
                await work.defer_async(n=200 + i)
            await asyncio.sleep(1.2)
            q2 = queue(await poll(probe), key, qname)
            truth2 = await truth_procrastinate(conn, schema, qname)
            assert_matches(q2, truth2)
            assert q2["depth"] == q["depth"] + 5
            assert q2["consumed_per_s"] == 0.0
            assert truth2["done"] == truth["done"]  # ground truth: nothing finished
            assert q2["oldest_age_s"] >= q["oldest_age_s"] + 1.0
            # jobs claimed by the killed worker stay "doing": in flight, not lost
            assert q2["in_flight"] == truth2["in_flight"]
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(10)
        await probe.close()


# ---- pgmq: documented layout (pgmq.meta, pgmq.q_<queue>, pgmq.a_<queue>) ----------------


@pytest.fixture
async def pgmq_queue(conn: asyncpg.Connection, run_id: str) -> AsyncIterator[str]:
    had_schema = await conn.fetchval("SELECT to_regnamespace('pgmq') IS NOT NULL")
    name = f"lt_{run_id}"
    await conn.execute("CREATE SCHEMA IF NOT EXISTS pgmq")
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS pgmq.meta (queue_name varchar UNIQUE NOT NULL, "
        "is_partitioned boolean NOT NULL DEFAULT false, is_unlogged boolean NOT NULL "
        "DEFAULT false, created_at timestamptz NOT NULL DEFAULT now())"
    )
    # pgmq.create_non_partitioned(queue_name), as pgmq 1.x writes it
    await conn.execute(f"""
        CREATE TABLE pgmq.q_{name} (
            msg_id BIGINT PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
            read_ct INT DEFAULT 0 NOT NULL,
            enqueued_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
            vt TIMESTAMP WITH TIME ZONE NOT NULL,
            message JSONB);
        CREATE TABLE pgmq.a_{name} (
            msg_id BIGINT PRIMARY KEY, read_ct INT DEFAULT 0 NOT NULL,
            enqueued_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
            archived_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
            vt TIMESTAMP WITH TIME ZONE NOT NULL, message JSONB);
        CREATE INDEX q_{name}_vt_idx ON pgmq.q_{name} (vt ASC);
        INSERT INTO pgmq.meta (queue_name) VALUES ('{name}');""")
    yield name
    await conn.execute(f"DROP TABLE IF EXISTS pgmq.q_{name}, pgmq.a_{name}")
    await conn.execute("DELETE FROM pgmq.meta WHERE queue_name = $1", name)
    if not had_schema:
        await conn.execute("DROP SCHEMA pgmq CASCADE")


async def pgmq_send(c: asyncpg.Connection, q: str, n: int, delay: int = 0) -> None:
    await c.execute(
        f"INSERT INTO pgmq.q_{q} (vt, message) SELECT now() + make_interval(secs => $1), "
        "jsonb_build_object('n', g) FROM generate_series(1, $2) g",
        delay,
        n,
    )


async def pgmq_read(c: asyncpg.Connection, q: str, n: int, vt: int) -> list[int]:
    rows = await c.fetch(
        f"""WITH cte AS (SELECT msg_id FROM pgmq.q_{q} WHERE vt <= now() ORDER BY msg_id
                         LIMIT $1 FOR UPDATE SKIP LOCKED)
            UPDATE pgmq.q_{q} m SET vt = now() + make_interval(secs => $2),
                   read_ct = read_ct + 1
            FROM cte WHERE m.msg_id = cte.msg_id RETURNING m.msg_id""",
        n,
        vt,
    )
    return [r["msg_id"] for r in rows]


@pytest.mark.timeout(60)
async def test_pgmq_documented_layout(
    pg_dsn: str, conn: asyncpg.Connection, pgmq_queue: str
) -> None:
    q, key = pgmq_queue, f"pgmq.q_{pgmq_queue}"
    await pgmq_send(conn, q, 30)
    await pgmq_send(conn, q, 5, delay=3600)  # delayed: scheduled
    await asyncio.sleep(1.0)
    taken = await pgmq_read(conn, q, 4, vt=60)  # 4 in flight (invisible for 60 s)
    await pgmq_read(conn, q, 3, vt=0)  # read, not deleted, visible again: retries
    probe = PgQueuesProbe(pg_dsn)
    try:
        t0 = time.monotonic()
        got = queue(await poll(probe), key, q)
        truth = await conn.fetchrow(
            f"""SELECT count(*) FILTER (WHERE vt <= now()) AS depth,
                       count(*) FILTER (WHERE vt > now() AND read_ct > 0) AS in_flight,
                       extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE vt <= now()))::float8
                         AS oldest_s FROM pgmq.q_{q}"""
        )
        assert got["depth"] == truth["depth"] == 26
        assert got["in_flight"] == truth["in_flight"] == 4
        assert got["scheduled"] == 5 and got["retry"] == 3 and got["failed"] is None
        assert abs(got["oldest_age_s"] - truth["oldest_s"]) < 1.0 and got["oldest_age_s"] >= 1.0
        assert got["layout"] == "pgmq" and got["name"] == q

        # a consumer deletes its 4 and archives 6 more; 2 new messages arrive
        await conn.execute(f"DELETE FROM pgmq.q_{q} WHERE msg_id = ANY($1)", taken)
        more = await pgmq_read(conn, q, 6, vt=30)
        await conn.execute(
            f"""WITH a AS (DELETE FROM pgmq.q_{q} WHERE msg_id = ANY($1) RETURNING *)
                INSERT INTO pgmq.a_{q} (msg_id, read_ct, enqueued_at, vt, message)
                SELECT msg_id, read_ct, enqueued_at, vt, message FROM a""",
            more,
        )
        await pgmq_send(conn, q, 2)
        await asyncio.sleep(1.0)
        t1 = time.monotonic()
        got = queue(await poll(probe), key, q)
        # 10 consumed between two polls that started t1 - t0 apart
        assert abs(got["consumed_per_s"] * (t1 - t0) - 10) < 0.5, got
        assert got["depth"] == 26 - 6 + 2 and got["in_flight"] == 0

        # producers only: nothing consumed
        await pgmq_send(conn, q, 7)
        await asyncio.sleep(0.5)
        got = queue(await poll(probe), key, q)
        assert got["consumed_per_s"] == 0.0 and got["depth"] == 29
    finally:
        await probe.close()


# ---- River and Oban: documented layouts ----------------------------------------------------

RIVER_DDL = """
CREATE TYPE {s}.river_job_state AS ENUM ('available', 'cancelled', 'completed', 'discarded',
    'pending', 'retryable', 'running', 'scheduled');
CREATE TABLE {s}.river_job (
    id bigserial PRIMARY KEY,
    state {s}.river_job_state NOT NULL DEFAULT 'available',
    attempt smallint NOT NULL DEFAULT 0,
    max_attempts smallint NOT NULL,
    attempted_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    finalized_at timestamptz,
    scheduled_at timestamptz NOT NULL DEFAULT now(),
    priority smallint NOT NULL DEFAULT 1,
    args jsonb NOT NULL DEFAULT '{{}}',
    attempted_by text[],
    errors jsonb[],
    kind text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{{}}',
    queue text NOT NULL DEFAULT 'default',
    tags varchar(255)[] NOT NULL DEFAULT '{{}}');
CREATE INDEX river_job_prioritized_fetching_index
    ON {s}.river_job (state, queue, priority, scheduled_at, id);
"""

OBAN_DDL = """
CREATE TYPE {s}.oban_job_state AS ENUM ('available', 'scheduled', 'executing', 'retryable',
    'completed', 'discarded', 'cancelled');
CREATE TABLE {s}.oban_jobs (
    id bigserial PRIMARY KEY,
    state {s}.oban_job_state NOT NULL DEFAULT 'available',
    queue text NOT NULL DEFAULT 'default',
    worker text NOT NULL,
    args jsonb NOT NULL DEFAULT '{{}}',
    errors jsonb[] NOT NULL DEFAULT ARRAY[]::jsonb[],
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 20,
    inserted_at timestamp without time zone NOT NULL DEFAULT timezone('UTC', now()),
    scheduled_at timestamp without time zone NOT NULL DEFAULT timezone('UTC', now()),
    attempted_at timestamp without time zone,
    completed_at timestamp without time zone,
    attempted_by text[],
    discarded_at timestamp without time zone,
    priority integer NOT NULL DEFAULT 0,
    tags varchar(255)[] DEFAULT ARRAY[]::varchar[],
    meta jsonb DEFAULT '{{}}',
    cancelled_at timestamp without time zone);
CREATE INDEX oban_jobs_state_queue_priority_scheduled_at_id_index
    ON {s}.oban_jobs (state, queue, priority, scheduled_at, id);
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("system", ["river", "oban"])
async def test_river_and_oban_documented_layouts(
    pg_dsn: str, conn: asyncpg.Connection, schema: str, system: str
) -> None:
    river = system == "river"
    s = schema
    table = "river_job" if river else "oban_jobs"
    run = "running" if river else "executing"
    # Oban keeps UTC in `timestamp without time zone`; River uses timestamptz
    now = "now()" if river else "timezone('UTC', now())"
    finished = "finalized_at" if river else "completed_at"
    kind = "kind" if river else "worker"
    await conn.execute((RIVER_DDL if river else OBAN_DDL).format(s=s))
    # the test session runs in another time zone than UTC: naive UTC times must still read right
    await conn.execute("SET TimeZone = 'America/New_York'")

    async def insert(state: str, n: int, queue: str = "default", sched: str = now) -> None:
        extra = ", max_attempts" if river else ""
        await conn.execute(
            f"INSERT INTO {s}.{table} (state, queue, {kind}, scheduled_at{extra}) "
            f"SELECT '{state}', $1, 'Mailer', {sched}{', 25' if river else ''} "
            "FROM generate_series(1, $2)",
            queue,
            n,
        )

    await insert("available", 1, sched=f"{now} - interval '42 seconds'")  # waiting since 42 s
    await insert("available", 19)
    await insert(run, 3)
    await insert("retryable", 2, sched=f"{now} + interval '30 seconds'")
    await insert("scheduled", 4, sched=f"{now} + interval '1 hour'")
    await insert("discarded", 1)
    await insert("available", 2, queue="reports")
    await conn.execute(
        f"UPDATE {s}.{table} SET {finished} = {now} WHERE state IN ('discarded', 'completed')"
    )
    probe = PgQueuesProbe(pg_dsn)
    key = f"{s}.{table}"
    try:
        t0 = time.monotonic()
        d = await poll(probe)
        assert f"{system} {s}" in d["systems"]
        got = queue(d, key, "default")
        truth = await conn.fetchrow(
            f"""SELECT count(*) FILTER (WHERE state = 'available') AS depth,
                       count(*) FILTER (WHERE state = '{run}') AS in_flight,
                       count(*) FILTER (WHERE state = 'discarded') AS failed,
                       extract(epoch FROM {now} - min(scheduled_at)
                               FILTER (WHERE state = 'available'))::float8 AS oldest_s
                FROM {s}.{table} WHERE queue = 'default'"""
        )
        assert got["depth"] == truth["depth"] == 20
        assert got["in_flight"] == truth["in_flight"] == 3
        assert got["failed"] == truth["failed"] == 1
        assert got["retry"] == 2 and got["scheduled"] == 4
        assert (
            41.0 <= got["oldest_age_s"] <= 45.0 and abs(got["oldest_age_s"] - truth["oldest_s"]) < 1
        )
        assert queue(d, key, "reports")["depth"] == 2
        assert got["layout"] == system

        # workers finish 5 jobs (the running 3 and 2 available ones); 3 arrive
        await conn.execute(
            f"""UPDATE {s}.{table} SET state = 'completed', {finished} = {now}
                WHERE id IN (SELECT id FROM {s}.{table} WHERE queue = 'default'
                             AND state IN ('{run}', 'available') ORDER BY state DESC, id LIMIT 5)"""
        )
        await insert("available", 3)
        await asyncio.sleep(1.0)
        t1 = time.monotonic()
        got = queue(await poll(probe), key, "default")
        assert abs(got["consumed_per_s"] * (t1 - t0) - 5) < 0.3, got
        assert got["depth"] == 20 - 2 + 3 and got["in_flight"] == 0
        # the other queue consumed nothing
        assert queue(await poll(probe), key, "reports")["consumed_per_s"] == 0.0

        # arrivals only
        await insert("available", 4)
        await asyncio.sleep(0.3)
        got = queue(await poll(probe), key, "default")
        assert got["consumed_per_s"] == 0.0 and got["depth"] == 25
    finally:
        await probe.close()


# ---- Que and graphile-worker: documented layouts, workers that lock and delete ------------

QUE_DDL = """
CREATE TABLE {s}.que_jobs (
    priority smallint NOT NULL DEFAULT 100,
    run_at timestamptz NOT NULL DEFAULT now(),
    id bigserial PRIMARY KEY,
    job_class text NOT NULL,
    error_count integer NOT NULL DEFAULT 0,
    last_error_message text,
    queue text NOT NULL DEFAULT 'default',
    last_error_backtrace text,
    finished_at timestamptz,
    expired_at timestamptz,
    args jsonb NOT NULL DEFAULT '[]',
    data jsonb NOT NULL DEFAULT '{{}}',
    job_schema_version integer NOT NULL DEFAULT 1,
    kwargs jsonb NOT NULL DEFAULT '{{}}');
CREATE INDEX que_poll_idx ON {s}.que_jobs (job_schema_version, queue, priority, run_at, id)
    WHERE finished_at IS NULL AND expired_at IS NULL;
"""


@pytest.mark.timeout(60)
async def test_que_documented_layout_advisory_locks(
    pg_dsn: str, conn: asyncpg.Connection, schema: str
) -> None:
    s = schema
    await conn.execute(QUE_DDL.format(s=s))

    async def insert(n: int, run_at: str = "now()", extra: str = "", vals: str = "") -> None:
        await conn.execute(
            f"INSERT INTO {s}.que_jobs (job_class, run_at{extra}) "
            f"SELECT 'Mailer', {run_at}{vals} FROM generate_series(1, $1)",
            n,
        )

    await insert(1, "now() - interval '15 seconds'")
    await insert(9)
    await insert(3, "now() + interval '1 hour'")  # scheduled
    await insert(2, "now() - interval '1 second'", ", error_count", ", 1")  # retrying, due
    await insert(1, "now()", ", expired_at, error_count", ", now(), 15")  # gave up
    await insert(1, "now()", ", finished_at", ", now()")  # finished, kept
    # a Que worker holds a session advisory lock on each job it works
    worker = await asyncpg.connect(pg_dsn, server_settings={"application_name": "que-worker"})
    probe = PgQueuesProbe(pg_dsn)
    try:
        locked = [
            r["id"]
            for r in await worker.fetch(
                f"SELECT id FROM {s}.que_jobs WHERE finished_at IS NULL AND expired_at IS NULL "
                "AND run_at <= now() AND error_count = 0 ORDER BY id DESC LIMIT 2"
            )
        ]
        for i in locked:
            assert await worker.fetchval("SELECT pg_try_advisory_lock($1)", i)
        t0 = time.monotonic()
        d = await poll(probe)
        got = queue(d, f"{s}.que_jobs", "default")
        assert got["depth"] == 10 and got["in_flight"] == 2, got  # 12 due, 2 being worked
        assert got["scheduled"] == 3 and got["retry"] == 2 and got["failed"] == 1
        truth = await conn.fetchval(
            f"SELECT extract(epoch FROM now() - min(run_at))::float8 FROM {s}.que_jobs "
            "WHERE finished_at IS NULL AND expired_at IS NULL AND run_at <= now() "
            "AND NOT (id = ANY($1))",
            locked,
        )
        assert abs(got["oldest_age_s"] - truth) < 1.0 and got["oldest_age_s"] >= 15.0

        # the worker finishes both (Que deletes done jobs) and unlocks; one job arrives
        await worker.execute(f"DELETE FROM {s}.que_jobs WHERE id = ANY($1)", locked)
        await worker.execute("SELECT pg_advisory_unlock_all()")
        await insert(1)
        await asyncio.sleep(0.5)
        t1 = time.monotonic()
        got = queue(await poll(probe), f"{s}.que_jobs", "default")
        assert got["in_flight"] == 0 and got["depth"] == 11
        assert abs(got["consumed_per_s"] * (t1 - t0) - 2) < 0.2, got
    finally:
        await worker.close()
        await probe.close()


GRAPHILE_DDL = """
CREATE TABLE {s}._private_jobs (
    id bigserial PRIMARY KEY,
    job_queue_id integer,
    task_id integer NOT NULL,
    payload json DEFAULT '{{}}' NOT NULL,
    priority smallint DEFAULT 0 NOT NULL,
    run_at timestamptz DEFAULT now() NOT NULL,
    attempts smallint DEFAULT 0 NOT NULL,
    max_attempts smallint DEFAULT 25 NOT NULL,
    last_error text,
    created_at timestamptz DEFAULT now() NOT NULL,
    updated_at timestamptz DEFAULT now() NOT NULL,
    key text,
    locked_at timestamptz,
    locked_by text,
    revision integer DEFAULT 0 NOT NULL,
    flags jsonb,
    is_available boolean GENERATED ALWAYS AS ((locked_at IS NULL) AND (attempts < max_attempts))
        STORED NOT NULL);
"""


@pytest.mark.timeout(60)
async def test_graphile_worker_documented_layout(
    pg_dsn: str, conn: asyncpg.Connection, schema: str
) -> None:
    s = schema
    await conn.execute(GRAPHILE_DDL.format(s=s))

    async def insert(n: int, cols: str = "", vals: str = "") -> None:
        await conn.execute(
            f"INSERT INTO {s}._private_jobs (task_id{cols}) "
            f"SELECT 1{vals} FROM generate_series(1, $1)",
            n,
        )

    await insert(1, ", run_at", ", now() - interval '25 seconds'")
    await insert(7)
    await insert(2, ", locked_at, locked_by", ", now(), 'worker-7'")  # being worked
    await insert(1, ", locked_at, locked_by", ", now() - interval '5 hours', 'worker-dead'")
    await insert(3, ", run_at", ", now() + interval '1 hour'")
    await insert(2, ", attempts, last_error", ", 1, 'boom'")  # retrying
    await insert(1, ", attempts, last_error", ", 25, 'boom'")  # permanently failed
    probe = PgQueuesProbe(pg_dsn)
    key = f"{s}._private_jobs"
    try:
        t0 = time.monotonic()
        got = queue(await poll(probe), key, "jobs")
        assert got["layout"] == "graphile-worker"
        assert (got["depth"], got["in_flight"], got["scheduled"], got["retry"], got["failed"]) == (
            10, 3, 3, 2, 1
        ), got  # fmt: skip
        assert "1 claimed more than 4 h ago" in got["note"]
        assert 25.0 <= got["oldest_age_s"] < 27.0
        # the live worker completes its 2 (graphile deletes them); one job arrives
        await conn.execute(f"DELETE FROM {s}._private_jobs WHERE locked_by = 'worker-7'")
        await insert(1)
        await asyncio.sleep(0.5)
        t1 = time.monotonic()
        got = queue(await poll(probe), key, "jobs")
        assert got["depth"] == 11 and got["in_flight"] == 1
        assert abs(got["consumed_per_s"] * (t1 - t0) - 2) < 0.2, got
    finally:
        await probe.close()


@pytest.mark.timeout(60)
async def test_a_same_named_table_of_another_layout_is_reported_not_read(
    pg_dsn: str, conn: asyncpg.Connection, schema: str
) -> None:
    # Que 0.x (and que-go) call their id job_id and have no finished_at
    await conn.execute(
        f"CREATE TABLE {schema}.que_jobs (priority smallint NOT NULL DEFAULT 100, run_at "
        "timestamptz NOT NULL DEFAULT now(), job_id bigserial NOT NULL, job_class text NOT NULL,"
        " args json NOT NULL DEFAULT '[]', error_count integer NOT NULL DEFAULT 0, last_error "
        "text, queue text NOT NULL DEFAULT '', PRIMARY KEY (queue, priority, run_at, job_id))"
    )
    probe = PgQueuesProbe(pg_dsn)
    try:
        d = await poll(probe)
        assert not [q for q in d["queues"] if q["key"] == f"{schema}.que_jobs"]
        err = [e for e in d["errors"] if f"{schema}.que_jobs" in e]
        assert err == [
            f"{schema}.que_jobs has no column 'id': not the que layout loadtop reads; "
            "describe it with a [[queue.sql]] query"
        ]
    finally:
        await probe.close()


# ---- good_job and Solid Queue (Rails: naive UTC datetimes) ------------------------------

GOOD_JOB_DDL = """
CREATE TABLE {s}.good_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    queue_name text, priority integer, serialized_params jsonb,
    scheduled_at timestamp(6), performed_at timestamp(6), finished_at timestamp(6), error text,
    created_at timestamp(6) NOT NULL, updated_at timestamp(6) NOT NULL,
    active_job_id uuid, concurrency_key text, cron_key text, retried_good_job_id uuid,
    cron_at timestamp(6), batch_id uuid, batch_callback_id uuid, is_discrete boolean,
    executions_count integer, job_class text, error_event smallint, labels text[],
    locked_by_id uuid, locked_at timestamp(6));
CREATE INDEX index_good_jobs_on_queue_name_and_scheduled_at ON {s}.good_jobs
    (queue_name, scheduled_at) WHERE finished_at IS NULL;
CREATE INDEX index_good_jobs_jobs_on_finished_at ON {s}.good_jobs (finished_at)
    WHERE retried_good_job_id IS NULL AND finished_at IS NOT NULL;
"""


@pytest.mark.timeout(60)
async def test_good_job_documented_layout(
    pg_dsn: str, conn: asyncpg.Connection, schema: str
) -> None:
    s, utc = schema, "timezone('UTC', now())"
    await conn.execute(GOOD_JOB_DDL.format(s=s))
    await conn.execute("SET TimeZone = 'Asia/Tokyo'")  # Rails writes UTC whatever the session

    async def insert(n: int, cols: str = "", vals: str = "", created: str = utc) -> None:
        await conn.execute(
            f"INSERT INTO {s}.good_jobs (queue_name, job_class, created_at, updated_at{cols}) "
            f"SELECT 'mailers', 'MailJob', {created}, {utc}{vals} FROM generate_series(1, $1)",
            n,
        )

    await insert(1, created=f"{utc} - interval '30 seconds'")
    await insert(5)  # queued
    await insert(2, ", performed_at", f", {utc}")  # running
    await insert(3, ", scheduled_at", f", {utc} + interval '1 hour'")
    await insert(1, ", scheduled_at, error", f", {utc} + interval '10 seconds', 'Timeout'")
    await insert(2, ", performed_at, finished_at, error", f", {utc}, {utc}, 'boom'")  # discarded
    await insert(5, ", performed_at, finished_at", f", {utc}, {utc}")  # succeeded
    probe = PgQueuesProbe(pg_dsn)
    key = f"{s}.good_jobs"
    try:
        t0 = time.monotonic()
        got = queue(await poll(probe), key, "mailers")
        assert (got["depth"], got["in_flight"], got["scheduled"], got["retry"], got["failed"]) == (
            6, 2, 4, 1, 2
        ), got  # fmt: skip
        assert 30.0 <= got["oldest_age_s"] < 32.0, got
        # the 2 running jobs finish
        await conn.execute(
            f"UPDATE {s}.good_jobs SET finished_at = {utc} "
            "WHERE performed_at IS NOT NULL AND finished_at IS NULL"
        )
        await asyncio.sleep(0.5)
        t1 = time.monotonic()
        got = queue(await poll(probe), key, "mailers")
        assert got["in_flight"] == 0 and abs(got["consumed_per_s"] * (t1 - t0) - 2) < 0.2, got
        await asyncio.sleep(0.3)
        got = queue(await poll(probe), key, "mailers")
        assert got["consumed_per_s"] == 0.0
    finally:
        await probe.close()


SOLID_QUEUE_DDL = """
CREATE TABLE {s}.solid_queue_jobs (
    id bigserial PRIMARY KEY, queue_name varchar NOT NULL, class_name varchar NOT NULL,
    arguments text, priority integer NOT NULL DEFAULT 0, active_job_id varchar,
    scheduled_at timestamp(6), finished_at timestamp(6), concurrency_key varchar,
    created_at timestamp(6) NOT NULL, updated_at timestamp(6) NOT NULL);
CREATE TABLE {s}.solid_queue_ready_executions (
    id bigserial PRIMARY KEY, job_id bigint NOT NULL UNIQUE, queue_name varchar NOT NULL,
    priority integer NOT NULL DEFAULT 0, created_at timestamp(6) NOT NULL);
CREATE TABLE {s}.solid_queue_claimed_executions (
    id bigserial PRIMARY KEY, job_id bigint NOT NULL UNIQUE, process_id bigint,
    created_at timestamp(6) NOT NULL);
CREATE TABLE {s}.solid_queue_failed_executions (
    id bigserial PRIMARY KEY, job_id bigint NOT NULL UNIQUE, error text,
    created_at timestamp(6) NOT NULL);
CREATE TABLE {s}.solid_queue_scheduled_executions (
    id bigserial PRIMARY KEY, job_id bigint NOT NULL UNIQUE, queue_name varchar NOT NULL,
    priority integer NOT NULL DEFAULT 0, scheduled_at timestamp(6) NOT NULL,
    created_at timestamp(6) NOT NULL);
CREATE TABLE {s}.solid_queue_processes (
    id bigserial PRIMARY KEY, kind varchar NOT NULL, last_heartbeat_at timestamp(6) NOT NULL,
    supervisor_id bigint, pid integer NOT NULL, hostname varchar, metadata text,
    created_at timestamp(6) NOT NULL, name varchar NOT NULL);
"""


@pytest.mark.timeout(60)
async def test_solid_queue_documented_layout(
    pg_dsn: str, conn: asyncpg.Connection, schema: str
) -> None:
    s, utc = schema, "timezone('UTC', now())"
    await conn.execute(SOLID_QUEUE_DDL.format(s=s))

    async def enqueue(n: int, where: str, created: str = utc) -> list[int]:
        ids = [
            r["id"]
            for r in await conn.fetch(
                f"INSERT INTO {s}.solid_queue_jobs (queue_name, class_name, created_at, "
                f"updated_at) SELECT 'default', 'MailJob', {created}, {utc} "
                "FROM generate_series(1, $1) RETURNING id",
                n,
            )
        ]
        if where == "ready":
            sql = (f"INSERT INTO {s}.solid_queue_ready_executions (job_id, queue_name, "
                   f"created_at) SELECT unnest($1::int8[]), 'default', {created}")  # fmt: skip
        elif where == "claimed":
            sql = (f"INSERT INTO {s}.solid_queue_claimed_executions (job_id, process_id, "
                   f"created_at) SELECT unnest($1::int8[]), 1, {utc}")  # fmt: skip
        elif where == "failed":
            sql = (f"INSERT INTO {s}.solid_queue_failed_executions (job_id, error, "
                   f"created_at) SELECT unnest($1::int8[]), 'boom', {utc}")  # fmt: skip
        else:
            sql = (f"INSERT INTO {s}.solid_queue_scheduled_executions (job_id, queue_name, "
                   f"scheduled_at, created_at) SELECT unnest($1::int8[]), 'default', "
                   f"{utc} + interval '1 hour', {utc}")  # fmt: skip
        await conn.execute(sql, ids)
        return ids

    await enqueue(1, "ready", created=f"{utc} - interval '20 seconds'")
    await enqueue(7, "ready")
    claimed = await enqueue(3, "claimed")
    await enqueue(2, "failed")
    await enqueue(4, "scheduled")
    # one live worker, one whose heartbeat stopped 10 minutes ago, and a supervisor
    await conn.execute(
        f"""INSERT INTO {s}.solid_queue_processes (kind, last_heartbeat_at, pid, created_at, name)
            VALUES ('Worker', {utc}, 11, {utc}, 'worker-a'),
                   ('Worker', {utc} - interval '10 minutes', 12, {utc}, 'worker-b'),
                   ('Supervisor', {utc}, 10, {utc}, 'supervisor')"""
    )
    probe = PgQueuesProbe(pg_dsn)
    key = f"{s}.solid_queue_ready_executions"
    try:
        t0 = time.monotonic()
        got = queue(await poll(probe), key, "default")
        assert (got["depth"], got["in_flight"], got["failed"], got["scheduled"]) == (8, 3, 2, 4)
        assert 20.0 <= got["oldest_age_s"] < 22.0
        assert got["consumers"]["kind"] == "registry" and got["consumers"]["count"] == 1
        # the worker finishes its 3 claimed jobs (claims deleted, jobs kept finished); 1 arrives
        await conn.execute(
            f"DELETE FROM {s}.solid_queue_claimed_executions WHERE job_id = ANY($1)", claimed
        )
        await conn.execute(
            f"UPDATE {s}.solid_queue_jobs SET finished_at = {utc} WHERE id = ANY($1)", claimed
        )
        await enqueue(1, "ready")
        await asyncio.sleep(0.5)
        t1 = time.monotonic()
        got = queue(await poll(probe), key, "default")
        assert got["depth"] == 9 and got["in_flight"] == 0
        assert abs(got["consumed_per_s"] * (t1 - t0) - 3) < 0.2, got
    finally:
        await probe.close()


# ---- [[queue.sql]]: a user's own queue, and bad queries --------------------------------------


@pytest.mark.timeout(60)
async def test_sql_queues_good_and_bad(pg_dsn: str, conn: asyncpg.Connection, schema: str) -> None:
    s = schema
    await conn.execute(
        f"""CREATE TABLE {s}.jobs (id serial PRIMARY KEY, status text NOT NULL,
                                   created_at timestamptz NOT NULL DEFAULT now());
            INSERT INTO {s}.jobs (status, created_at)
            SELECT 'pending', now() - interval '20 seconds' FROM generate_series(1, 7);
            INSERT INTO {s}.jobs (status) SELECT 'running' FROM generate_series(1, 2);
            INSERT INTO {s}.jobs (status) SELECT 'failed' FROM generate_series(1, 1);"""
    )
    good = SqlQueue(
        "app-jobs",
        f"""SELECT count(*) FILTER (WHERE status = 'pending') AS depth,
                   count(*) FILTER (WHERE status = 'running') AS in_flight,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'done') AS done,
                   extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))
                     AS oldest_s
            FROM {s}.jobs""",
    )
    bad = [
        SqlQueue("typo", f"SELEC count(*) AS depth FROM {s}.jobs"),
        SqlQueue(
            "writes",
            f"WITH d AS (DELETE FROM {s}.jobs RETURNING 1) SELECT count(*) AS depth FROM d",
        ),
        SqlQueue("no-depth", f"SELECT count(*) AS n FROM {s}.jobs"),
        SqlQueue("slow", "SELECT 1 AS depth FROM pg_sleep(5)"),
        SqlQueue("no-table", "SELECT count(*) AS depth FROM no_such_table_here"),
    ]
    probe = PgQueuesProbe(pg_dsn, sql_queues=[good, *bad], timeout=4.0)
    try:
        t0 = time.monotonic()
        d = await poll(probe)
        q = queue(d, "app-jobs", "app-jobs")
        assert (q["depth"], q["in_flight"], q["failed"]) == (7, 2, 1)
        assert 19.0 <= q["oldest_age_s"] <= 22.0 and q["layout"] == "sql"
        assert q["consumers"]["kind"] == "polling"  # it returns `done`
        assert [x["name"] for x in d["queues"] if x["layout"] == "sql"] == ["app-jobs"]
        errors = d["errors"]
        assert len(errors) == 5 and all("\n" not in e for e in errors), errors
        by = {e.split("'")[1]: e for e in errors}
        assert "syntax error" in by["typo"]
        assert "read-only" in by["writes"]
        assert "depth" in by["no-depth"]
        assert "timeout" in by["slow"]
        assert "does not exist" in by["no-table"]
        # the write was refused: nothing deleted
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.jobs") == 10
        # consumption from the query's cumulative `done` column
        await conn.execute(
            f"UPDATE {s}.jobs SET status = 'done' WHERE id IN (SELECT id FROM {s}.jobs "
            "WHERE status = 'pending' ORDER BY id LIMIT 3)"
        )
        await asyncio.sleep(0.5)
        t1 = time.monotonic()
        q = queue(await poll(probe), "app-jobs", "app-jobs")
        assert q["depth"] == 4 and abs(q["consumed_per_s"] * (t1 - t0) - 3) < 0.2, q
        # the query that timed out is not run every poll: the poll stays fast
        r = await run_poll(probe)
        assert r.ok and r.duration_ms < 1000, r
        slow = [e for e in r.data["errors"] if "'slow'" in e]
        assert len(slow) == 1 and "timeout" in slow[0] and "next try in" in slow[0], slow
    finally:
        await probe.close()


# ---- cost when there is nothing to read ---------------------------------------------------


@pytest.mark.timeout(60)
async def test_no_queue_tables_costs_one_catalog_query_per_detection(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    probe = PgQueuesProbe(pg_dsn)
    try:
        d = await poll(probe)
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname IN ('procrastinate_jobs', 'river_job', "
            "'oban_jobs', 'good_jobs', 'que_jobs', 'solid_queue_ready_executions', '_private_jobs')"
        )
        if found:
            pytest.skip("this database holds queue tables of another test")
        assert d["queues"] == [] and d["systems"] == []
        # no connection is kept between detections ...
        assert probe._conn is None
        probes = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'loadtop:probe' "
            "AND datname = current_database()"
        )
        # ... and the next polls (before the next detection) do not connect at all
        for _ in range(3):
            d = await poll(probe)
            assert d["queues"] == [] and probe._conn is None
        assert probes == await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'loadtop:probe' "
            "AND datname = current_database()"
        )
    finally:
        await probe.close()


# ---- config and contract (pure) -------------------------------------------------------------


def test_parse_sql_queues_one_line_errors() -> None:
    assert parse_sql_queues(None) == []
    got = parse_sql_queues({"sql": [{"name": " a ", "sql": "SELECT 1 AS depth;"}]})
    assert got == [SqlQueue("a", "SELECT 1 AS depth")]
    bad = [
        ([1], "must be a table"),
        ({"redis": []}, "unknown key 'redis'"),
        ({"sql": {"name": "a"}}, "[[queue.sql]]"),
        ({"sql": [{"sql": "SELECT 1 AS depth"}]}, "give a name"),
        ({"sql": [{"name": "a"}]}, "give sql"),
        ({"sql": [{"name": "a", "sql": "x", "every": 3}]}, "unknown key 'every'"),
        ({"sql": [{"name": "a", "sql": "x"}, {"name": "a", "sql": "y"}]}, "used twice"),
    ]
    for obj, needle in bad:
        with pytest.raises(QueueConfigError) as e:
            parse_sql_queues(obj)
        assert needle in str(e.value) and "\n" not in str(e.value), (obj, e.value)


def test_bad_queue_sql_in_loadtop_toml_is_exit_2(tmp_path: Path, capsys) -> None:
    f = tmp_path / "loadtop.toml"
    f.write_text('[[queue.sql]]\nname = "emails"\n')
    assert (
        main(
            [
                "watch",
                "--headless",
                "--config",
                str(f),
                "--pg",
                "postgresql://x@127.0.0.1:1/x",
                "-d",
                "1s",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "[[queue.sql]] #1 (emails): give sql" in err and len(err.splitlines()) == 1, err


def test_catalog_rows_to_systems() -> None:
    rows = [
        {"schema": "public", "name": "procrastinate_jobs", "est": 10.0},
        {"schema": "pgmq", "name": "q_emails", "est": 0.0},
        {"schema": "graphile_worker", "name": "_private_jobs", "est": 3.0},
        {"schema": "graphile_worker", "name": "jobs", "est": -1.0},  # >= 0.16: a view's twin
        {"schema": "app", "name": "que_jobs", "est": 1.0},
    ]
    got = [(f.system, f.key, f.queue) for f in found_from_catalog(rows)]
    assert got == [
        ("procrastinate", "public.procrastinate_jobs", None),
        ("pgmq", "pgmq.q_emails", "emails"),
        ("graphile-worker", "graphile_worker._private_jobs", None),
        ("que", "app.que_jobs", None),
    ]


def test_consumption_is_arrivals_minus_growth() -> None:
    assert consumed(None, 10, 5, 1.0) is None  # first poll
    assert consumed(10, 30, 25, 2.0) == 2.5  # 10 arrived, grew by 5: 5 consumed in 2 s
    assert consumed(4, 14, 10, 1.0) == 0.0  # all arrivals stayed: nobody consumes
    assert consumed(0, 0, 8, 0.5) == 16.0  # drained 8 in 0.5 s


# what the queue detectors and the Redis pane read from any probe's `queues`
DETECTOR_FIELDS = {"name": str, "layout": str, "depth": int}
OPTIONAL_NUMBERS = ("in_flight", "failed", "retry", "scheduled", "oldest_age_s", "consumed_per_s")


def check_queue_contract(q: dict[str, Any]) -> None:
    for k, t in DETECTOR_FIELDS.items():
        assert isinstance(q.get(k), t), (k, q)
    for k in OPTIONAL_NUMBERS:
        assert k in q and (q[k] is None or isinstance(q[k], int | float)), (k, q)
    assert q["source"] == "postgres" and isinstance(q["key"], str)
    # the same keys as a Redis queue, plus the ones being added to it
    assert set(q) - set(RedisQueue.__annotations__) <= {
        "scheduled", "retry", "consumed_per_s", "source", "consumers"
    }  # fmt: skip
    cons = q["consumers"]
    assert cons["kind"] in ("registry", "polling", "unknown") and cons["evidence"] in (
        "direct",
        "indirect",
    )
    assert cons["count"] is None or isinstance(cons["count"], int)


def test_readings_carry_what_the_queue_detectors_need() -> None:
    sample = {
        "name": "emails", "layout": "procrastinate", "key": "public.procrastinate_jobs",
        "depth": 63, "in_flight": 2, "failed": 3, "retry": 0, "scheduled": 4,
        "oldest_age_s": 12.5, "consumed_per_s": 0.0, "source": "postgres",
        "consumers": {"kind": "registry", "count": 0, "evidence": "direct",
                      "via": "procrastinate_workers heartbeats (< 30 s)"},
    }  # fmt: skip
    check_queue_contract(sample)
    with pytest.raises(AssertionError):
        check_queue_contract({**sample, "depth": None})


@pytest.mark.timeout(60)
async def test_build_probes_reads_sql_queues_end_to_end(pg_dsn: str) -> None:
    """The probe as a session builds it: every queue of a reading fits the contract."""
    ps = build_probes(
        pg_dsn=pg_dsn, pg_sql_queues=[SqlQueue("const", "SELECT 3 AS depth, 1 AS in_flight")]
    )
    try:
        readings = await ps.poll_once()
        r = readings["pg_queues"]
        assert r.ok, r.error
        q = queue(dict(r.data), "const", "const")
        assert q["depth"] == 3 and q["in_flight"] == 1 and q["failed"] is None
        for x in r.data["queues"]:
            check_queue_contract(x)
    finally:
        await ps.stop()


def test_report_and_headless_line_show_postgres_queues() -> None:
    from app.probes.summary import format_reading_line, probe_report_section
    from app.tick import Reading, Tick

    def pgq(t: float, depth: int, errors: list[str] | None = None) -> Reading:
        q = {"name": "emails", "layout": "procrastinate", "key": "public.procrastinate_jobs",
             "depth": depth, "in_flight": 2, "failed": 3, "retry": 0, "scheduled": 4,
             "oldest_age_s": 9.0, "consumed_per_s": 0.0, "source": "postgres"}  # fmt: skip
        return Reading("pg_queues", t, True, 4.0, {"queues": [q], "errors": errors or []})

    ticks = [
        Tick(index=i, t=1000.0 + i, elapsed=float(i + 1), interval=1.0, mode="watch",
             target_concurrency=0, concurrency=0,
             readings={"pg_queues": pgq(1000.0 + i, 40 + 5 * i,
                                        ["queue.sql 'x': syntax error: fix the query"])})
        for i in range(4)
    ]  # fmt: skip
    md = probe_report_section(ticks)
    assert "Postgres queues (growth from the step's start):" in md
    assert "| `emails` | procrastinate | 55 | +15 (+5.0/s) | 2 | 3 |" in md
    assert "- Postgres queue not read: queue.sql 'x': syntax error: fix the query" in md
    assert format_reading_line(ticks[-1].readings) == "pgq max 55"
    # nothing found: the line stays quiet; a failing probe says so
    empty = Reading("pg_queues", 1.0, True, 1.0, {"queues": []})
    assert format_reading_line({"pg_queues": empty}) == ""
    bad = Reading("pg_queues", 1.0, False, 1.0, {}, "connection refused: check")
    assert format_reading_line({"pg_queues": bad}) == "pgq ERR"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_watch_with_queue_sql_in_loadtop_toml_records_it(
    pg_dsn: str, tmp_path: Path, run_id: str
) -> None:
    """loadtop.toml's [[queue.sql]] reaches the probe through `loadtop watch`: the
    recording and the report carry the queue, and a bad query is a line, not a crash."""
    from app.session.recording import read_recording

    f = tmp_path / "loadtop.toml"
    f.write_text(
        "[[queue.sql]]\n"
        f'name = "outbox-{run_id}"\n'
        'sql = "SELECT 12 AS depth, 3 AS in_flight, 1 AS failed, 42.5 AS oldest_s"\n'
        "[[queue.sql]]\n"
        'name = "broken"\n'
        'sql = "SELECT depth FROM nowhere"\n'
    )
    rec, md = tmp_path / "w.jsonl", tmp_path / "w.md"
    code = main(["watch", "--headless", "--config", str(f), "--pg", pg_dsn, "-d", "2s",
                 "--interval", "0.5s", "--record", str(rec), "--export", str(md)])  # fmt: skip
    assert code == 0
    ticks = read_recording(rec).ticks
    got = [r for t in ticks if (r := t.readings.get("pg_queues")) is not None and r.ok]
    assert got, "no pg_queues reading recorded"
    q = queue(dict(got[-1].data), f"outbox-{run_id}", f"outbox-{run_id}")
    assert (q["depth"], q["in_flight"], q["failed"], q["oldest_age_s"]) == (12, 3, 1, 42.5)
    assert any("'broken'" in e and "nowhere" in e for e in got[-1].data["errors"])
    report = md.read_text()
    assert f"`outbox-{run_id}` | sql | 12 |" in report
    assert "Postgres queue not read: queue.sql 'broken'" in report


@pytest.mark.timeout(60)
async def test_queue_tables_created_and_dropped_while_watching(
    pg_dsn: str, conn: asyncpg.Connection, schema: str
) -> None:
    """Detection runs again every detect_every_s (30 s by default): a system
    installed mid-watch appears, and one dropped disappears without an error."""
    probe = PgQueuesProbe(pg_dsn, detect_every_s=1.0)
    key = f"{schema}.river_job"
    try:
        d = await poll(probe)
        assert not [q for q in d["queues"] if q["key"] == key]
        await conn.execute(RIVER_DDL.format(s=schema))
        await conn.execute(
            f"INSERT INTO {schema}.river_job (kind, max_attempts) SELECT 'Mailer', 25 "
            "FROM generate_series(1, 3)"
        )
        d = await poll(probe)  # before the next detection: not seen yet
        assert not [q for q in d["queues"] if q["key"] == key]
        await asyncio.sleep(1.1)
        assert queue(await poll(probe), key, "default")["depth"] == 3
        await conn.execute(f"DROP TABLE {schema}.river_job")
        d = await poll(probe)  # the read fails: dropped, not an error; detection runs again
        assert not [q for q in d["queues"] if q["key"] == key]
        assert not any(key in e for e in d.get("errors", [])), d
        d = await poll(probe)
        assert f"river {schema}" not in d["systems"]
    finally:
        await probe.close()


@pytest.mark.timeout(60)
async def test_consumption_counted_from_an_empty_table(
    pg_dsn: str, conn: asyncpg.Connection, schema: str
) -> None:
    """A queue table empty at the first poll: the jobs that arrive and are done
    before the next poll still count as consumed."""
    await conn.execute(RIVER_DDL.format(s=schema))
    probe = PgQueuesProbe(pg_dsn)
    try:
        t0 = time.monotonic()
        assert not [q for q in (await poll(probe))["queues"] if q["key"] == f"{schema}.river_job"]
        await conn.execute(
            f"INSERT INTO {schema}.river_job (kind, max_attempts) SELECT 'Mailer', 25 "
            "FROM generate_series(1, 4)"
        )
        await conn.execute(
            f"UPDATE {schema}.river_job SET state = 'completed', finalized_at = now() "
            f"WHERE id IN (SELECT id FROM {schema}.river_job ORDER BY id LIMIT 2)"
        )
        await asyncio.sleep(0.5)
        t1 = time.monotonic()
        got = queue(await poll(probe), f"{schema}.river_job", "default")
        assert got["depth"] == 2 and abs(got["consumed_per_s"] * (t1 - t0) - 2) < 0.2, got
    finally:
        await probe.close()


@pytest.mark.timeout(60)
async def test_a_monitoring_role_that_cannot_read_the_queue_is_told_what_to_grant(
    pg_dsn: str, conn: asyncpg.Connection, schema: str, run_id: str
) -> None:
    """--pg-monitor is often a pg_monitor-only role: its queues must not vanish silently."""
    from urllib.parse import urlsplit, urlunsplit

    role = f"loadtop_pgq_{run_id}"
    await conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER IN ROLE pg_monitor")
    await conn.execute(SOLID_QUEUE_DDL.format(s=schema))
    await conn.execute(
        f"INSERT INTO {schema}.solid_queue_ready_executions (job_id, queue_name, created_at) "
        "SELECT g, 'default', timezone('UTC', now()) FROM generate_series(1, 5) g"
    )
    u = urlsplit(pg_dsn)
    dsn = urlunsplit((u.scheme, f"{role}@{u.hostname}:{u.port or 5432}", u.path, "", ""))
    probe = PgQueuesProbe(dsn, detect_every_s=0.3)
    key = f"{schema}.solid_queue_ready_executions"
    try:
        d = await poll(probe)
        assert not [q for q in d["queues"] if q["key"] == key]
        assert (
            f"solid_queue queue {key}: this role cannot read it: GRANT USAGE ON SCHEMA {schema} "
            f"TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}"
        ) in d["errors"]
        # half granted: the ready table only, not the claimed/failed ones it also reads
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        await conn.execute(f"GRANT SELECT ON {key} TO {role}")
        await asyncio.sleep(0.4)
        d = await poll(probe)
        err = [e for e in d["errors"] if key in e]
        assert len(err) == 1 and "permission denied for table solid_queue_" in err[0], err
        assert f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}" in err[0]
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        await asyncio.sleep(0.4)
        d = await poll(probe)
        assert queue(d, key, "default")["depth"] == 5 and not d.get("errors")
    finally:
        await probe.close()
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
