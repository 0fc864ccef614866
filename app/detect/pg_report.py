"""Report parts for issue 12, pure functions of the ticks: what the probes
could not see (probe-blind), and the server-side error counts of the target
database beside loadtop's own."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from app.tick import Tick

COUNTS = ("commits", "rollbacks", "deadlocks", "conflicts", "temp_files", "temp_bytes")
# loadtop error classes the server also counts (a deadlock victim is a 40P01)
OWN_CLASSES = {"deadlocks": ("40P01",), "serialization": ("40001",)}


class PgReportAcc:
    """The report's issue-12 figures, fed tick by tick in the report's one
    streaming pass: probe-blind findings (first seen), the target database's
    server-side counter deltas (each poll once) beside loadtop's own errors of
    the same kinds, each invariant's latest anomaly, and every anomaly kind
    raised."""

    def __init__(self) -> None:
        self.blind: dict[str, dict[str, Any]] = {}
        self.polls_seen: set[tuple[str, float]] = set()
        self.sums = dict.fromkeys(COUNTS, 0)
        self.db: str | None = None
        self.polls = 0
        self.own = dict.fromkeys(OWN_CLASSES, 0)
        self.invariants: dict[str, tuple[str, Any]] = {}
        self.kinds: set[str] = set()

    def add(self, tk: Tick) -> None:
        for a in (*tk.anomalies, *tk.cleared):
            self.kinds.add(a.kind)
            if a.kind == "invariant":
                self.invariants[a.key] = (a.subject, a)
            elif a.kind == "probe-blind" and a.key not in self.blind:
                self.blind[a.key] = {
                    "probe": a.evidence.get("probe", a.subject),
                    "what": a.evidence.get("what"),
                    "hidden": a.evidence.get("hidden", a.summary),
                    "grant": a.evidence.get("grant"),
                    "first_tick": a.started_tick,
                }
        for name, r in tk.readings.items():
            if r.probe != "postgres" or not r.ok or (name, r.t) in self.polls_seen:
                continue
            self.polls_seen.add((name, r.t))
            self.db = r.data.get("database") or self.db
            d = r.data.get("deltas")
            if not d:
                continue
            self.polls += 1
            for k in COUNTS:
                self.sums[k] += int(d.get(k) or 0)
        for cls, n in tk.errors().items():
            for k, prefixes in OWN_CLASSES.items():
                if cls.startswith(prefixes):
                    self.own[k] += n

    def blind_data(self) -> list[dict[str, Any]]:
        """Every probe-blind anomaly once (first seen), with the grant that fixes it."""
        return list(self.blind.values())

    def server_error_data(self) -> dict[str, Any] | None:
        """The postgres probe's per-poll counter deltas summed over the session,
        and loadtop's own errors of the same kinds. None without a postgres probe."""
        if not self.polls_seen:
            return None
        sums = self.sums
        xacts = sums["commits"] + sums["rollbacks"]
        return {
            "database": self.db,
            "polls": self.polls,
            **sums,
            "rollback_pct": round(100.0 * sums["rollbacks"] / xacts, 2) if xacts else 0.0,
            "loadtop": dict(self.own),
        }

    def invariant_data(self) -> dict[str, list[str]]:
        """Each invariant anomaly once, with the latest check's figures (and the
        first check's when they differ), per scenario; the "and N more" anomaly
        expands into the violations it carries."""
        out: dict[str, list[str]] = {}
        more: dict[str, list[str]] = {}
        for subject, a in self.invariants.values():
            ev = a.evidence or {}
            if "more" in ev:
                more.setdefault(subject, []).extend(ev.get("violations") or [a.summary])
                continue
            line = str(ev.get("violation") or a.summary)
            if ev.get("first"):
                line += f" (first check: {ev['first']})"
            out.setdefault(subject, []).append(line)
        for subject, lines in more.items():
            out.setdefault(subject, []).extend(lines)
        return out


def _fed(ticks: Iterable[Tick]) -> PgReportAcc:
    acc = PgReportAcc()
    for tk in ticks:
        acc.add(tk)
    return acc


def blind_data(ticks: Iterable[Tick]) -> list[dict[str, Any]]:
    return _fed(ticks).blind_data()


def server_error_data(ticks: Iterable[Tick]) -> dict[str, Any] | None:
    return _fed(ticks).server_error_data()


def invariant_data(ticks: Iterable[Tick]) -> dict[str, list[str]]:
    return _fed(ticks).invariant_data()


def server_errors_bad(data: dict[str, Any] | None, kinds: Iterable[str]) -> list[str]:
    """Why the server-side figures fail the verdict (empty: they do not);
    `kinds`: every anomaly kind raised in the session."""
    out = []
    kinds = set(kinds)
    if data and data.get("deadlocks"):
        out.append(f"{data['deadlocks']} deadlocks")
    if "pg-rollbacks" in kinds:
        out.append(f"rollback ratio {data['rollback_pct'] if data else '?'}%")
    if "pg-conflicts" in kinds:
        out.append("recovery conflicts")
    return out


def blind_md(items: list[dict[str, Any]]) -> list[str]:
    if not items:
        return []
    lines = ["**The probes could not see everything** (figures below miss it):", ""]
    for b in items:
        lines.append(f"- {b['probe']}: {b['hidden']}; fix: `{b['grant']}`")
    lines.append("")
    return lines


def server_errors_md(data: dict[str, Any] | None) -> list[str]:
    if not data:
        return []
    db = f"`{data['database']}`" if data.get("database") else "the target database"
    own = data.get("loadtop") or {}
    rows = [
        ["deadlocks (40P01)", f"{data['deadlocks']:,}", f"{own.get('deadlocks', 0):,}"],
        ["rollbacks", f"{data['rollbacks']:,} ({data['rollback_pct']:.3g}% of transactions)",
         f"{own.get('serialization', 0):,} serialization failures (40001)"],
        ["recovery conflicts", f"{data['conflicts']:,}", "–"],
        ["temp files", f"{data['temp_files']:,} ({data['temp_bytes'] / 1048576:,.1f} MiB)", "–"],
    ]  # fmt: skip
    out = ["", f"Server side, {db} only (pg_stat_database, over {data['polls']} polls):", ""]
    out.append("| counter | server (every client) | loadtop's own |")
    out.append("| --- | ---: | ---: |")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def headline_notes(s: dict[str, Any], lines: list[str]) -> list[str]:
    """Lines under the report's headline: server-side errors (which the
    verdict counts too) and what the probes could not see."""
    out: list[str] = []
    bad = server_errors_bad(s.get("server_errors"), s.get("anomaly_kinds") or ())
    if bad:  # the headline already says FAIL: app.session.report.verdict reads these
        out += [f"Server side: {', '.join(bad)} (see Errors).", ""]
    return out + blind_md(s.get("probe_blind") or [])


def first_and_more(vs: Sequence[str], n: int) -> list[str]:
    """The first n violations, then "and N more" when there are more."""
    out = list(vs[:n])
    if len(vs) > n:
        out.append(f"and {len(vs) - n} more (all in `--json`)")
    return out


# what a watch report leaves out: sections about load it did not apply
WATCH_DROPS = ("## Steps", "## Scenarios", "## Counters", "## Invariants", "## Thresholds",
               "### Capacity")  # fmt: skip


def watch_sections(md: str, s: dict[str, Any]) -> str:
    """A watch's report without what judges load (the operations line, steps,
    SLO, capacity, recommended concurrency): a watch applied none. Other
    reports unchanged."""
    if (s.get("load") or {}).get("mode") != "watch":
        return md
    out: list[str] = []
    dropping = 0  # the heading level being dropped (0: keeping)
    for line in md.split("\n"):
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            if dropping and level <= dropping:
                dropping = 0
            if not dropping and any(line.rstrip() == d for d in WATCH_DROPS):
                dropping = level
        if not dropping and not _OPS_LINE.match(line):
            out.append(line)
    return "\n".join(out)


_OPS_LINE = re.compile(r"^[\d,]+ operations, [\d,.]+ ops/s overall")
