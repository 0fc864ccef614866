"""The lock graph as the server has it: what each waiter waits for (from
`pg_locks`), wait cycles, the tree below each root with depths, and the
exclusive-lock requests that turn one holder into a queue (the ALTER case).

Pure functions over rows, so they are tested on their own; the probe runs
`LOCKS_SQL` once per poll, and only while some backend waits on a lock (pg_locks
copies the whole lock table under every lock-manager partition lock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.probes.schema import PgBackend, PgBlockNode, PgWait

MAX_LOCK_ROWS = 5000
MAX_TREES = 10
MAX_WAITERS_PER_TREE = 25
MAX_TREE_ROWS = 40  # backends shown in one tree (root included), depth-first

# pg_locks rows of the waiters and their blockers only, with relation names for
# the target database (and shared catalogs); other databases' relations keep their oid
LOCKS_SQL = f"""
WITH l AS MATERIALIZED (
    SELECT pid, locktype, mode, granted, database, relation, page, tuple,
           transactionid::text AS xid, virtualxid, classid::int8 AS classid,
           objid::int8 AS objid, objsubid::int4 AS objsubid
    FROM pg_locks WHERE pid = ANY($1::int[])
)
SELECT l.*, CASE WHEN c.oid IS NOT NULL THEN n.nspname || '.' || c.relname END AS relname
FROM l
LEFT JOIN pg_class c ON c.oid = l.relation
     AND l.database IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
LIMIT {MAX_LOCK_ROWS}
"""

# requests that queue everyone arriving after them: while one waits behind a holder,
# every later reader or writer of the relation waits behind it
EXCLUSIVE_MODES = ("AccessExclusiveLock", "ExclusiveLock", "ShareRowExclusiveLock", "ShareLock")

_KEY_FIELDS = (
    "locktype", "database", "relation", "page", "tuple", "xid", "virtualxid",
    "classid", "objid", "objsubid",
)  # fmt: skip


def _key(row: Mapping[str, Any]) -> tuple:
    return tuple(row.get(f) for f in _KEY_FIELDS)


def _relname(row: Mapping[str, Any]) -> str | None:
    if row.get("relname"):
        return str(row["relname"])
    if row.get("relation") is not None:
        return f"oid {row['relation']}"
    return None


def lock_object(row: Mapping[str, Any]) -> str:
    """What one pg_locks row is about, in words."""
    t = row.get("locktype")
    rel = _relname(row)
    if t == "relation":
        return f"relation {rel}"
    if t == "tuple":
        return f"row ({row.get('page')},{row.get('tuple')}) of {rel}"
    if t == "page":
        return f"page {row.get('page')} of {rel}"
    if t == "extend":
        return f"extension of {rel}"
    if t == "transactionid":
        return f"transaction {row.get('xid')} (a row it changed)"
    if t == "virtualxid":
        return f"virtual transaction {row.get('virtualxid')}"
    if t == "advisory":
        c, o, s = row.get("classid"), row.get("objid"), row.get("objsubid")
        if s == 1 and isinstance(c, int) and isinstance(o, int):
            return f"advisory key {c}/{o} (bigint {(c << 32) | o})"
        return f"advisory key {c}/{o} (two int4 keys)"
    if t == "object":
        return f"object {row.get('classid')}/{row.get('objid')}/{row.get('objsubid')}"
    return str(t or "?")


def waits_for(
    lock_rows: Iterable[Mapping[str, Any]], blocked_by: Mapping[int, list[int]]
) -> tuple[dict[int, PgWait], dict[int, list[str]]]:
    """For each waiting pid: its ungranted request and who holds (or queues
    ahead on) the same object, and the relations it holds locks on (for the
    waiters on a transaction id, whose request names no relation).

    Returns (pid -> waits_for dict, pid -> user relations it holds)."""
    by_pid: dict[int, list[Mapping[str, Any]]] = {}
    for r in lock_rows:
        by_pid.setdefault(r["pid"], []).append(r)
    holds: dict[int, list[str]] = {}
    for pid, rows in by_pid.items():
        rels = []
        for r in rows:
            if r["granted"] and r["locktype"] == "relation" and (r.get("relation") or 0) >= 16384:
                name = _relname(r)
                if name and name not in rels and not name.startswith("pg_catalog."):
                    rels.append(name)
        holds[pid] = rels
    out: dict[int, PgWait] = {}
    for pid, blockers in blocked_by.items():
        want = next((r for r in by_pid.get(pid, ()) if not r["granted"]), None)
        if want is None:
            continue
        k = _key(want)
        holders = []
        for b in blockers:
            for r in by_pid.get(b, ()):
                if _key(r) == k:
                    holders.append({"pid": b, "mode": r["mode"], "granted": bool(r["granted"])})
        w: PgWait = {
            "locktype": want["locktype"],
            "object": lock_object(want),
            "mode": want["mode"],
            "holders": holders,
        }
        rel = _relname(want)
        if rel:
            w["relation"] = rel
        elif holds.get(pid):
            w["relation"] = holds[pid][0]  # the table whose row it waits for
        if want["locktype"] == "advisory":
            w["advisory"] = [want.get("classid"), want.get("objid"), want.get("objsubid")]
        if want["locktype"] == "tuple":
            w["tuple"] = [want.get("page"), want.get("tuple")]
        if want["locktype"] == "transactionid":
            w["xid"] = want.get("xid")
        out[pid] = w
    return out, holds


def cycles(blocked_by: Mapping[int, list[int]]) -> list[list[int]]:
    """Groups of waiters that wait on each other (strongly connected, 2+ pids,
    or a pid that waits on itself): a deadlock the server has not broken yet."""
    nodes = list(blocked_by)
    reach: dict[int, set[int]] = {}
    for n in nodes:
        seen: set[int] = set()
        stack = list(blocked_by.get(n, ()))
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            stack.extend(blocked_by.get(p, ()))
        reach[n] = seen
    done: set[int] = set()
    out = []
    for n in sorted(nodes):
        if n in done or n not in reach[n]:
            continue
        group = sorted(m for m in nodes if m in reach[n] and n in reach[m])
        done.update(group)
        out.append(group)
    return out


def tree_rows(
    root: int, blocks: Mapping[int, list[int]], backends: Mapping[int, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The tree below `root`, depth-first, root first (depth 0). A backend that
    waits on several others appears once, under the first that reaches it."""
    out: list[dict[str, Any]] = []
    seen = {root}
    stack: list[tuple[int, int, int | None]] = [(root, 0, None)]
    while stack and len(out) < MAX_TREE_ROWS:
        pid, depth, parent = stack.pop()
        b = dict(backends.get(pid) or {"pid": pid, "state": "unknown", "query": ""})
        b["depth"] = depth
        if parent is not None:
            b["parent"] = parent
        out.append(b)
        kids = [w for w in blocks.get(pid, ()) if w not in seen]
        # longest waiting first on screen: push in reverse
        kids.sort(key=lambda p: (-((backends.get(p) or {}).get("state_age_s") or 0), p))
        for k in reversed(kids):
            seen.add(k)
            stack.append((k, depth + 1, pid))
    return out


def amplifiers(
    waiters: Mapping[int, Mapping[str, Any]], blocks: Mapping[int, list[int]]
) -> list[dict[str, Any]]:
    """Waiters whose own request is an exclusive relation lock and that others
    queue behind: one holder (often idle in transaction) plus one ALTER TABLE
    becomes a queue of every reader of the table."""
    out = []
    for pid, b in waiters.items():
        w = b.get("waits_for") or {}
        if w.get("locktype") != "relation" or w.get("mode") not in EXCLUSIVE_MODES:
            continue
        behind = [p for p in blocks.get(pid, ()) if p != pid]
        if not behind:
            continue
        out.append(
            {
                "pid": pid,
                "application_name": b.get("application_name", ""),
                "query": b.get("query", ""),
                "mode": w.get("mode"),
                "relation": w.get("relation"),
                "behind": sorted({h["pid"] for h in w.get("holders") or ()}),
                "held": [h for h in w.get("holders") or () if h.get("granted")],
                "queued": len(_below(pid, blocks)),
            }
        )
    out.sort(key=lambda a: -a["queued"])
    return out


def _below(start: int, blocks: Mapping[int, list[int]]) -> set[int]:
    seen: set[int] = set()
    stack = [start]
    while stack:
        for w in blocks.get(stack.pop(), ()):
            if w not in seen and w != start:
                seen.add(w)
                stack.append(w)
    return seen


def hot_relation(waiters: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The relation most lock waiters wait on (a row of it, or the table), with
    one waiter's query as an example."""
    count: dict[str, int] = {}
    example: dict[str, Mapping[str, Any]] = {}
    for b in waiters.values():
        rel = (b.get("waits_for") or {}).get("relation")
        if rel:
            count[rel] = count.get(rel, 0) + 1
            example.setdefault(rel, b)
    if not count:
        return None
    rel = max(count, key=lambda r: (count[r], r))
    ex = example[rel]
    return {
        "relation": rel,
        "waiters": count[rel],
        "query": ex.get("query", ""),
        "mode": (ex.get("waits_for") or {}).get("mode"),
    }


def _strip(b: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in b.items() if k not in ("depth", "parent")}


def _reverse(waiters: Mapping[int, PgBackend]) -> dict[int, list[int]]:
    blocks: dict[int, list[int]] = {}
    for w, b in waiters.items():
        for p in b.get("blocked_by", []):
            blocks.setdefault(p, []).append(w)
    return blocks


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
    blocks = _reverse(waiters)  # blocker -> the waiters it blocks directly
    in_cycle = {p: g for g in cycles(
        {p: list(b.get("blocked_by") or ()) for p, b in waiters.items()}) for p in g}  # fmt: skip
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
        # root and tree rows are built as plain dicts (tree_rows serves other callers)
        node: PgBlockNode = {
            "root": root,  # type: ignore[typeddict-item]
            "waiters": ws[:MAX_WAITERS_PER_TREE],
            "depth": _depth(r, blocks),
            "waiting_count": len(below),
            "tree": tree_rows(r, blocks, {**backends, r: root}),  # type: ignore[typeddict-item]
        }
        if r in in_cycle:
            node["cycle"] = in_cycle[r]
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
