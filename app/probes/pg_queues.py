"""Job queues that live in Postgres: procrastinate, pgmq, River, Oban,
graphile-worker, good_job, Solid Queue and Que, found by their tables, plus a
user's own queues defined by read-only SQL (`[[queue.sql]]` in loadtop.toml).

Cost, per poll, on one small read-only connection of its own
(`application_name = loadtop:probe`, `statement_timeout`, `TimeZone = UTC`):

- detection is one catalog query, run at the first poll and then every
  `detect_every_s` (30 s), not every poll. When no queue table exists and no
  SQL queue is configured, the probe closes its connection between
  detections: it costs one short connection every 30 s and nothing else;
- each system found costs one statement per poll that reads only its
  unfinished rows (the states the systems' own partial or leading-`state`
  indexes cover), counted over a LIMITed subquery (`MAX_SCAN` rows), plus an
  index range scan over the rows that arrived since the previous poll;
- counts that need a scan of finished rows (procrastinate and good_job
  failures) are taken every poll while the table is small and every
  `detect_every_s` once its estimate passes `BIG_TABLE` rows.

Every queue lands in the reading's `queues` with the keys of the Redis
probe's queues (`app.probes.schema.PgQueuesReading`). Times stored without a
time zone (Oban, Rails) are UTC; the session's `TimeZone` is UTC so a cast to
timestamptz reads them right.

`consumed_per_s` is measured, not guessed: arrivals (rows whose id is above
the previous poll's highest id, or the rise of that highest id for tables
that delete finished rows) minus the growth of the unfinished rows, over the
time between two polls; good_job counts `finished_at` since the last poll;
a SQL queue that returns a cumulative `done` column gets the rise of it.

Long by design: eight queue systems found by their tables, one small reader
each, plus the user's `[[queue.sql]]` runner; they share one detection query
and one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.probes.base import PROBE_APP_NAME, Probe
from app.probes.postgres import pg_poll_error, pg_target

MAX_SCAN = 100_000  # unfinished rows counted per system per poll; above it counts are lower bounds
MAX_ARRIVALS = 1_000_000  # rows scanned to count arrivals since the previous poll
BIG_TABLE = 200_000  # estimated rows above which finished-row counts are taken every 30 s
DETECT_EVERY_S = 30.0
SQL_TIMEOUT_MS = 2000
SQL_SLOW_BACKOFF_S = 10.0  # a [[queue.sql]] query that timed out is retried this much later

# table name -> system; the schema is free (Oban's prefix, procrastinate's search_path ...)
TABLES = {
    "procrastinate_jobs": "procrastinate",
    "river_job": "river",
    "oban_jobs": "oban",
    "_private_jobs": "graphile-worker",
    "good_jobs": "good_job",
    "solid_queue_ready_executions": "solid_queue",
    "que_jobs": "que",
}

DETECT_SQL = r"""
SELECT n.nspname AS schema, c.relname AS name, c.reltuples::float8 AS est,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS cols,
       has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
         AS readable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND (c.relname = ANY($1::name[])
       OR (n.nspname = 'graphile_worker' AND c.relname = 'jobs')
       OR (n.nspname = 'pgmq' AND c.relname LIKE 'q\_%'))
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2
"""

# the columns each reader needs: a same-named table of another layout (Que 0.x's
# job_id, a home-made `river_job`) is reported, not queried every poll
NEEDS = {
    "procrastinate": ("id", "queue_name", "status", "scheduled_at", "attempts"),
    "river": ("id", "queue", "state", "scheduled_at"),
    "oban": ("id", "queue", "state", "scheduled_at"),
    "pgmq": ("msg_id", "vt", "read_ct", "enqueued_at"),
    "graphile-worker": ("id", "attempts", "max_attempts", "locked_at", "run_at"),
    "good_job": (
        "queue_name",
        "finished_at",
        "performed_at",
        "scheduled_at",
        "error",
        "created_at",
    ),
    "solid_queue": ("queue_name", "created_at", "job_id"),
    "que": ("id", "queue", "run_at", "error_count", "finished_at", "expired_at"),
}


def qi(*parts: str) -> str:
    """A schema-qualified, quoted identifier."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


@dataclass
class SqlQueue:
    """A user's own queue: a read-only query returning one row with `depth` and
    optionally `in_flight`, `failed`, `retry`, `scheduled`, `oldest_s` and a
    cumulative `done` (finished items, for the consumption rate)."""

    name: str
    sql: str


class QueueConfigError(ValueError):
    """A bad `[[queue.sql]]` entry: the message is one line saying what to fix."""


def parse_sql_queues(obj: Any) -> list[SqlQueue]:
    """The `[queue]` table of loadtop.toml (`[[queue.sql]]` entries with `name`
    and `sql`) -> SqlQueue list. None -> []. Raises QueueConfigError."""
    if obj is None:
        return []
    where = "loadtop.toml [queue]"
    if not isinstance(obj, Mapping):
        raise QueueConfigError(f"{where} must be a table: use [[queue.sql]] entries")
    extra = sorted(set(obj) - {"sql"})
    if extra:
        raise QueueConfigError(f"{where}: unknown key {extra[0]!r}: only [[queue.sql]] is read")
    items = obj.get("sql", [])
    if not isinstance(items, list):
        raise QueueConfigError(f"{where}: write each queue as a [[queue.sql]] table")
    out: list[SqlQueue] = []
    for i, item in enumerate(items, 1):
        at = f"loadtop.toml [[queue.sql]] #{i}"
        if not isinstance(item, Mapping):
            raise QueueConfigError(f"{at} must be a table with name and sql")
        extra = sorted(set(item) - {"name", "sql"})
        if extra:
            raise QueueConfigError(f"{at}: unknown key {extra[0]!r} (valid: name, sql)")
        name, sql = item.get("name"), item.get("sql")
        if not isinstance(name, str) or not name.strip():
            raise QueueConfigError(f'{at}: give a name, e.g. name = "emails"')
        if not isinstance(sql, str) or not sql.strip():
            raise QueueConfigError(
                f"{at} ({name}): give sql, a SELECT returning a depth column "
                "(and optionally in_flight, failed, oldest_s)"
            )
        if any(q.name == name.strip() for q in out):
            raise QueueConfigError(
                f"{at}: the name {name!r} is used twice: give each queue its own"
            )
        out.append(SqlQueue(name.strip(), sql.strip().rstrip(";").strip()))
    return out


# ---- the systems ----------------------------------------------------------------------


@dataclass
class Found:
    system: str
    schema: str
    table: str
    est: float  # pg_class.reltuples (-1: never analyzed)
    key: str = ""  # schema.table shown as the queue's key
    queue: str | None = None  # one queue per table (pgmq)
    missing: tuple[str, ...] = ()  # columns the reader needs that the table lacks
    readable: bool = True  # this role may read it (a pg_monitor-only role often may not)

    @property
    def ident(self) -> str:
        return f"{self.system}:{self.schema}.{self.table}"


def found_from_catalog(rows: Sequence[Mapping[str, Any]]) -> list[Found]:
    """Catalog rows (schema, name, est) -> the queue systems they belong to."""
    out: list[Found] = []
    for r in rows:
        schema, name, est = r["schema"], r["name"], float(r["est"] or 0)
        system = TABLES.get(name)
        queue = None
        if schema == "pgmq" and name.startswith("q_"):
            system, queue = "pgmq", name[2:]
        elif schema == "graphile_worker" and name == "jobs":
            system = "graphile-worker"
        if system is None:
            continue
        cols = r.get("cols")
        missing = tuple(c for c in NEEDS[system] if cols is not None and c not in cols)
        readable = r.get("readable") is not False
        out.append(Found(system, schema, name, est, f"{schema}.{name}", queue, missing, readable))
    # graphile-worker >= 0.16 keeps a `jobs` view over _private_jobs: read the table
    private = {f.schema for f in out if f.table == "_private_jobs"}
    return [f for f in out if not (f.table == "jobs" and f.schema in private)]


def _counts(active_where: str, cols: str, frm: str, group: str) -> str:
    return f"""
SELECT {group} AS queue, {cols}, count(*) AS active
FROM (SELECT * FROM {frm} WHERE {active_where} LIMIT {MAX_SCAN}) a
GROUP BY 1"""


def _age(expr: str) -> str:
    return f"extract(epoch FROM now() - ({expr})::timestamptz)::float8"


def sql_for(f: Found) -> tuple[str, str]:
    """(main query, arrivals mode) for one system. The main query takes $1 (the
    previous highest id, or the previous poll's server time for good_job; NULL
    on the first poll) when it has one, and returns per queue: depth,
    in_flight, retry, scheduled, oldest_s, active, arrived (or done), hwm, and
    failed unless `failed_sql` counts them. Modes: "ids" (arrived = rows above
    the previous highest id), "hwm" (arrivals = rise of the highest id: tables
    that delete finished rows), "time" (done = rows finished since $1)."""
    t = qi(f.schema, f.table)
    s = f.schema
    if f.system == "procrastinate":
        ev = qi(s, "procrastinate_events")
        ready = "status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())"
        cols = (
            f"count(*) FILTER (WHERE {ready}) AS depth, "
            "count(*) FILTER (WHERE status = 'doing') AS in_flight, "
            "count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS scheduled, "
            "count(*) FILTER (WHERE status = 'todo' AND attempts > 0) AS retry, "
            f"min(id) FILTER (WHERE {ready} AND scheduled_at IS NULL) AS oldest_id, "
            f"min(scheduled_at) FILTER (WHERE {ready}) AS oldest_sched"
        )
        counts = _counts("status IN ('todo', 'doing')", cols, t, "queue_name")
        # a job deferred now has no scheduled_at: its time is its latest
        # deferred / deferred_for_retry / retried event (indexed by job_id)
        event_at = (
            f"(SELECT max(e.at) FROM {ev} e WHERE e.job_id = c.oldest_id "
            "AND e.type IN ('deferred', 'deferred_for_retry', 'retried'))"
        )
        sql = f"""
WITH c AS ({counts}),
n AS (SELECT queue_name AS queue, count(*) AS arrived
      FROM (SELECT queue_name FROM {t} WHERE id > $1::int8 LIMIT {MAX_ARRIVALS}) x GROUP BY 1)
SELECT coalesce(c.queue, n.queue) AS queue, coalesce(c.depth, 0) AS depth,
       coalesce(c.in_flight, 0) AS in_flight, coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.retry, 0) AS retry, coalesce(c.active, 0) AS active,
       greatest({_age("c.oldest_sched")}, {_age(event_at)}) AS oldest_s,
       coalesce(n.arrived, 0) AS arrived, (SELECT max(id) FROM {t}) AS hwm
FROM c FULL JOIN n ON n.queue = c.queue"""
        return sql, "ids"
    if f.system in ("river", "oban"):
        run = "running" if f.system == "river" else "executing"
        later = "'scheduled', 'pending'" if f.system == "river" else "'scheduled'"
        oldest = _age("min(scheduled_at) FILTER (WHERE state = 'available')")
        cols = (
            "count(*) FILTER (WHERE state = 'available') AS depth, "
            f"count(*) FILTER (WHERE state = '{run}') AS in_flight, "
            f"count(*) FILTER (WHERE state IN ({later})) AS scheduled, "
            "count(*) FILTER (WHERE state = 'retryable') AS retry, "
            f"{oldest} AS oldest_s"
        )
        counts = _counts(f"state IN ('available', '{run}', 'retryable', {later})", cols, t, "queue")
        sql = f"""
WITH c AS ({counts}),
d AS (SELECT queue, count(*) AS failed FROM {t} WHERE state = 'discarded' GROUP BY 1),
n AS (SELECT queue, count(*) AS arrived
      FROM (SELECT queue FROM {t} WHERE id > $1::int8 LIMIT {MAX_ARRIVALS}) x GROUP BY 1)
SELECT q.queue, coalesce(c.depth, 0) AS depth, coalesce(c.in_flight, 0) AS in_flight,
       coalesce(c.scheduled, 0) AS scheduled, coalesce(c.retry, 0) AS retry,
       coalesce(d.failed, 0) AS failed, coalesce(c.active, 0) AS active, c.oldest_s,
       coalesce(n.arrived, 0) AS arrived, (SELECT max(id) FROM {t}) AS hwm
FROM (SELECT queue FROM c UNION SELECT queue FROM d UNION SELECT queue FROM n) q
LEFT JOIN c USING (queue) LEFT JOIN d USING (queue) LEFT JOIN n USING (queue)"""
        return sql, "ids"
    if f.system == "pgmq":
        # one table per queue; a read hides a message until vt; done = deleted or archived
        oldest = _age("min(enqueued_at) FILTER (WHERE vt <= now())")
        sql = f"""
SELECT {_lit(f.queue or f.table)} AS queue,
       count(*) FILTER (WHERE vt <= now()) AS depth,
       count(*) FILTER (WHERE vt > now() AND read_ct > 0) AS in_flight,
       count(*) FILTER (WHERE vt > now() AND read_ct = 0) AS scheduled,
       count(*) FILTER (WHERE vt <= now() AND read_ct > 0) AS retry,
       NULL::int8 AS failed, count(*) AS active, {oldest} AS oldest_s,
       (SELECT max(msg_id) FROM {t}) AS hwm
FROM (SELECT vt, read_ct, enqueued_at FROM {t} LIMIT {MAX_SCAN}) a"""
        return sql, "hwm"
    if f.system == "graphile-worker":
        # successful jobs are deleted; permanently failed ones stay (attempts >= max_attempts)
        ok = "attempts < max_attempts"
        ready = f"{ok} AND locked_at IS NULL AND run_at <= now()"
        oldest = _age(f"min(run_at) FILTER (WHERE {ready})")
        sql = f"""
SELECT 'jobs' AS queue,
       count(*) FILTER (WHERE {ready}) AS depth,
       count(*) FILTER (WHERE {ok} AND locked_at IS NOT NULL) AS in_flight,
       count(*) FILTER (WHERE {ok} AND locked_at IS NULL AND run_at > now() AND attempts = 0)
         AS scheduled,
       count(*) FILTER (WHERE {ok} AND locked_at IS NULL AND attempts > 0) AS retry,
       count(*) FILTER (WHERE NOT ({ok})) AS failed,
       count(*) FILTER (WHERE {ok}) AS active,
       count(*) FILTER (WHERE {ok} AND locked_at < now() - interval '4 hours') AS stale,
       {oldest} AS oldest_s, (SELECT max(id) FROM {t}) AS hwm
FROM (SELECT attempts, max_attempts, locked_at, run_at FROM {t} LIMIT {MAX_SCAN}) a"""
        return sql, "hwm"
    if f.system == "good_job":
        ready = "performed_at IS NULL AND (scheduled_at IS NULL OR scheduled_at <= now())"
        oldest = _age(f"min(coalesce(scheduled_at, created_at)) FILTER (WHERE {ready})")
        cols = (
            f"count(*) FILTER (WHERE {ready}) AS depth, "
            "count(*) FILTER (WHERE performed_at IS NOT NULL) AS in_flight, "
            "count(*) FILTER (WHERE performed_at IS NULL AND scheduled_at > now()) AS scheduled, "
            "count(*) FILTER (WHERE error IS NOT NULL) AS retry, "
            f"{oldest} AS oldest_s"
        )
        counts = _counts("finished_at IS NULL", cols, t, "queue_name")
        sql = f"""
WITH c AS ({counts}),
n AS (SELECT queue_name AS queue, count(*) AS done FROM {t}
      WHERE finished_at > $1::timestamptz AND finished_at <= now() GROUP BY 1)
SELECT coalesce(c.queue, n.queue) AS queue, coalesce(c.depth, 0) AS depth,
       coalesce(c.in_flight, 0) AS in_flight, coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.retry, 0) AS retry, coalesce(c.active, 0) AS active, c.oldest_s,
       coalesce(n.done, 0) AS done, now() AS hwm
FROM c FULL JOIN n ON n.queue = c.queue"""
        return sql, "time"
    if f.system == "solid_queue":
        j, cl = qi(s, "solid_queue_jobs"), qi(s, "solid_queue_claimed_executions")
        fa, sc = qi(s, "solid_queue_failed_executions"), qi(s, "solid_queue_scheduled_executions")
        oldest = _age("min(created_at)")
        sql = f"""
WITH r AS (SELECT queue_name AS queue, count(*) AS depth, {oldest} AS oldest_s
           FROM (SELECT queue_name, created_at FROM {t} LIMIT {MAX_SCAN}) x GROUP BY 1),
c AS (SELECT j.queue_name AS queue, count(*) AS in_flight
      FROM (SELECT job_id FROM {cl} LIMIT {MAX_SCAN}) x JOIN {j} j ON j.id = x.job_id GROUP BY 1),
f AS (SELECT j.queue_name AS queue, count(*) AS failed
      FROM (SELECT job_id FROM {fa} LIMIT {MAX_SCAN}) x JOIN {j} j ON j.id = x.job_id GROUP BY 1),
s AS (SELECT queue_name AS queue, count(*) AS scheduled
      FROM (SELECT queue_name FROM {sc} LIMIT {MAX_SCAN}) x GROUP BY 1),
n AS (SELECT queue_name AS queue, count(*) AS arrived
      FROM (SELECT queue_name FROM {j} WHERE id > $1::int8 LIMIT {MAX_ARRIVALS}) x GROUP BY 1)
SELECT q.queue, coalesce(r.depth, 0) AS depth, coalesce(c.in_flight, 0) AS in_flight,
       coalesce(f.failed, 0) AS failed, coalesce(s.scheduled, 0) AS scheduled,
       NULL::int8 AS retry, r.oldest_s,
       coalesce(r.depth, 0) + coalesce(c.in_flight, 0) + coalesce(s.scheduled, 0) AS active,
       coalesce(n.arrived, 0) AS arrived, (SELECT max(id) FROM {j}) AS hwm
FROM (SELECT queue FROM r UNION SELECT queue FROM c UNION SELECT queue FROM f
      UNION SELECT queue FROM s UNION SELECT queue FROM n) q
LEFT JOIN r USING (queue) LEFT JOIN c USING (queue) LEFT JOIN f USING (queue)
LEFT JOIN s USING (queue) LEFT JOIN n USING (queue)"""
        return sql, "ids"
    if f.system == "que":
        # a running job holds pg_try_advisory_lock(id): locktype advisory, objsubid 1
        live = "finished_at IS NULL AND expired_at IS NULL"
        waiting = "a.run_at <= now() AND l.id IS NULL"
        oldest = _age(f"min(a.run_at) FILTER (WHERE {waiting})")
        sql = f"""
WITH a AS (SELECT id, queue, run_at, error_count FROM {t} WHERE {live} LIMIT {MAX_SCAN}),
l AS (SELECT (l.classid::int8 << 32) | l.objid::int8 AS id FROM pg_locks l
      WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())),
c AS (SELECT a.queue, count(*) FILTER (WHERE {waiting}) AS depth,
             count(l.id) AS in_flight,
             count(*) FILTER (WHERE a.run_at > now() AND a.error_count = 0) AS scheduled,
             count(*) FILTER (WHERE a.error_count > 0 AND l.id IS NULL) AS retry,
             {oldest} AS oldest_s, count(*) AS active
      FROM a LEFT JOIN l ON l.id = a.id GROUP BY 1),
x AS (SELECT queue, count(*) AS failed FROM {t} WHERE expired_at IS NOT NULL GROUP BY 1),
n AS (SELECT queue, count(*) AS arrived
      FROM (SELECT queue FROM {t} WHERE id > $1::int8 LIMIT {MAX_ARRIVALS}) y GROUP BY 1)
SELECT q.queue, coalesce(c.depth, 0) AS depth, coalesce(c.in_flight, 0) AS in_flight,
       coalesce(c.scheduled, 0) AS scheduled, coalesce(c.retry, 0) AS retry,
       coalesce(x.failed, 0) AS failed, coalesce(c.active, 0) AS active, c.oldest_s,
       coalesce(n.arrived, 0) AS arrived, (SELECT max(id) FROM {t}) AS hwm
FROM (SELECT queue FROM c UNION SELECT queue FROM x UNION SELECT queue FROM n) q
LEFT JOIN c USING (queue) LEFT JOIN x USING (queue) LEFT JOIN n USING (queue)"""
        return sql, "ids"
    raise ValueError(f"unknown queue system {f.system!r}")


WORKER_ALIVE_S = {"procrastinate": 30, "solid_queue": 300}  # their own stale-worker thresholds


def consumers_sql(f: Found) -> str | None:
    """Workers that heartbeat in a table of their own: (alive, stalled claims)."""
    s = f.schema
    if f.system == "procrastinate":
        w, j = qi(s, "procrastinate_workers"), qi(s, f.table)
        alive = f"now() - interval '{WORKER_ALIVE_S['procrastinate']} seconds'"
        return f"""
SELECT (SELECT count(*) FROM {w} WHERE last_heartbeat > {alive}) AS alive,
       (SELECT count(*) FROM {j} x LEFT JOIN {w} k ON k.id = x.worker_id
         WHERE x.status = 'doing' AND (k.id IS NULL OR k.last_heartbeat <= {alive})) AS stalled"""
    if f.system == "solid_queue":
        p = qi(s, "solid_queue_processes")
        return f"""
SELECT count(*) FILTER (WHERE last_heartbeat_at::timestamptz > now() - interval
                        '{WORKER_ALIVE_S["solid_queue"]} seconds') AS alive, NULL::int8 AS stalled
FROM {p} WHERE kind = 'Worker'"""
    return None


def failed_sql(f: Found) -> str | None:
    """Failures kept among finished rows, which no index covers: per queue."""
    t = qi(f.schema, f.table)
    if f.system == "procrastinate":
        return f"SELECT queue_name AS queue, count(*) AS failed FROM {t} WHERE status = 'failed' GROUP BY 1"
    if f.system == "good_job":
        return (
            f"SELECT queue_name AS queue, count(*) AS failed FROM {t} "
            "WHERE finished_at IS NOT NULL AND error IS NOT NULL GROUP BY 1"
        )
    return None


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# ---- consumption rate --------------------------------------------------------------------


@dataclass
class _Prev:
    t: float  # monotonic time of the poll
    active: dict[str, int] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)  # SQL queues' cumulative `done`
    hwm: Any = None


def consumed(
    arrived: int | None, active_now: int, active_before: int | None, dt: float
) -> float | None:
    """Items consumed per second between two polls: arrivals minus growth of the
    unfinished ones. None when there is no previous poll."""
    if arrived is None or active_before is None or dt <= 0:
        return None
    return round(max(0.0, arrived - (active_now - active_before)) / dt, 3)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _int(v: Any) -> int | None:
    x = _num(v)
    return None if x is None else int(x)


# ---- the probe ---------------------------------------------------------------------------


class PgQueuesProbe(Probe):
    """Postgres-native job queues, read like the Redis probe's queues."""

    name = "pg_queues"

    def __init__(
        self,
        dsn: str,
        *,
        sql_queues: Sequence[SqlQueue] = (),
        interval: float = 1.0,
        timeout: float | None = None,
        statement_timeout_ms: int | None = None,
        detect_every_s: float = DETECT_EVERY_S,
    ) -> None:
        super().__init__(interval=interval, timeout=timeout)
        self.dsn = dsn
        self.target = pg_target(dsn)
        self.sql_queues = list(sql_queues)
        self.statement_timeout_ms = int(statement_timeout_ms or max(500, self.timeout * 1000 * 0.4))
        self.detect_every_s = detect_every_s
        self._conn: asyncpg.Connection | None = None
        self._found: list[Found] = []
        self._detected_at: float | None = None
        self._prev: dict[str, _Prev] = {}  # per system ident / "sql:<name>"
        self._failed: dict[str, tuple[float, dict[str, int]]] = {}  # slow failed counts
        self._clock: Callable[[], float] = time.monotonic
        # [[queue.sql]] queries that hit their timeout: (retry at, error), so one slow
        # query does not push every poll past its timeout
        self._sql_backoff: dict[str, tuple[float, str]] = {}

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.dsn,
            timeout=self.timeout,
            server_settings={
                "application_name": PROBE_APP_NAME,
                "statement_timeout": str(self.statement_timeout_ms),
                "lock_timeout": str(self.statement_timeout_ms),
                "idle_in_transaction_session_timeout": "10000",
                "default_transaction_read_only": "on",
                "TimeZone": "UTC",
            },
        )

    async def poll(self) -> dict[str, Any]:
        now = self._clock()
        due = self._detected_at is None or now - self._detected_at >= self.detect_every_s
        if not due and not self._found and not self.sql_queues:
            return self._empty(now)
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        conn = self._conn
        if due:
            rows = await conn.fetch(DETECT_SQL, list(TABLES))
            found = found_from_catalog(rows)
            if {f.ident for f in found} != {f.ident for f in self._found}:
                keep = {f.ident for f in found}
                self._prev = {
                    k: v for k, v in self._prev.items() if k in keep or k.startswith("sql:")
                }
            self._found, self._detected_at = found, now
        queues: list[dict[str, Any]] = []
        errors: list[str] = []
        for f in self._found:
            if not f.readable:
                errors.append(self._grant_hint(f, "this role cannot read it"))
                continue
            if f.missing:
                errors.append(
                    f"{f.key} has no column {f.missing[0]!r}: not the {f.system} layout loadtop "
                    "reads; describe it with a [[queue.sql]] query"
                )
                continue
            try:
                queues += await self._read_system(conn, f, now, due)
            except asyncpg.UndefinedTableError:
                self._detected_at = None  # dropped since the last detection: look again
            except asyncpg.InsufficientPrivilegeError as e:
                errors.append(self._grant_hint(f, str(e).strip().splitlines()[0]))
            except asyncpg.PostgresError as e:
                errors.append(
                    f"{f.system} ({f.key}): {pg_poll_error(e, self.target, self.statement_timeout_ms)}"
                )
        for sq in self.sql_queues:
            held = self._sql_backoff.get(sq.name)
            if held is not None and now < held[0]:  # too slow last time: not every poll
                errors.append(f"{held[1]} (next try in {held[0] - now:.0f} s)")
                continue
            try:
                queues.append(await self._read_sql(conn, sq, now))
                self._sql_backoff.pop(sq.name, None)
            except (asyncpg.PostgresError, QueueConfigError) as e:
                errors.append(f"queue.sql {sq.name!r}: {_sql_error(e)}")
                if isinstance(e, asyncpg.QueryCanceledError):
                    self._sql_backoff[sq.name] = (now + SQL_SLOW_BACKOFF_S, errors[-1])
            except (asyncpg.InterfaceError, ValueError, TypeError) as e:
                errors.append(f"queue.sql {sq.name!r}: {e}: fix the query in loadtop.toml")
        _unique_names(queues)
        if not self._found and not self.sql_queues:
            await self._drop()  # nothing to read until the next detection
        data: dict[str, Any] = {
            "queues": queues,
            "systems": sorted({f"{f.system} {f.schema}" for f in self._found}),
            "detected_age_s": round(now - (self._detected_at or now), 1),
        }
        if errors:
            data["errors"] = errors
            data["warning"] = "; ".join(errors)[:500]
        return data

    def _empty(self, now: float) -> dict[str, Any]:
        return {"queues": [], "systems": [],
                "detected_age_s": round(now - (self._detected_at or now), 1)}  # fmt: skip

    async def _read_system(
        self, conn: asyncpg.Connection, f: Found, now: float, due: bool
    ) -> list[dict[str, Any]]:
        sql, mode = sql_for(f)
        prev = self._prev.get(f.ident)
        arg = None
        if prev is not None and mode == "ids":
            arg = prev.hwm if prev.hwm is not None else 0  # the table was empty: all are new
        elif prev is not None and mode == "time":
            arg = prev.hwm
        rows = await conn.fetch(sql, arg) if "$1" in sql else await conn.fetch(sql)
        failed = await self._slow_failed(conn, f, now, due)
        consumers, stalled = await self._consumers(conn, f)
        hwm = rows[0]["hwm"] if rows else (prev.hwm if prev else None)
        dt = now - prev.t if prev is not None else 0.0
        table_arrivals = None
        if mode == "hwm" and prev is not None:
            # tables that delete finished rows: the highest id only rises (kept
            # as a high-water mark in case the newest row was already deleted)
            hi = max(int(hwm or 0), int(prev.hwm or 0))
            table_arrivals, hwm = hi - int(prev.hwm or 0), hi
        cur = _Prev(now, hwm=hwm if hwm is not None else (prev.hwm if prev else None))
        out = []
        for r in rows:
            qname = str(r["queue"])
            active = int(r["active"] or 0)
            cur.active[qname] = active
            before = prev.active.get(qname, 0) if prev is not None else None
            if mode == "time":
                rate = round(int(r["done"] or 0) / dt, 3) if prev is not None and dt > 0 else None
            elif mode == "hwm":
                rate = consumed(table_arrivals, active, before, dt)
            else:
                rate = consumed(
                    int(r["arrived"] or 0) if prev is not None else None, active, before, dt
                )
            q: dict[str, Any] = {
                "name": qname,
                "layout": f.system,
                "key": f.key,
                "depth": int(r["depth"] or 0),
                "in_flight": _int(r["in_flight"]),
                "failed": failed.get(qname, 0) if failed is not None else _int(r.get("failed")),
                "retry": _int(r["retry"]),
                "scheduled": _int(r["scheduled"]),
                "oldest_age_s": _age_s(r["oldest_s"]),
                "consumed_per_s": rate,
                "source": "postgres",
                "consumers": dict(consumers),
            }
            if stalled:
                q["note"] = (
                    f"{stalled} in flight held by workers with no heartbeat for "
                    f"{WORKER_ALIVE_S[f.system]} s (stalled)"
                )
            if active >= MAX_SCAN:
                q["note"] = f"more than {MAX_SCAN} unfinished rows: counts are lower bounds"
            if r.get("stale"):
                q["note"] = f"{r['stale']} claimed more than 4 h ago (dead workers?)"
            out.append(q)
        self._prev[f.ident] = cur
        return out

    def _grant_hint(self, f: Found, what: str) -> str:
        conn = self._conn
        role = (conn.get_settings().session_authorization if conn else None) or "<role>"
        return (
            f"{f.system} queue {f.key}: {what}: GRANT USAGE ON SCHEMA {f.schema} "
            f"TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {f.schema} TO {role}"
        )

    async def _consumers(
        self, conn: asyncpg.Connection, f: Found
    ) -> tuple[dict[str, Any], int | None]:
        """(QueueConsumers, stalled claims). Heartbeat tables count the workers of
        this install (count 0 is direct evidence that nobody consumes); elsewhere
        workers poll the table unseen, and only consumption between polls tells."""
        polling = {"kind": "polling", "count": None, "evidence": "indirect",
                   "via": "consumption between polls"}  # fmt: skip
        sql = consumers_sql(f)
        if sql is None:
            return polling, None
        try:
            row = await conn.fetchrow(sql)
        except asyncpg.UndefinedTableError:  # an older version without a workers table
            return polling, None
        via = "procrastinate_workers" if f.system == "procrastinate" else "solid_queue_processes"
        cons = {"kind": "registry", "count": int(row["alive"]), "evidence": "direct",
                "via": f"{via} heartbeats (< {WORKER_ALIVE_S[f.system]} s)"}  # fmt: skip
        return cons, _int(row["stalled"])

    async def _slow_failed(
        self, conn: asyncpg.Connection, f: Found, now: float, due: bool
    ) -> dict[str, int] | None:
        sql = failed_sql(f)
        if sql is None:
            return None
        have = self._failed.get(f.ident)
        if have is not None and f.est > BIG_TABLE and not due:
            return have[1]
        counts = {str(r["queue"]): int(r["failed"]) for r in await conn.fetch(sql)}
        self._failed[f.ident] = (now, counts)
        return counts

    async def _read_sql(self, conn: asyncpg.Connection, sq: SqlQueue, now: float) -> dict[str, Any]:
        async with conn.transaction(readonly=True):
            await conn.execute(
                f"SET LOCAL statement_timeout = {min(SQL_TIMEOUT_MS, self.statement_timeout_ms)}"
            )
            rows = await conn.fetch(sq.sql)
        if len(rows) != 1:
            raise QueueConfigError(
                f"the query returned {len(rows)} rows: it must return exactly one "
                "(e.g. SELECT count(*) AS depth FROM ...)"
            )
        row = dict(rows[0].items())
        if "depth" not in row or _num(row["depth"]) is None:
            raise QueueConfigError(
                "the query returned no numeric depth column: name the ready count AS depth"
            )
        ident = f"sql:{sq.name}"
        prev = self._prev.get(ident)
        cur = _Prev(now)
        rate = None
        done = _num(row["done"]) if "done" in row else None
        if done is not None:
            cur.done["done"] = done
            if prev is not None and "done" in prev.done and now > prev.t:
                rate = round(max(0.0, done - prev.done["done"]) / (now - prev.t), 3)
        self._prev[ident] = cur

        def get(k: str) -> int | None:
            return _int(row[k]) if k in row else None

        return {
            "name": sq.name,
            "layout": "sql",
            "key": sq.name,
            "depth": int(_num(row["depth"]) or 0),
            "in_flight": get("in_flight"),
            "failed": get("failed"),
            "retry": get("retry"),
            "scheduled": get("scheduled"),
            "oldest_age_s": _age_s(row["oldest_s"]) if "oldest_s" in row else None,
            "consumed_per_s": rate,
            "source": "postgres",
            # with a `done` column, stopped consumers show as nothing consumed
            "consumers": {
                "kind": "polling" if done is not None else "unknown",
                "count": None,
                "evidence": "indirect",
                "via": "[[queue.sql]]",
            },  # fmt: skip
        }

    def describe(self, exc: BaseException) -> str:
        return pg_poll_error(exc, self.target, self.statement_timeout_ms)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
        self._detected_at = None  # detect again: a table may have gone

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._drop()


def _age_s(v: Any) -> float | None:
    x = _num(v)
    return None if x is None else round(max(0.0, x), 3)


def _sql_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, QueueConfigError):
        return msg
    if isinstance(e, asyncpg.ReadOnlySQLTransactionError):
        return f"{msg}: the query must only read (it runs in a read-only transaction)"
    if isinstance(e, asyncpg.QueryCanceledError):
        return f"{msg}: the query took longer than its timeout; make it cheaper (use an index)"
    return f"{msg}: fix the query in loadtop.toml"


def _unique_names(queues: list[dict[str, Any]]) -> None:
    """Two systems (or schemas) with a queue of the same name: qualify them."""
    seen: dict[str, int] = {}
    for q in queues:
        seen[q["name"]] = seen.get(q["name"], 0) + 1
    for q in queues:
        if seen[q["name"]] > 1:
            q["name"] = f"{q['layout']}:{q['key']}:{q['name']}"


def pg_queues_probe(
    dsn: str, intervals: Mapping[str, float], sql_queues: Sequence[SqlQueue] | None = None
) -> PgQueuesProbe:
    """The probe for `build_probes` (polled like the Postgres probe)."""
    return PgQueuesProbe(
        dsn,
        sql_queues=sql_queues or (),
        interval=intervals.get("pg_queues", intervals.get("postgres", 1.0)),
    )
