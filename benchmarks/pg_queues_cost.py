"""What the pg_queues probe costs on big queue tables.

A procrastinate table (installed by procrastinate itself) and a River table
(its documented layout) each hold `--rows` finished jobs and a backlog of
`--backlog` ready jobs, 50 in flight and 500 failed; the probe polls them
`--polls` times. Printed: the poll time (p50/p95/max, detection poll apart),
the plan of each system's statement (does it scan the finished rows?), and
the poll time with no queue table at all.

Target: a poll stays in single-digit milliseconds per system however many
finished rows the tables hold (it reads only unfinished rows through the
systems' own indexes, LIMITed, plus the rows that arrived since the last poll).

Measured on the development machine (2 cores shared with other jobs; the
machine's PostgreSQL), 2026-11-30, 500,000 finished rows, 2,000 ready, 50 in
flight and 500 failed per table:
- no queue table: 0.1 ms per poll (no query at all between detections; the
  detection itself, a connection and one catalog query, 28 ms every 30 s);
- procrastinate + River: p50 4.9 ms, p95 6.7 ms, max 10.1 ms per poll; each
  system's statement 1.2-1.3 ms with no sequential scan (EXPLAIN ANALYZE);
- the detection poll on these tables: 64 ms (procrastinate's failed count
  scans the table; with more than 200,000 rows it is taken every 30 s).

Usage:
    uv run python benchmarks/pg_queues_cost.py --pg postgresql://postgres@127.0.0.1/db
    uv run python benchmarks/pg_queues_cost.py --rows 1000000 --backlog 20000 --polls 50
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg

from app.probes.base import run_poll
from app.probes.pg_queues import PgQueuesProbe, found_from_catalog, sql_for

RIVER_DDL = """
CREATE TYPE {s}.river_job_state AS ENUM ('available', 'cancelled', 'completed', 'discarded',
    'pending', 'retryable', 'running', 'scheduled');
CREATE TABLE {s}.river_job (
    id bigserial PRIMARY KEY, state {s}.river_job_state NOT NULL DEFAULT 'available',
    attempt smallint NOT NULL DEFAULT 0, max_attempts smallint NOT NULL DEFAULT 25,
    attempted_at timestamptz, created_at timestamptz NOT NULL DEFAULT now(),
    finalized_at timestamptz, scheduled_at timestamptz NOT NULL DEFAULT now(),
    priority smallint NOT NULL DEFAULT 1, args jsonb NOT NULL DEFAULT '{{}}',
    kind text NOT NULL DEFAULT 'Mailer', metadata jsonb NOT NULL DEFAULT '{{}}',
    queue text NOT NULL DEFAULT 'default');
CREATE INDEX river_job_prioritized_fetching_index
    ON {s}.river_job (state, queue, priority, scheduled_at, id);
CREATE INDEX river_job_state_and_finalized_at_index ON {s}.river_job (state, finalized_at)
    WHERE finalized_at IS NOT NULL;
"""


async def setup(dsn: str, s: str, rows: int, backlog: int) -> None:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=dsn, kwargs={"options": f"-c search_path={s}"}
        )
    )
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
    # procrastinate's triggers name their tables unqualified: write with its search_path
    c = await asyncpg.connect(dsn, server_settings={"search_path": s})
    try:
        t = f"{s}.procrastinate_jobs"
        await c.execute(
            f"INSERT INTO {t} (queue_name, task_name, status) SELECT 'emails', 'work', "
            "'succeeded' FROM generate_series(1, $1)",
            rows,
        )
        for status, n in (("failed", 500), ("doing", 50), ("todo", backlog)):
            await c.execute(
                f"INSERT INTO {t} (queue_name, task_name, status) SELECT 'emails', 'work', "
                f"'{status}' FROM generate_series(1, $1)",
                n,
            )
        await c.execute(RIVER_DDL.format(s=s))
        r = f"{s}.river_job"
        await c.execute(
            f"INSERT INTO {r} (state, finalized_at) SELECT 'completed', now() "
            "FROM generate_series(1, $1)",
            rows,
        )
        await c.execute(
            f"INSERT INTO {r} (state, finalized_at) SELECT 'discarded', now() "
            "FROM generate_series(1, 500)"
        )
        for state, n in (("running", 50), ("available", backlog)):
            await c.execute(
                f"INSERT INTO {r} (state) SELECT '{state}' FROM generate_series(1, $1)", n
            )
        await c.execute(f"ANALYZE {t}; ANALYZE {r}")
    finally:
        await c.close()


async def plans(dsn: str, s: str) -> None:
    c = await asyncpg.connect(dsn)
    try:
        rows = await c.fetch(
            "SELECT n.nspname AS schema, c.relname AS name, c.reltuples::float8 AS est "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname IN ('procrastinate_jobs', 'river_job')",
            s,
        )
        for f in found_from_catalog(rows):
            sql, _ = sql_for(f)
            # as in a poll after the first: $1 is the previous poll's highest id
            hwm = await c.fetchval(f"SELECT max(id) - 10 FROM {s}.{f.table}")
            plan = await c.fetch(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}", hwm)
            text = "\n".join(r[0] for r in plan)
            seq = [ln.strip() for ln in text.splitlines() if "Seq Scan" in ln]
            took = [ln.strip() for ln in text.splitlines() if "Execution Time" in ln]
            print(f"  {f.system}: {took[0] if took else '?'}; seq scans: {seq or 'none'}")
    finally:
        await c.close()


async def measure(dsn: str, polls: int) -> list[float]:
    probe = PgQueuesProbe(dsn)
    try:
        first = await run_poll(probe)
        assert first.ok, first.error
        print(f"  detection poll: {first.duration_ms:.1f} ms, "
              f"{len(first.data['queues'])} queues, systems {first.data['systems']}")  # fmt: skip
        out = []
        for _ in range(polls):
            r = await run_poll(probe)
            assert r.ok, r.error
            out.append(r.duration_ms)
            await asyncio.sleep(0.05)
        return out
    finally:
        await probe.close()


def figures(name: str, xs: list[float]) -> None:
    xs = sorted(xs)
    p95 = xs[max(0, int(len(xs) * 0.95) - 1)]
    print(f"  {name}: p50 {statistics.median(xs):.1f} ms, p95 {p95:.1f} ms, max {xs[-1]:.1f} ms "
          f"over {len(xs)} polls")  # fmt: skip


async def amain(a: argparse.Namespace) -> None:
    s = f"lt_bench_{uuid.uuid4().hex[:8]}"
    c = await asyncpg.connect(a.pg)
    try:
        t0 = time.monotonic()
        before = await measure(a.pg, a.polls)
        figures("no queue tables", before)
        await c.execute(f"CREATE SCHEMA {s}")
        await setup(a.pg, s, a.rows, a.backlog)
        print(f"set up {a.rows:,} finished + {a.backlog:,} ready rows per table "
              f"in {time.monotonic() - t0:.0f} s")  # fmt: skip
        await plans(a.pg, s)
        figures("procrastinate + river", await measure(a.pg, a.polls))
    finally:
        await c.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        await c.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pg", required=True, help="a PostgreSQL DSN (a database of yours)")
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--backlog", type=int, default=2_000)
    p.add_argument("--polls", type=int, default=30)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
