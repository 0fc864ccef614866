"""The shapes of probe readings: `Reading.data` for each probe.

This is a contract between the probes (which fill it), the detectors and the
console (which read it) and the report. Readings are plain JSON-able dicts so
the recording stores them as they are; these TypedDicts document the keys.
Times are seconds, ages are seconds, durations are milliseconds unless named
otherwise. A key that a target cannot provide is absent or None, never made up.

A failed poll is `Reading(ok=False, error="<what is wrong>: <what to do>")`
with `data = {"failures": <consecutive failed polls>, "failing_since": <epoch s>}`.
Keys marked "added" below extend the first version of this contract.
"""

from __future__ import annotations

from typing import TypedDict

# ---- postgres (Reading.probe == "postgres") -----------------------------------


class PgBackend(TypedDict, total=False):
    pid: int
    application_name: str  # "loadtop:<scenario>:w<N>" for loadtop's own workers
    usename: str
    state: str  # active | idle | idle in transaction | idle in transaction (aborted)
    wait_event_type: str | None
    wait_event: str | None
    xact_age_s: float | None  # now() - xact_start
    state_age_s: float | None  # now() - state_change
    query: str  # first 200 characters
    blocked_by: list[int]  # pg_blocking_pids(), only for backends waiting on a lock
    backend_type: str  # added: only for non-client backends (e.g. "autovacuum worker")
    waits_for: PgWait  # added: waiters only, what they wait for (from pg_locks)
    depth: int  # added: in PgBlockNode.tree only, 0 = the root
    parent: int  # added: in PgBlockNode.tree only, the pid it is shown under
    database: str  # added: only for a session of ANOTHER database than the target's
    #               (pg_stat_activity is server-wide: its locks and slots count too)


class PgWait(TypedDict, total=False):
    """What a waiter waits for, from its ungranted pg_locks row (added)."""

    locktype: str  # relation | tuple | transactionid | advisory | virtualxid | ...
    object: str  # in words: "relation public.t", "row (0,5) of public.t", "advisory key 0/42"
    mode: str  # the mode requested, e.g. "AccessExclusiveLock"
    holders: list[dict]  # [{pid, mode, granted}]: blockers' locks on the same object
    #                     (granted False = queued ahead of it with a conflicting request)
    relation: str  # schema.table (for a transaction id: a table the waiter holds)
    advisory: list[int | None]  # [classid, objid, objsubid] (pg_locks columns, nullable)
    tuple: list[int | None]  # [page, tuple] (pg_locks columns, nullable)
    xid: str | None  # pg_locks.transactionid as text


class PgBlind(TypedDict):
    """Something the probe's role may not see, and the grant that fixes it (added)."""

    what: str  # "sessions of other roles" | "pg_locks" | "pg_blocking_pids" | ...
    hidden: str  # what is missing from the readings, in words
    grant: str  # the exact statement, e.g. "GRANT pg_monitor TO monitor"


class PgBlockNode(TypedDict, total=False):
    """One root blocker and the tree of backends waiting behind it."""

    root: PgBackend
    waiters: list[PgBackend]  # every backend waiting on the root, directly or not
    #                           (longest waiting first, capped at 25; see waiting_count)
    depth: int  # longest chain length (root -> ... -> deepest waiter), 1 = direct
    waiting_count: int
    # added: the tree depth-first, root first, each backend with `depth` (0 = root)
    # and `parent` (capped at 40 rows); `cycle`: the pids of a wait cycle (a deadlock
    # the server has not broken yet) when the root is one of them
    tree: list[PgBackend]
    cycle: list[int]


class PgReading(TypedDict, total=False):
    server_version: str
    max_connections: int
    connections: int  # client backends, probe excluded
    by_state: dict[str, int]  # "active": 12, "idle": 3, "idle in transaction": 1, ...
    by_wait: dict[str, int]  # "Lock:transactionid": 5, "Client:ClientRead": 3 ...
    waiting: int  # backends waiting on a lock
    blocking_tree: list[PgBlockNode]  # root blockers first, longest-waiting trees first
    oldest_xact_s: float | None
    oldest_xact: PgBackend | None
    idle_in_tx: list[PgBackend]  # sessions idle in a transaction (oldest first, capped at 20)
    idle_in_tx_count: int  # added: all of them (idle_in_tx is capped)
    rates: dict[str, float]  # per second over the measured interval ({} on the first
    #                          poll; commits leave out the probe's own): commits,
    #                          rollbacks, deadlocks, conflicts, temp_files, temp_bytes
    #                          (the target database only: datname = current_database())
    totals: dict[str, int]  # the cumulative counters the rates came from
    deltas: dict[str, int]  # added: the counters' increase since the previous poll
    locks_by_mode: dict[str, int]  # "RowExclusiveLock": 40, ... (read every 5 s: pg_locks
    #                                 is costly under contention)
    locks_age_s: float | None  # added: how old locks_by_mode is
    # added: without pg_monitor other roles' sessions show no state, wait or query;
    # they are counted (by_state["hidden"]) and `warning` says what to grant
    hidden_queries: int
    warning: str
    # added:
    database: str  # current_database(): the counters are this database's
    blind: list[PgBlind]  # everything the role may not see, with the grant for each
    reserved_connections: int  # superuser_reserved_connections + reserved_connections
    usable_connections: int  # max_connections - reserved: what applications can use
    connections_total: int  # connections + the probe's own: what takes slots
    holders: list[dict]  # top connection holders: {application_name, usename, state,
    #                      connections}, most first (hidden sessions: state "hidden")
    active: int  # client backends in state active
    cycles: list[dict]  # wait cycles: {pids, backends}
    amplifiers: list[dict]  # exclusive requests others queue behind: {pid, query, mode,
    #                         relation, behind (pids), held, queued (count behind it)}
    lock_hot: dict  # the relation most waiters wait on: {relation, waiters, query, mode}


# ---- redis (Reading.probe == "redis") -------------------------------------------


class RedisLock(TypedDict, total=False):
    key: str
    holder: str  # the value (token), whole up to 256 bytes (changed: was cut to 16
    #              characters); screens elide it in the middle so host and pid survive
    pttl_ms: int | None  # None = no expiry (PTTL -1)
    age_s: float  # since this (key, holder) pair was first seen
    no_ttl: bool
    # added: for redis-py Lock tokens (uuid1 hex), the time since the acquire attempt
    # began, read from the token itself: an upper bound on the hold, known at first sight
    token_age_s: float
    holder_truncated: bool  # added: the value is longer than the 256 bytes read


class LockTakeover(TypedDict, total=False):
    """added: a lock key whose holder changed right after its PTTL ran out, seen
    by the probe's fast watch of locks about to expire (or a keyspace event)."""

    key: str
    old_holder: str
    new_holder: str
    last_pttl_ms: int  # the old holder's PTTL when last seen
    ttl_ms: int | None  # the new holder's PTTL when first seen (about its lease length)
    gap_ms: float  # from the old lease's end to the new holder's first sighting
    at: float  # epoch seconds the new holder was first seen
    proof: str  # "keyspace-expired" (the server reported the expiry) | "pttl"


class QueueConsumers(TypedDict, total=False):
    """added: evidence about THIS queue's consumers (never server-wide counts)."""

    kind: str  # blocked (a pop waiting on the key's db; a busy consumer is not blocked) |
    #            named (clients named for the queue, BullMQ) | stream (XINFO CONSUMERS) |
    #            registry (RQ workers, Sidekiq processes) | polling (arq, dramatiq,
    #            sorted-set pollers) | unknown
    count: int | None  # consumers alive now; None = cannot be counted
    evidence: str  # direct (about this queue) | indirect (about its database or layout)
    via: str  # where it came from, e.g. "heartbeats", "client name"
    db: int
    db_clients: int | None  # blocked: clients connected to that database (busy ones
    #                         included); None when CLIENT LIST gave no count
    registered: int  # streams: consumers in the groups; RQ: workers registered
    idle_after_ms: int  # streams: a consumer idle longer than this is not counted
    note: str


class RedisQueue(TypedDict, total=False):
    """One queue. Postgres queue probes fill the same keys (source="postgres");
    the queue detectors read the `queues` list of ANY probe's reading."""

    name: str  # the key, or the queue's logical name for known layouts
    layout: str  # list | stream | zset | celery | rq | sidekiq | bullmq | arq | dramatiq |
    #              huey (arq, dramatiq, huey added; Postgres layouts use the library's name)
    depth: int  # ready items only (due, not scheduled for later)
    in_flight: int | None
    failed: int | None
    groups: list[dict]  # streams: [{name, consumers, pending, lag, last_delivered_id,
    #                      entries_read, consumer_list: [{name, pending, idle_ms, inactive_ms}]}]
    oldest_age_s: float | None  # the oldest READY item's age, for every layout that stores
    #                             a time (job hashes, message timestamps, stream ids,
    #                             sorted-set due times); None where none is stored
    # added:
    key: str  # the Redis key (or BullMQ's "<prefix>:<queue>")
    length: int  # streams: XLEN (depth is the largest group lag)
    note: str  # e.g. Celery's unacked and Sidekiq's busy/retry/dead are shared by all queues
    scheduled: int | None  # added: delayed / future items, not backlog (BullMQ delayed,
    #                        huey schedule, RQ scheduled, dramatiq .DQ, zset scores > now)
    retry: int | None  # added: waiting to be retried (Sidekiq retry, arq retry)
    consumed_per_s: float | None  # added: measured consumption rate between two polls
    #                               (None on the first poll or when it cannot be told)
    source: str  # added: "redis" (the default when absent) | "postgres"
    consumers: QueueConsumers  # added


class RedisReading(TypedDict, total=False):
    version: str
    role: str  # master | slave / replica
    ops_per_sec: float
    connected_clients: int
    blocked_clients: int
    maxclients: int
    used_memory: int
    maxmemory: int  # 0 = no limit
    maxmemory_policy: str
    evicted_keys_delta: int  # since the previous poll
    rejected_connections_delta: int
    keyspace_hits_delta: int
    keyspace_misses_delta: int
    locks: list[RedisLock]
    locks_truncated: bool  # the per-poll key cap was reached
    queues: list[RedisQueue]
    slowlog: list[dict]  # new entries: {id, ts, duration_us, command, client}
    latency: list[dict] | str  # LATENCY LATEST rows {event, ts, latest_ms, max_ms}, or "off"
    #                           ("unavailable" when ACLs deny it; slowlog likewise)
    # added:
    server: str  # "redis" | "valkey"
    mem_fragmentation_ratio: float | None
    master_link_status: str  # replicas only
    takeovers: list[LockTakeover]  # added: seen since the previous poll
    hints: list[str]  # added: keys that look like queues or locks but match nothing
    unmatched_keys: list[str]  # added: up to 10 of those key names
    keyspace_events: bool  # added: notify-keyspace-events has Ex, expiries are proof


# ---- postgres-native queues (Reading.probe == "pg_queues", app.probes.pg_queues) ----


class PgQueuesReading(TypedDict, total=False):
    """Job queues kept in Postgres tables, and `[[queue.sql]]` queues. Each of
    `queues` carries the keys of `RedisQueue` (name, layout, key, depth,
    in_flight, failed, oldest_age_s, note) plus `scheduled` (due later, not
    backlog), `retry` (failed once, will run again), `consumed_per_s` (arrivals
    minus growth between polls; None on the first poll), `source`: "postgres" and
    `consumers` ({kind, count, evidence, via}: "registry" with the workers whose
    heartbeat is fresh for procrastinate and Solid Queue, else "polling", count None).
    layout: procrastinate | pgmq | river | oban | graphile-worker | good_job |
    solid_queue | que | sql; key: "schema.table" (the query's name for sql)."""

    queues: list[dict]
    systems: list[str]  # "<layout> <schema>" of each system found
    detected_age_s: float  # since the tables were last looked for (every 30 s)
    errors: list[str]  # a system or a [[queue.sql]] query that could not be read
    warning: str  # the errors in one line


# ---- pods (Reading.probe == "pods") ----------------------------------------------


class PodContainer(TypedDict, total=False):
    pod: str
    container: str
    cpu_cores: float | None
    memory_bytes: int | None
    cpu_limit_cores: float | None
    memory_limit_bytes: int | None
    restarts: int
    last_reason: str | None  # "OOMKilled", "Error", ...
    ready: bool | None
    waiting_reason: str | None  # "CrashLoopBackOff", ...
    phase: str | None  # added: the pod's phase (kubernetes source)
    pid: int  # added: local source only


class PodsReading(TypedDict, total=False):
    source: str  # kubernetes | prometheus | local
    namespace: str
    containers: list[PodContainer]
    # added: a partial reading says what is missing and why, e.g. "metrics.k8s.io is
    # not available (HTTP 404): install metrics-server; CPU and memory are not shown"
    warning: str
    selector: str
