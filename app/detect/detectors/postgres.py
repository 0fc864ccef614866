"""Detectors on the postgres probe's readings (see app/probes/schema.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app import fmt
from app.detect.base import Detector, Finding, Options, TickView
from app.readings import describe_wait
from app.tick import Tick


def _backend(b: Mapping[str, Any] | None) -> dict[str, Any]:
    """The evidence form of a PgBackend: the fields a person acts on."""
    b = b or {}
    return {
        "pid": b.get("pid"),
        "application_name": b.get("application_name", ""),
        "usename": b.get("usename", ""),
        "state": b.get("state", ""),
        "xact_age_s": _r(b.get("xact_age_s")),
        "state_age_s": _r(b.get("state_age_s")),
        "wait_event": _wait(b),
        "query": (b.get("query") or "")[:200],
    }


def _r(x: Any, nd: int = 1) -> Any:
    return round(x, nd) if isinstance(x, int | float) else x


def _wait(b: Mapping[str, Any]) -> str | None:
    t, e = b.get("wait_event_type"), b.get("wait_event")
    return f"{t}:{e}" if t and e else (t or e or None)


def _who(b: Mapping[str, Any]) -> str:
    app = b.get("application_name") or b.get("usename") or "?"
    return f"pid {b.get('pid')} ({app})"


def _q(b: Mapping[str, Any], n: int = 60) -> str:
    q = " ".join((b.get("query") or "").split())
    return q[:n] + ("..." if len(q) > n else "") if q else "(no query text)"


def _age(x: Any) -> str:
    return fmt.age(x) if isinstance(x, int | float) else "?"


# ---- lock-wait-chain -------------------------------------------------------------


@dataclass
class LockWaitChainOptions(Options):
    min_wait_s: float = 1.0  # a waiter must have waited this long (state_age_s) to count
    critical_waiters: int = 10
    critical_depth: int = 3


class LockWaitChainDetector(Detector):
    """Backends waiting on locks for 2 ticks or more; evidence names the root."""

    kind = "lock-wait-chain"
    Options = LockWaitChainOptions
    raise_ticks = 2
    clear_ticks = 2
    opt: LockWaitChainOptions

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, _t, data in view.readings("postgres"):
            trees = []
            for node in data.get("blocking_tree") or ():
                waiters = node.get("waiters") or []
                long = [
                    w
                    for w in waiters
                    if not isinstance(w.get("state_age_s"), int | float)
                    or w["state_age_s"] >= o.min_wait_s
                ]
                if long:
                    trees.append(node)
            if not trees:
                continue
            top = max(trees, key=lambda n: n.get("waiting_count") or len(n.get("waiters") or ()))
            root = top.get("root") or {}
            waiting = sum(n.get("waiting_count") or len(n.get("waiters") or ()) for n in trees)
            depth = max(int(n.get("depth") or 1) for n in trees)
            idle = str(root.get("state", "")).startswith("idle in transaction")
            crit = waiting >= o.critical_waiters or depth >= o.critical_depth or idle
            first = next((w for w in top.get("waiters") or () if w.get("waits_for")), None)
            wf = (first or {}).get("waits_for")
            amps = list(data.get("amplifiers") or ())
            cycle = top.get("cycle")
            if cycle:
                head = (
                    f"deadlock cycle: {' ↔ '.join(map(str, cycle))}; {waiting} backends wait in "
                    f"it or behind it: {_q(root)}"
                )
            else:
                head = (
                    f"{waiting} backends wait on locks behind {_who(root)}, "
                    f"{root.get('state', '?')}, {_in_tx(root)}, chain depth {depth}: {_q(root)}"
                )
            if first is not None and wf:
                head += f"; {_who(first)} {describe_wait(wf)}"
            if amps:
                a = amps[0]
                head += (
                    f"; amplifier: pid {a['pid']} ({_q(a, 40)}) requests {a['mode']} on "
                    f"{a['relation']} behind pid {', '.join(map(str, a['behind']))} and "
                    f"{a['queued']} sessions queue behind it"
                )
            out.append(
                Finding(
                    subject=name,
                    severity="critical" if crit or amps or cycle else "warning",
                    summary=head,
                    evidence={
                        "root": _backend(root),
                        "waiting": waiting,
                        "depth": depth,
                        "trees": len(trees),
                        "waiters": [
                            {**_backend(w), "waits_for": w.get("waits_for")}
                            for w in (top.get("waiters") or [])[:5]
                        ],
                        "pg_waiting": data.get("waiting"),
                        **({"amplifier": amps[0]} if amps else {}),
                        **({"cycle": cycle} if cycle else {}),
                    },
                )
            )
        return out


def _in_tx(b: Mapping[str, Any]) -> str:
    """'in transaction 12s', or what a holder outside any transaction is."""
    x = b.get("xact_age_s")
    if isinstance(x, int | float):
        return f"in transaction {_age(x)}"
    return f"in no transaction (a session-level lock, e.g. advisory), {_age(b.get('state_age_s'))} in this state"


# ---- idle-in-transaction-blocker -------------------------------------------------


@dataclass
class IdleInTxBlockerOptions(Options):
    min_idle_s: float = 1.0  # idle in transaction at least this long (state_age_s)


class IdleInTransactionBlockerDetector(Detector):
    """A session idle in a transaction that others wait on."""

    kind = "idle-in-transaction-blocker"
    Options = IdleInTxBlockerOptions
    raise_ticks = 1
    clear_ticks = 2
    opt: IdleInTxBlockerOptions

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        out = []
        for name, _t, data in view.readings("postgres"):
            for node in data.get("blocking_tree") or ():
                root = node.get("root") or {}
                if not str(root.get("state", "")).startswith("idle in transaction"):
                    continue
                age = root.get("state_age_s")
                if isinstance(age, int | float) and age < self.opt.min_idle_s:
                    continue
                n = node.get("waiting_count") or len(node.get("waiters") or ())
                pid = root.get("pid")
                out.append(
                    Finding(
                        subject=f"{name}:pid {pid}",
                        severity="critical",
                        summary=(
                            f"{_who(root)} is idle in transaction for {_age(age)} and blocks {n} "
                            f"backends; last query: {_q(root)}; fix the client's transaction "
                            f"handling or run pg_terminate_backend({pid})"
                        ),
                        evidence={
                            "blocker": _backend(root),
                            "waiting": n,
                            "depth": node.get("depth"),
                            "waiters": [_backend(w) for w in (node.get("waiters") or [])[:5]],
                        },
                    )
                )
        return out


# ---- long-transaction ------------------------------------------------------------


@dataclass
class LongTransactionOptions(Options):
    max_xact_s: float = 30.0


class LongTransactionDetector(Detector):
    """The oldest transaction is older than a threshold."""

    kind = "long-transaction"
    Options = LongTransactionOptions
    raise_ticks = 1
    clear_ticks = 2
    opt: LongTransactionOptions

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        out = []
        for name, _t, data in view.readings("postgres"):
            age = data.get("oldest_xact_s")
            if not isinstance(age, int | float) or age < self.opt.max_xact_s:
                continue
            b = data.get("oldest_xact") or {}
            pid = b.get("pid")
            out.append(
                Finding(
                    subject=f"{name}:pid {pid}" if pid is not None else name,
                    severity="critical" if age >= 10 * self.opt.max_xact_s else "warning",
                    summary=(
                        f"transaction open {fmt.age(age)} in {_who(b)}, {b.get('state', '?')}: "
                        f"{_q(b)}; it holds back vacuum and may hold locks"
                    ),
                    evidence={
                        "age_s": round(age, 1),
                        "threshold_s": self.opt.max_xact_s,
                        "backend": _backend(b),
                    },
                )  # fmt: skip
            )
        return out


# ---- connection-saturation -------------------------------------------------------


@dataclass
class ConnectionSaturationOptions(Options):
    ratio: float = 0.90  # connections / max_connections to raise
    clear_ratio: float = 0.85  # stays raised above this
    # error classes that mean "no connection to be had" (pool acquire timeouts, 53300)
    error_classes: tuple[str, ...] = ("53300", "pool", "acquire")


class ConnectionSaturationDetector(Detector):
    """Connections at >= 90% of the usable slots (max_connections minus the
    reserved ones), the probe finding no slot, or pool acquire timeouts."""

    kind = "connection-saturation"
    Options = ConnectionSaturationOptions
    raise_ticks = 1
    clear_ticks = 3
    opt: ConnectionSaturationOptions

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, _t, data in view.readings("postgres"):
            conns, top = data.get("connections"), data.get("max_connections")
            if not isinstance(conns, int) or not isinstance(top, int) or top <= 0:
                continue
            cap = data.get("usable_connections")
            if not isinstance(cap, int) or cap <= 0:
                cap = top
            total = data.get("connections_total")
            if isinstance(total, int) and total >= conns:
                conns = total  # the probe's own session takes a slot as well
            ratio = conns / cap
            if ratio < o.clear_ratio:
                continue
            reserved = top - cap
            holders = list(data.get("holders") or ())[:5]
            who = ", ".join(
                f"{h.get('application_name') or '?'}/{h.get('usename') or '?'} "
                f"{h.get('state')} x{h.get('connections')}"
                for h in holders[:3]
            )
            full = conns >= cap
            out.append(
                Finding(
                    subject=name,
                    severity="critical" if full or ratio >= 0.97 else "warning",
                    summary=(
                        f"{conns} of {cap} usable Postgres connections in use "
                        f"({ratio * 100:.0f}%; max_connections {top}, {reserved} reserved for "
                        "superusers): "
                        + (
                            "new clients are refused with 53300"
                            if full
                            else "new clients will get 53300 soon"
                        )
                        + (f"; top holders {who}" if who else "")
                        + "; lower concurrency or pool sizes, or use a pooler"
                    ),  # fmt: skip
                    evidence={
                        "connections": conns,
                        "max_connections": top,
                        "usable_connections": cap,
                        "reserved_connections": reserved,
                        "ratio": round(ratio, 3),
                        "by_state": dict(data.get("by_state") or {}),
                        "holders": holders,
                    },
                    sustain=ratio < o.ratio,
                )
            )
        for name, r in tick.readings.items():  # the probe itself finds no free slot
            if r.probe == "postgres" and not r.ok and "waiting for a connection slot" in r.error:
                out.append(
                    Finding(
                        subject=name,
                        severity="critical",
                        summary=f"{r.error}",
                        evidence={"probe_error": r.error, "failures": r.data.get("failures")},
                    )
                )
        for s in tick.scenarios:
            hits = {
                c: n for c, n in s.errors.items() if n and c.lower().startswith(o.error_classes)
            }
            if not hits:
                continue
            total = sum(hits.values())
            out.append(
                Finding(
                    subject=f"pool:{s.name}",
                    severity="critical",
                    summary=(
                        f"{s.name}: {total} operations found no connection ("
                        + ", ".join(f"{c} x{n}" for c, n in hits.items())
                        + "); the pool or max_connections is exhausted"
                    ),
                    evidence={"scenario": s.name, "errors": hits, "workers": s.target},
                )
            )
        return out
