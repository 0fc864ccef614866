"""The Postgres probe: what the server says about its sessions while load runs.

Two read-only queries per poll on one small connection of its own
(`application_name = loadtop:probe`, `statement_timeout`, read-only
transactions), which it leaves out of everything it shows:

1. `pg_stat_activity`, with `pg_blocking_pids(pid)` evaluated only for rows
   already waiting on a lock (the function briefly takes the lock manager's
   partition locks, so it is never run for every backend);
2. `pg_stat_database` counters (summed over databases, turned into rates over
   the measured interval), `max_connections`, the server version and the lock
   counts by mode from `pg_locks`.

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

from app.probes.base import PROBE_APP_NAME, Probe, describe_exception
from app.probes.schema import PgBackend, PgBlockNode, PgReading

QUERY_CHARS = 200
MAX_TREES = 10
MAX_WAITERS_PER_TREE = 25
MAX_IDLE_IN_TX = 20

MAX_BLOCKER_CALLS = 100  # pg_blocking_pids() calls per poll: the longest-waiting first

ACTIVITY_SQL = f"""
WITH a AS MATERIALIZED (
    SELECT pid, backend_type, usename, application_name, state, wait_event_type,
           wait_event, xact_start, state_change, left(query, {QUERY_CHARS}) AS query
    FROM pg_stat_activity
    WHERE pid <> pg_backend_pid()
      AND application_name IS DISTINCT FROM '{PROBE_APP_NAME}'
), w AS (
    SELECT pid, pg_blocking_pids(pid) AS blocked_by
    FROM a WHERE wait_event_type = 'Lock'
    ORDER BY state_change NULLS LAST LIMIT {MAX_BLOCKER_CALLS}
)
SELECT a.pid, a.backend_type, a.usename, a.application_name, a.state, a.wait_event_type,
       a.wait_event, extract(epoch FROM now() - a.xact_start)::float8 AS xact_age,
       extract(epoch FROM now() - a.state_change)::float8 AS state_age, a.query, w.blocked_by
FROM a LEFT JOIN w USING (pid)
"""

_SERVER_SQL = """
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('server_version') AS server_version,
       {locks} AS locks,
       coalesce(sum(xact_commit), 0)::int8 AS commits,
       coalesce(sum(xact_rollback), 0)::int8 AS rollbacks,
       coalesce(sum(deadlocks), 0)::int8 AS deadlocks,
       coalesce(sum(conflicts), 0)::int8 AS conflicts,
       coalesce(sum(temp_files), 0)::int8 AS temp_files
FROM pg_stat_database
"""
# pg_locks copies the whole lock table under every lock-manager partition lock,
# so the counts by mode are read every `locks_every_s`, not every poll
SERVER_SQL = _SERVER_SQL.format(
    locks="""(SELECT coalesce(json_object_agg(mode, n), '{}')::text
          FROM (SELECT mode, count(*) AS n FROM pg_locks
                 WHERE pid IS DISTINCT FROM pg_backend_pid() GROUP BY mode) l)"""
)
SERVER_SQL_NO_LOCKS = _SERVER_SQL.format(locks="NULL::text")

OWN_XACTS_PER_POLL = 2
COUNTERS = ("commits", "rollbacks", "deadlocks", "conflicts", "temp_files")


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
        self._prev: tuple[float, dict[str, int]] | None = None
        self.locks_every_s = locks_every_s
        self._locks: dict[str, int] = {}
        self._locks_at: float | None = None
        self._user = ""

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
        rows = await conn.fetch(ACTIVITY_SQL)
        now = time.monotonic()
        with_locks = self._locks_at is None or now - self._locks_at >= self.locks_every_s
        srv = await conn.fetchrow(SERVER_SQL if with_locks else SERVER_SQL_NO_LOCKS)
        return self._reading(rows, srv, now)

    def _reading(
        self, rows: Iterable[Mapping[str, Any]], srv: Mapping[str, Any], now: float
    ) -> dict:
        data = summarize_activity(rows)
        data["server_version"] = srv["server_version"]
        data["max_connections"] = srv["max_connections"]
        if srv["locks"] is not None:
            self._locks, self._locks_at = json.loads(srv["locks"]), now
        data["locks_by_mode"] = self._locks
        data["locks_age_s"] = round(now - self._locks_at, 3) if self._locks_at else None
        totals = {k: int(srv[k]) for k in COUNTERS}
        data["totals"] = totals
        rates: dict[str, float] = {}
        if self._prev is not None:
            t0, prev = self._prev
            dt = now - t0
            if dt > 0 and all(totals[k] >= prev[k] for k in COUNTERS):  # no stats reset
                delta = {k: totals[k] - prev[k] for k in COUNTERS}
                # the probe's own two read-only transactions per poll are not the load's
                delta["commits"] = max(0, delta["commits"] - OWN_XACTS_PER_POLL)
                rates = {k: round(v / dt, 3) for k, v in delta.items()}
        data["rates"] = rates
        self._prev = (now, totals)
        if data.get("hidden_queries"):
            who = self._user or "this role"
            data["warning"] = (
                f"{data['hidden_queries']} sessions of other roles are hidden (no state, "
                f"wait or query; no lock tree): "
                f"GRANT pg_monitor TO {who}"
            )
        return data

    def describe(self, exc: BaseException) -> str:
        return describe_pg_error(exc, self.target, self.statement_timeout_ms)

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


def describe_pg_error(exc: BaseException, target: str, statement_timeout_ms: int = 0) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return f"{msg}: grant pg_monitor to this role (GRANT pg_monitor TO <role>)"
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"{msg}: check the user and password of the monitoring DSN for {target}"
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return (
            f"{msg}: {target} is at max_connections; the probe retries. Reserve a slot for "
            "monitoring (reserved_connections and pg_use_reserved_connections, PG16+)"
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
    return b


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def summarize_activity(rows: Iterable[Mapping[str, Any]]) -> PgReading:
    """Counts by state and wait, the lock-wait tree, the oldest transaction and
    the idle-in-transaction sessions, from pg_stat_activity rows (the probe's
    own session already left out). Only the backends that are shown (waiters,
    their blockers, idle-in-transaction sessions, the oldest transaction) are
    turned into dicts, so a poll over hundreds of idle backends stays cheap."""
    by_state: dict[str, int] = {}
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
            continue
        wtype = row["wait_event_type"]
        if row["blocked_by"]:
            waiter_rows.append(row)
        if btype != "client backend":
            continue
        connections += 1
        state = row["state"] or "unknown"
        by_state[state] = by_state.get(state, 0) + 1
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
    if hidden:
        out["hidden_queries"] = hidden
    return out


def blocking_tree(
    backends: Mapping[int, PgBackend], waiters: Mapping[int, PgBackend]
) -> list[PgBlockNode]:
    """Root blockers and everything waiting behind them.

    A root is a blocker that is not itself waiting on a lock (typically an
    active or idle-in-transaction session; never filtered out, whatever its
    state). A blocker missing from the rows (a prepared transaction is pid 0,
    or a session that just ended) is still a root, with what is known of it.
    When every backend of a group waits on another (a deadlock not yet
    detected), the one in the oldest transaction stands as the root.
    """
    # reverse edges: blocker -> the waiters it blocks directly
    blocks: dict[int, list[int]] = {}
    for w, b in waiters.items():
        for p in b.get("blocked_by", []):
            blocks.setdefault(p, []).append(w)
    roots = [p for p in blocks if p not in waiters]
    covered: set[int] = set()
    for r in roots:
        covered |= _reachable(r, blocks)
    # cycles with no root outside them
    rest = [w for w in waiters if w not in covered]
    while rest:
        pick = max(rest, key=lambda p: (waiters[p].get("xact_age_s") or 0, -p))
        roots.append(pick)
        covered |= _reachable(pick, blocks) | {pick}
        rest = [w for w in rest if w not in covered]

    nodes: list[tuple[float, PgBlockNode]] = []
    for r in roots:
        below = _reachable(r, blocks) - {r}
        if not below:
            continue
        if r in backends:
            root = dict(backends[r])
        else:
            root = {
                "pid": r,
                "application_name": "",
                "state": "prepared transaction" if r == 0 else "unknown (not in pg_stat_activity)",
                "query": "",
            }
        ws = sorted(
            (backends[p] for p in below if p in backends),
            key=lambda b: (-(b.get("state_age_s") or 0), b["pid"]),
        )
        longest_wait = max((b.get("state_age_s") or 0 for b in ws), default=0.0)
        node: PgBlockNode = {
            "root": root,  # type: ignore[typeddict-item]
            "waiters": ws[:MAX_WAITERS_PER_TREE],
            "depth": _depth(r, blocks),
            "waiting_count": len(below),
        }
        nodes.append((longest_wait, node))
    nodes.sort(key=lambda x: (-x[0], -x[1]["waiting_count"], x[1]["root"]["pid"]))
    return [n for _, n in nodes[:MAX_TREES]]


def _reachable(start: int, blocks: Mapping[int, list[int]]) -> set[int]:
    seen = {start}
    stack = [start]
    while stack:
        for w in blocks.get(stack.pop(), ()):
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


def _depth(start: int, blocks: Mapping[int, list[int]]) -> int:
    """Longest chain of waits below `start` (1 = only direct waiters)."""
    memo: dict[int, int] = {}

    def go(p: int, path: frozenset[int]) -> int:
        if p in memo:
            return memo[p]
        best = 0
        for w in blocks.get(p, ()):
            if w not in path:
                best = max(best, 1 + go(w, path | {w}))
        memo[p] = best
        return best

    return go(start, frozenset({start}))
