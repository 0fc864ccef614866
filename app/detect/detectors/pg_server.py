"""What the servers say happened, whoever caused it: server-side error rates of
the target database, lock contention without long waits, wait cycles, and a
probe that cannot see what it should (`probe-blind`).

These read the probe readings only, so they work the same in `watch` (someone
else's load) and in `run` (where loadtop's own errors are put beside them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.detect.base import Detector, Finding, Options, TickView
from app.detect.detectors.postgres import IdleInTxBlockerOptions, _backend, _q, _who
from app.tick import Tick


def _own_errors(tick: Tick, prefixes: tuple[str, ...]) -> dict[str, int]:
    """loadtop's own errors of these SQLSTATE classes in this tick (run mode)."""
    out: dict[str, int] = {}
    for k, n in tick.errors().items():
        if n and k.startswith(prefixes):
            out[k] = out.get(k, 0) + n
    return out


def _db(name: str, data: Mapping[str, Any]) -> str:
    return f"database {data['database']}" if data.get("database") else name


# ---- probe-blind -------------------------------------------------------------------


@dataclass
class ProbeBlindOptions(Options):
    pass


class ProbeBlindDetector(Detector):
    """A probe that cannot see what it should: other roles' sessions, a denied view
    or function, Redis commands denied by ACL, pods or metrics forbidden by RBAC."""

    kind = "probe-blind"
    Options = ProbeBlindOptions
    raise_ticks = 1
    clear_ticks = 3

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        out = []
        for name, r in tick.readings.items():
            for what, hidden, fix in _blind(r.probe, r.ok, r.data, r.error):
                out.append(
                    Finding(
                        subject=f"{name}:{what}",
                        severity="warning",
                        summary=f"{name} probe is blind: {hidden}; fix: {fix}",
                        evidence={"probe": name, "what": what, "hidden": hidden, "grant": fix},
                    )
                )
        return out


def _blind(probe: str, ok: bool, data: Mapping[str, Any], error: str) -> list[tuple[str, str, str]]:
    """(what, what is hidden, the statement that fixes it) for one reading."""
    out: list[tuple[str, str, str]] = []
    low = (error or "").lower()
    if probe == "postgres":
        if ok:
            for b in data.get("blind") or ():
                out.append((b.get("what", "?"), b.get("hidden", "?"), b.get("grant", "?")))
        elif "permission denied" in low or "grant " in low:
            head, _, fix = error.partition(": ")
            out.append(("probe", f"every reading ({head})", fix or "GRANT pg_monitor TO <role>"))
    elif probe == "redis":
        if ok and data.get("version") == "":  # the probe fills it from INFO, always
            out.append(
                (
                    "info",
                    "INFO is denied by ACL: clients, memory, evictions, rejected connections "
                    "and the server version are not shown",
                    "ACL SETUSER <probe user> +info",
                )
            )
        if ok:
            for key, cmd in (("slowlog", "slowlog|get"), ("latency", "latency|latest")):
                if data.get(key) == "unavailable":
                    out.append(
                        (
                            key,
                            f"{cmd.replace('|', ' ').upper()} is denied by ACL: "
                            f"{'slow commands' if key == 'slowlog' else 'latency events'} "
                            "are not shown",
                            f"ACL SETUSER <probe user> +{cmd}",
                        )
                    )
        elif "noperm" in low or "no permissions" in low or "acl user" in low:
            head, _, fix = error.partition(": ")
            out.append(("acl", f"every reading ({head})", fix or "ACL SETUSER <probe user> +info"))
    elif probe == "pods":
        text = str(data.get("warning") or "") if ok else error
        t = text.lower()
        if "403" in t or "forbidden" in t:
            head, _, fix = text.partition(": ")
            out.append(("rbac", head if ok else f"every reading ({head})", fix or text))
    return out


# ---- server-side errors of the target database -------------------------------------


@dataclass
class PgDeadlocksOptions(Options):
    pass


class PgDeadlocksDetector(Detector):
    """Deadlocks (40P01) counted by the server in the target database, whoever's
    sessions they were; stays raised while they keep coming."""

    kind = "pg-deadlocks"
    Options = PgDeadlocksOptions
    raise_ticks = 1
    clear_ticks = 10

    def __init__(self, options: PgDeadlocksOptions | None = None) -> None:
        super().__init__(options)
        self._first: dict[str, int] = {}

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        out = []
        for name, _t, data in view.readings("postgres"):
            totals = data.get("totals") or {}
            if "deadlocks" not in totals:
                continue
            d = (data.get("deltas") or {}).get("deadlocks", 0)
            base = self._first.setdefault(name, totals["deadlocks"] - d)
            since = totals["deadlocks"] - base
            if not d:
                continue
            rate = (data.get("rates") or {}).get("deadlocks", 0.0)
            own = _own_errors(tick, ("40P01",))
            last = (data.get("cycles") or [None])[0]
            summary = (
                f"{d} deadlock{'s' if d != 1 else ''} in {_db(name, data)} since the last "
                f"poll ({rate:.2f}/s; {since} since the watch began): sessions lock the same "
                "rows in different orders; lock in one order, or retry 40P01"
            )
            if own:
                summary += f"; loadtop's own workers got {sum(own.values())} of them"
            out.append(
                Finding(
                    subject=name,
                    severity="critical",
                    summary=summary,
                    evidence={
                        "database": data.get("database"),
                        "deadlocks": d,
                        "per_s": rate,
                        "since_start": since,
                        "total": totals["deadlocks"],
                        "loadtop_errors": own,
                        **({"cycle": last} if last else {}),
                    },
                )
            )
        return out


@dataclass
class PgRollbacksOptions(Options):
    ratio: float = 0.10  # rollbacks / (commits + rollbacks) over a poll
    clear_ratio: float = 0.05
    min_per_s: float = 1.0  # rollbacks per second, so a handful of them is not a ratio


class PgRollbacksDetector(Detector):
    """The target database rolls back a large share of its transactions
    (serialization failures, deadlocks, application errors)."""

    kind = "pg-rollbacks"
    Options = PgRollbacksOptions
    raise_ticks = 3
    clear_ticks = 3
    opt: PgRollbacksOptions

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, _t, data in view.readings("postgres"):
            rates = data.get("rates") or {}
            rb, cm = rates.get("rollbacks"), rates.get("commits")
            if not isinstance(rb, int | float) or not isinstance(cm, int | float):
                continue
            if rb < o.min_per_s or rb + cm <= 0:
                continue
            ratio = rb / (rb + cm)
            if ratio < o.clear_ratio:
                continue
            own = _own_errors(tick, ("40001", "40P01", "40"))
            summary = (
                f"{ratio * 100:.0f}% of transactions in {_db(name, data)} roll back "
                f"({rb:.0f}/s against {cm:.0f} commits/s): serialization failures (40001), "
                "deadlocks or application errors; check the clients' retry loops"
            )
            if own:
                summary += "; loadtop saw " + ", ".join(f"{k} x{n}" for k, n in own.items())
            out.append(
                Finding(
                    subject=name,
                    severity="critical" if ratio >= 0.5 else "warning",
                    summary=summary,
                    evidence={
                        "database": data.get("database"),
                        "ratio": round(ratio, 3),
                        "rollbacks_per_s": rb,
                        "commits_per_s": cm,
                        "threshold": o.ratio,
                        "loadtop_errors": own,
                    },
                    sustain=ratio < o.ratio,
                )
            )
        return out


@dataclass
class PgConflictsOptions(Options):
    pass


class PgConflictsDetector(Detector):
    """Queries cancelled by recovery conflicts (a standby replaying what they read)."""

    kind = "pg-conflicts"
    Options = PgConflictsOptions
    raise_ticks = 1
    clear_ticks = 5

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        out = []
        for name, _t, data in view.readings("postgres"):
            d = (data.get("deltas") or {}).get("conflicts", 0)
            if not d:
                continue
            out.append(
                Finding(
                    subject=name,
                    severity="warning",
                    summary=(
                        f"{d} queries in {_db(name, data)} cancelled by recovery conflicts: "
                        "the standby replayed rows they read; see hot_standby_feedback and "
                        "max_standby_streaming_delay"
                    ),
                    evidence={"database": data.get("database"), "conflicts": d},
                )
            )
        return out


@dataclass
class PgTempFilesOptions(Options):
    bytes_per_s: float = 16 * 1024 * 1024  # temp file bytes written per second


class PgTempFilesDetector(Detector):
    """Queries of the target database spill sorts and hashes to temp files."""

    kind = "pg-temp-files"
    Options = PgTempFilesOptions
    raise_ticks = 2
    clear_ticks = 3
    opt: PgTempFilesOptions

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        out = []
        for name, _t, data in view.readings("postgres"):
            rates = data.get("rates") or {}
            b = rates.get("temp_bytes")
            if not isinstance(b, int | float) or b < self.opt.bytes_per_s:
                continue
            out.append(
                Finding(
                    subject=name,
                    severity="warning",
                    summary=(
                        f"{_db(name, data)} writes {b / 1048576:.0f} MiB/s of temp files "
                        f"({rates.get('temp_files', 0):.1f} files/s): sorts and hashes spill "
                        "to disk; raise work_mem for them or add an index"
                    ),
                    evidence={
                        "database": data.get("database"),
                        "temp_bytes_per_s": b,
                        "temp_files_per_s": rates.get("temp_files"),
                    },
                )
            )
        return out


# ---- lock contention without long waits ------------------------------------------------


@dataclass
class LockContentionOptions(Options):
    share: float = 0.5  # lock waiters / active backends, sampled each poll
    clear_share: float = 0.3
    min_waiting: int = 3
    # waiters behind a holder idle in its transaction at least this long are that
    # blocker's (idle-in-transaction-blocker raises it); a holder caught between
    # two statements of a short transaction is the hot row taking its turn
    idle_holder_s: float = IdleInTxBlockerOptions.min_idle_s
    # a poll that lands on a lock hand-over (the waiters counted, the lock graph
    # empty) names the hot relation last read, if read within this many seconds
    hot_kept_s: float = 5.0


class LockContentionDetector(Detector):
    """Many active backends wait on locks held by active sessions, each briefly
    (a hot row): sustained for several polls, throughput is capped by the lock,
    not the server. Waiters behind a session idle in its transaction (for
    `idle_holder_s`) do not count.

    The hot relation comes from the lock graph (pg_locks) of the same poll. A
    poll that catches the moment a holder commits sees the waiters in
    pg_stat_activity while pg_blocking_pids or pg_locks, read a moment later,
    already finds them granted: its graph names nothing waited for, so it names
    the relation of the last poll that did (`hot_seen_s` ago, at most
    `hot_kept_s`), and the anomaly does not lose (or first show without) its hot
    relation. The contention's end (absent for `clear_ticks` polls) forgets it."""

    kind = "lock-contention"
    Options = LockContentionOptions
    raise_ticks = 3
    clear_ticks = 3
    opt: LockContentionOptions

    def __init__(self, options: LockContentionOptions | None = None) -> None:
        super().__init__(options)
        self._hot: dict[str, tuple[float, Mapping[str, Any]]] = {}  # subject -> (poll t, hot)
        self._absent: dict[str, int] = {}  # subject -> polls in a row without the condition

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, t, data in view.readings("postgres"):
            # waiters behind a session idle in its transaction are that blocker's
            # (idle-in-transaction-blocker, lock-wait-chain), not contention
            behind_idle = sum(
                int(n.get("waiting_count") or 0)
                for n in data.get("blocking_tree") or ()
                if _idle_holder(n.get("root") or {}, o.idle_holder_s)
            )
            waiting = max(0, (data.get("waiting") or 0) - behind_idle)
            active = data.get("active")
            if not isinstance(active, int):
                active = (data.get("by_state") or {}).get("active", 0)
            share = waiting / max(active, waiting) if waiting else 0.0
            if waiting < o.min_waiting or not active or share < o.clear_share:
                n = self._absent[name] = self._absent.get(name, 0) + 1
                if n >= self.clear_after:
                    self._hot.pop(name, None)  # a later contention names its own relation
                continue
            self._absent.pop(name, None)
            hot: Mapping[str, Any] = data.get("lock_hot") or {}
            seen_s: float | None = None
            if hot:
                self._hot[name] = (t, hot)
                seen_s = 0.0
            elif name in self._hot and not _graph_names_a_wait(data):
                t_hot, kept = self._hot[name]
                if 0 <= t - t_hot <= o.hot_kept_s:
                    hot, seen_s = kept, round(t - t_hot, 1)
            rel = hot.get("relation")
            summary = (
                f"{waiting} of {active} active backends wait on locks ({share * 100:.0f}%)"
                + (f", most on {rel}" if rel else "")
                + f": {_q(hot) if hot else 'a hot row or table'}; spread the writes "
                "(no single counter row), shorten the transactions or batch them"
            )
            out.append(
                Finding(
                    subject=name,
                    severity="critical" if share >= 0.8 else "warning",
                    summary=summary,
                    evidence={
                        "waiting": waiting,
                        "active": active,
                        "share": round(share, 3),
                        "threshold": o.share,
                        "hot_relation": rel,
                        "hot_waiters": hot.get("waiters"),
                        "hot_seen_s": seen_s,
                        "waiters_query": (hot.get("query") or "")[:200],
                        "mode": hot.get("mode"),
                        "by_wait": {
                            k: v
                            for k, v in (data.get("by_wait") or {}).items()
                            if k.startswith("Lock:")
                        },
                    },
                    sustain=share < o.share,
                )
            )
        return out


def _graph_names_a_wait(data: Mapping[str, Any]) -> bool:
    """Whether the poll's lock graph says what any waiter waits for (an advisory
    key, a relation, a transaction): a contention it names is not a hand-over."""
    return any(
        w.get("waits_for") for n in data.get("blocking_tree") or () for w in n.get("waiters") or ()
    )


def _idle_holder(root: Mapping[str, Any], min_idle_s: float) -> bool:
    """A root blocker idle in its transaction long enough to be that anomaly."""
    if not str(root.get("state", "")).startswith("idle in transaction"):
        return False
    age = root.get("state_age_s")
    return not isinstance(age, int | float) or age >= min_idle_s


# ---- deadlock-cycle -----------------------------------------------------------------


@dataclass
class DeadlockCycleOptions(Options):
    pass


class DeadlockCycleDetector(Detector):
    """Backends that wait on each other, seen before the server breaks the cycle."""

    kind = "deadlock-cycle"
    Options = DeadlockCycleOptions
    raise_ticks = 1
    clear_ticks = 1

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        out = []
        for name, _t, data in view.readings("postgres"):
            for c in data.get("cycles") or ():
                pids = list(c.get("pids") or ())
                bs = list(c.get("backends") or ())
                if len(pids) < 2:
                    continue
                parts = [f"{_who(b)}: {_q(b, 50)}" for b in bs[:3]]
                out.append(
                    Finding(
                        subject=f"{name}:cycle {'-'.join(map(str, pids))}",
                        severity="critical",
                        summary=(
                            "deadlock cycle: "
                            + " ↔ ".join(map(str, pids))
                            + "; "
                            + " / ".join(parts)
                            + "; the server cancels one after deadlock_timeout"
                        ),
                        evidence={
                            "pids": pids,
                            "backends": [
                                {**_backend(b), "waits_for": b.get("waits_for")} for b in bs[:5]
                            ],
                        },
                    )
                )
        return out
