"""The Postgres probe: what the server says about its sessions while load runs.

Two read-only queries per poll on one small connection of its own
(`application_name = loadtop:probe`, `statement_timeout`, read-only
transactions), which it leaves out of everything it shows:

1. `pg_stat_activity`, with `pg_blocking_pids(pid)` evaluated only for rows
   already waiting on a lock (the function briefly takes the lock manager's
   partition locks, so it is never run for every backend);
2. while some backend waits on a lock, the `pg_locks` rows of the waiters and
   their blockers (what is waited for, held in which mode; see `pg_locks.py`);
3. `pg_stat_database` counters of the target database only (`datname =
   current_database()`), turned into rates over the measured interval, the
   connection settings, the server version and the lock counts by mode.

A view or function the role may not read does not fail the poll: the reading
says what is hidden and the GRANT that fixes it (`blind`).

Everything it reads is visible to a role that has `pg_monitor` and no
superuser, on PostgreSQL 13 to 18. The data's shape is `PgReading` in
`app.probes.schema`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from app.probes import pg_locks
from app.probes.base import PROBE_APP_NAME, Probe, describe_exception
from app.probes.pg_locks import _reverse, _strip, blocking_tree
from app.probes.schema import PgBackend, PgBlind, PgReading

QUERY_CHARS = 200
MAX_IDLE_IN_TX = 20
RETRY_DENIED_S = 30.0  # a denied function is tried again this often
MAX_HOLDERS = 8  # connection holders by (application, user, state) in a reading

MAX_BLOCKER_CALLS = 100  # pg_blocking_pids() calls per poll: the longest-waiting first

_ACTIVITY_SQL = f"""
WITH a AS MATERIALIZED (
    SELECT pid, backend_type, usename, application_name, state, wait_event_type,
           wait_event, xact_start, state_change, left(query, {QUERY_CHARS}) AS query,
           CASE WHEN datname <> current_database() THEN datname END AS other_db
    FROM pg_stat_activity
    WHERE pid <> pg_backend_pid()
      AND application_name IS DISTINCT FROM '{PROBE_APP_NAME}'
), w AS (
    SELECT pid, {{blocking}} AS blocked_by
    FROM a WHERE wait_event_type = 'Lock'
    ORDER BY state_change NULLS LAST LIMIT {MAX_BLOCKER_CALLS}
)
SELECT a.pid, a.backend_type, a.usename, a.application_name, a.state, a.wait_event_type,
       a.wait_event, extract(epoch FROM now() - a.xact_start)::float8 AS xact_age,
       extract(epoch FROM now() - a.state_change)::float8 AS state_age, a.query, w.blocked_by,
       a.other_db
FROM a LEFT JOIN w USING (pid)
"""
ACTIVITY_SQL = _ACTIVITY_SQL.format(blocking="pg_blocking_pids(pid)")
# when EXECUTE on pg_blocking_pids is revoked: waiters are still counted, the tree is not
ACTIVITY_SQL_NO_BLOCKING = _ACTIVITY_SQL.format(blocking="NULL::int[]")

_SETTINGS = """current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
       current_setting('server_version') AS server_version,
       current_database() AS database"""
# one round trip for the settings and the counters of the target database only:
# other databases' deadlocks and rollbacks are not this load's
SERVER_SQL = f"""
SELECT {_SETTINGS},
       d.xact_commit::int8 AS commits, d.xact_rollback::int8 AS rollbacks,
       d.deadlocks::int8 AS deadlocks, d.conflicts::int8 AS conflicts,
       d.temp_files::int8 AS temp_files, d.temp_bytes::int8 AS temp_bytes
FROM (SELECT 1) one LEFT JOIN pg_stat_database d ON d.datname = current_database()
"""
SETTINGS_SQL = f"SELECT {_SETTINGS}"  # when pg_stat_database is denied
# pg_locks copies the whole lock table under every lock-manager partition lock,
# so the counts by mode are read every `locks_every_s`, not every poll
LOCK_COUNTS_SQL = """
SELECT coalesce(json_object_agg(mode, n), '{}')::text
FROM (SELECT mode, count(*) AS n FROM pg_locks
       WHERE pid IS DISTINCT FROM pg_backend_pid() GROUP BY mode) l
"""

COUNTERS = ("commits", "rollbacks", "deadlocks", "conflicts", "temp_files", "temp_bytes")


def pg_target(dsn: str) -> str:
    """host:port/db of a DSN, never the password (for messages)."""
    try:
        u = urlsplit(dsn)
        host = u.hostname or "localhost"
        port = u.port or 5432
        db = (u.path or "/").lstrip("/")
        return f"{host}:{port}/{db}" if db else f"{host}:{port}"
    except ValueError:
        return "the configured server"


class PostgresProbe(Probe):
    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        statement_timeout_ms: int | None = None,
        locks_every_s: float = 5.0,
    ) -> None:
        super().__init__(interval=interval, timeout=timeout)
        self.dsn = dsn
        self.target = pg_target(dsn)
        self.statement_timeout_ms = int(statement_timeout_ms or max(500, self.timeout * 1000 * 0.8))
        self._conn: asyncpg.Connection | None = None
        self._prev: tuple[float, dict[str, int], dict[str, int]] | None = None
        self.locks_every_s = locks_every_s
        self._locks: dict[str, int] = {}
        self._locks_at: float | None = None
        self._user = ""
        self._own: dict[str, int] = {"commits": 0, "rollbacks": 0}
        self._blind: dict[str, PgBlind] = {}
        self._no_blocking: float | None = None  # when pg_blocking_pids was last denied

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(
            self.dsn,
            timeout=self.timeout,
            server_settings={
                "application_name": PROBE_APP_NAME,
                "statement_timeout": str(self.statement_timeout_ms),
                "lock_timeout": str(self.statement_timeout_ms),
                "idle_in_transaction_session_timeout": "10000",
                "default_transaction_read_only": "on",
            },
        )
        self._user = conn.get_settings().session_authorization or ""
        return conn

    async def poll(self) -> dict[str, Any]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        conn = self._conn
        self._own = {"commits": 0, "rollbacks": 0}
        self._blind = {}
        # after a denial, ask without pg_blocking_pids, and try it again now and then
        # (a GRANT shows within RETRY_DENIED_S)
        mono = time.monotonic()
        denied = self._no_blocking is not None and mono - self._no_blocking < RETRY_DENIED_S
        rows = await self._fetch(
            conn, ACTIVITY_SQL_NO_BLOCKING if denied else ACTIVITY_SQL, what="pg_blocking_pids"
        )
        if rows is None:  # EXECUTE on pg_blocking_pids revoked
            rows = await conn.fetch(ACTIVITY_SQL_NO_BLOCKING)
            self._own["commits"] += 1
            self._no_blocking = mono
        elif not denied:
            self._no_blocking = None
        if self._no_blocking is not None:
            self._blind["pg_blocking_pids"] = _blind_function(self._user)
        lock_rows: list[Mapping[str, Any]] = []
        pids = _lock_pids(rows)
        if pids:
            got = await self._fetch(conn, pg_locks.LOCKS_SQL, pids, what="pg_locks")
            lock_rows = got or []
        now = time.monotonic()
        got = await self._fetch(conn, SERVER_SQL, what="pg_stat_database")
        if got is None:
            srv = dict(await conn.fetchrow(SETTINGS_SQL))
            self._own["commits"] += 1
            srv["stats"] = None
        else:
            srv = dict(got[0])
            srv["stats"] = srv if srv["commits"] is not None else None
        srv["locks"] = None
        if self._locks_at is None or now - self._locks_at >= self.locks_every_s:
            got = await self._fetch(conn, LOCK_COUNTS_SQL, what="pg_locks")
            srv["locks"] = got[0][0] if got else None
        return self._reading(rows, srv, now, lock_rows)

    async def _fetch(
        self, conn: asyncpg.Connection, sql: str, *args: Any, what: str
    ) -> list[Any] | None:
        """Rows, or None when the role may not read `what` (noted in `blind`)."""
        try:
            rows = await conn.fetch(sql, *args)
        except asyncpg.InsufficientPrivilegeError:
            self._own["rollbacks"] += 1
            self._blind[what] = (
                _blind_function(self._user) if what == "pg_blocking_pids" else
                _blind_view(what, self._user)
            )  # fmt: skip
            return None
        self._own["commits"] += 1
        return rows

    def _reading(
        self,
        rows: Iterable[Mapping[str, Any]],
        srv: Mapping[str, Any],
        now: float,
        lock_rows: Iterable[Mapping[str, Any]] = (),
    ) -> dict:
        data = summarize_activity(rows, lock_rows)
        data["server_version"] = srv["server_version"]
        data["database"] = srv.get("database") or ""
        data["max_connections"] = srv["max_connections"]
        reserved = int(srv.get("superuser_reserved") or 0) + int(srv.get("reserved") or 0)
        data["reserved_connections"] = reserved
        data["connections_total"] = data["connections"] + 1  # the probe's own slot counts too
        data["usable_connections"] = max(1, srv["max_connections"] - reserved)
        if srv.get("locks") is not None:
            self._locks, self._locks_at = json.loads(srv["locks"]), now
        data["locks_by_mode"] = self._locks
        data["locks_age_s"] = round(now - self._locks_at, 3) if self._locks_at else None
        stats = srv.get("stats")
        rates: dict[str, float] = {}
        if stats is not None:
            totals = {k: int(stats[k] or 0) for k in COUNTERS}
            data["totals"] = totals
            if self._prev is not None:
                t0, prev, own = self._prev
                dt = now - t0
                if dt > 0 and all(totals[k] >= prev[k] for k in COUNTERS):  # no stats reset
                    delta = {k: totals[k] - prev[k] for k in COUNTERS}
                    # the probe's own transactions since the last reading are not the load's
                    for k in ("commits", "rollbacks"):
                        delta[k] = max(0, delta[k] - own[k])
                    rates = {k: round(v / dt, 3) for k, v in delta.items()}
                    data["deltas"] = delta
            self._prev = (now, totals, dict(self._own))
        data["rates"] = rates
        if data.get("hidden_queries"):
            self._blind["sessions"] = {
                "what": "sessions of other roles",
                "hidden": (
                    f"{data['hidden_queries']} sessions of other roles are hidden (no state, "
                    "wait or query; no lock tree)"
                ),
                "grant": f"GRANT pg_monitor TO {self._user or '<role>'}",
            }
        if self._blind:
            data["blind"] = list(self._blind.values())
            data["warning"] = "; ".join(f"{b['hidden']}: {b['grant']}" for b in data["blind"])
        # Probe.poll returns a plain dict; a TypedDict is not a dict[str, Any] to mypy
        return dict(data)

    def describe(self, exc: BaseException) -> str:
        return pg_poll_error(exc, self.target, self.statement_timeout_ms)

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()


def _blind_view(view: str, user: str) -> PgBlind:
    what = {
        "pg_locks": "what each waiter waits for (relation, mode, advisory key) and lock counts",
        "pg_stat_database": "deadlocks, rollbacks, conflicts and temp files of the database",
    }.get(view, view)
    return {
        "what": view,
        "hidden": f"{view} is denied: {what} not shown",
        "grant": f"GRANT SELECT ON pg_catalog.{view} TO {user or '<role>'}",
    }


def _blind_function(user: str) -> PgBlind:
    return {
        "what": "pg_blocking_pids",
        "hidden": "pg_blocking_pids() is denied: lock waiters are counted but not who blocks them",
        "grant": (
            f"GRANT EXECUTE ON FUNCTION pg_catalog.pg_blocking_pids(integer) TO {user or '<role>'}"
        ),
    }


def _lock_pids(rows: Iterable[Mapping[str, Any]]) -> list[int]:
    """The waiters and their blockers: whose pg_locks rows are worth reading."""
    out: set[int] = set()
    for r in rows:
        if r["blocked_by"]:
            out.add(r["pid"])
            out.update(p for p in r["blocked_by"] if p)
    return sorted(out)


def pg_poll_error(exc: BaseException, target: str, statement_timeout_ms: int = 0) -> str:
    """A failed probe poll in one line: what the monitoring role or the server
    said, and what to do; the probe retries. (A failed *load* connect is bad
    input instead: app.engine.clients.describe_pg_error.)"""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return f"{msg}: grant pg_monitor to this role (GRANT pg_monitor TO <role>)"
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"{msg}: check the user and password of the monitoring DSN for {target}"
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return (
            f"waiting for a connection slot on {target} ({msg}): every slot is taken; the "
            "probe retries every few seconds. Reserve a slot for monitoring "
            "(reserved_connections and pg_use_reserved_connections, PG16+)"
        )
    if isinstance(exc, asyncpg.QueryCanceledError):
        return (
            f"probe query cancelled by its statement_timeout ({statement_timeout_ms} ms): "
            f"{target} is overloaded; the probe will retry"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{msg}: check the database name in the monitoring DSN"
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return f"{msg}: {target} is starting or shutting down; the probe will retry"
    if isinstance(exc, asyncpg.AdminShutdownError):
        return f"{msg}: the probe's session on {target} was terminated; it will reconnect"
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError | ConnectionResetError):
        return f"connection to {target} was lost: the probe will reconnect"
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"cannot connect to postgres at {target} (connection refused): "
            "check that the server is up and the DSN's host and port"
        )
    if isinstance(exc, asyncpg.PostgresError):
        return f"{msg}: the postgres probe will retry"
    return describe_exception("postgres", exc)


# ---- pure functions over pg_stat_activity rows (tested on their own) -----------------


def _backend(row: Mapping[str, Any]) -> PgBackend:
    b: PgBackend = {
        "pid": row["pid"],
        "application_name": row["application_name"] or "",
        "usename": row["usename"] or "",
        "state": row["state"] or "",
        "wait_event_type": row["wait_event_type"],
        "wait_event": row["wait_event"],
        "xact_age_s": _r(row["xact_age"]),
        "state_age_s": _r(row["state_age"]),
        "query": row["query"] or "",
    }
    if row["backend_type"] != "client backend":
        b["backend_type"] = row["backend_type"]
    if row["blocked_by"] is not None:
        b["blocked_by"] = sorted(set(row["blocked_by"]))
    if row.get("other_db"):  # sessions are server-wide; the counters are this database's
        b["database"] = row["other_db"]
    return b


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def summarize_activity(
    rows: Iterable[Mapping[str, Any]], lock_rows: Iterable[Mapping[str, Any]] = ()
) -> PgReading:
    """Counts by state and wait, the lock-wait tree, the oldest transaction and
    the idle-in-transaction sessions, from pg_stat_activity rows (the probe's
    own session already left out). Only the backends that are shown (waiters,
    their blockers, idle-in-transaction sessions, the oldest transaction) are
    turned into dicts, so a poll over hundreds of idle backends stays cheap.
    `lock_rows` (pg_locks rows of the waiters and blockers) name what each
    waiter waits for."""
    by_state: dict[str, int] = {}
    holders: dict[tuple[str, str, str], int] = {}
    by_wait: dict[str, int] = {}
    raw: dict[int, Mapping[str, Any]] = {}
    waiter_rows: list[Mapping[str, Any]] = []
    iit_rows: list[Mapping[str, Any]] = []
    oldest_row: Mapping[str, Any] | None = None
    oldest_age = -1.0
    connections = 0
    waiting = 0
    hidden = 0
    for row in rows:
        pid = row["pid"]
        raw[pid] = row
        btype = row["backend_type"]
        if btype is None:
            # another role's session seen without pg_monitor: every column is NULL
            # but pid and usename (background processes have no usename)
            if row["usename"]:
                hidden += 1
                connections += 1
                by_state["hidden"] = by_state.get("hidden", 0) + 1
                k3 = (row["application_name"] or "", row["usename"] or "", "hidden")
                holders[k3] = holders.get(k3, 0) + 1
            continue
        wtype = row["wait_event_type"]
        if row["blocked_by"]:
            waiter_rows.append(row)
        if btype != "client backend":
            continue
        connections += 1
        state = row["state"] or "unknown"
        by_state[state] = by_state.get(state, 0) + 1
        k3 = (row["application_name"] or "", row["usename"] or "", state)
        holders[k3] = holders.get(k3, 0) + 1
        if wtype:
            k = f"{wtype}:{row['wait_event']}"
            by_wait[k] = by_wait.get(k, 0) + 1
            if wtype == "Lock":
                waiting += 1
        if state.startswith("idle in transaction"):
            iit_rows.append(row)
        xa = row["xact_age"]
        if xa is not None and xa > oldest_age:
            oldest_age, oldest_row = xa, row

    built: dict[int, PgBackend] = {}

    def backend(row: Mapping[str, Any]) -> PgBackend:
        b = built.get(row["pid"])
        if b is None:
            b = built[row["pid"]] = _backend(row)
        return b

    waiters = {r["pid"]: backend(r) for r in waiter_rows}
    for r in waiter_rows:
        for p in r["blocked_by"]:
            if p in raw:
                backend(raw[p])
    blocked_by = {p: list(b.get("blocked_by") or ()) for p, b in waiters.items()}
    wf, _holds = pg_locks.waits_for(lock_rows, blocked_by)
    for p, w in wf.items():
        waiters[p]["waits_for"] = w
    iit_rows.sort(key=lambda r: -(r["xact_age"] or 0))
    oldest = backend(oldest_row) if oldest_row is not None else None
    out: PgReading = {
        "connections": connections,
        "by_state": by_state,
        "by_wait": by_wait,
        "waiting": waiting,
        "blocking_tree": blocking_tree(built, waiters),
        "oldest_xact_s": oldest["xact_age_s"] if oldest else None,
        "oldest_xact": oldest,
        "idle_in_tx": [backend(r) for r in iit_rows[:MAX_IDLE_IN_TX]],
        "idle_in_tx_count": len(iit_rows),
    }
    top = sorted(holders.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_HOLDERS]
    out["holders"] = [
        {"application_name": a, "usename": u, "state": st, "connections": n}
        for (a, u, st), n in top
    ]
    out["active"] = by_state.get("active", 0)
    cyc = pg_locks.cycles(blocked_by)
    if cyc:
        out["cycles"] = [
            {"pids": g, "backends": [_strip(waiters[p]) for p in g if p in waiters]} for g in cyc
        ]
    amp = pg_locks.amplifiers(waiters, _reverse(waiters))
    if amp:
        out["amplifiers"] = amp[:5]
    hot = pg_locks.hot_relation(waiters)
    if hot:
        out["lock_hot"] = hot
    if hidden:
        out["hidden_queries"] = hidden
    return out
