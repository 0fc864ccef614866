"""The recovery a fault cost, measured from the ticks alone.

Per fault (a "fault" ControlEvent in a tick):
  - baseline: median ops/s and the p95 of the ticks of the 10 s before it;
  - impact: min ops/s, max p95, errors by class, from the injection until it
    recovered (or until the next fault, whose impact is its own);
  - time to recover: from the fault's end (its heal; the injection itself for
    a fault that heals on its own, like a killed pod) until ops/s is back to
    >= 90 % of baseline and the error rate and p95 are under the SLO, for 3
    consecutive ticks (the time is taken at the start of the first of them),
    or "not recovered";
  - what the probes saw meanwhile: pod restarts, connections, queue depth
    peak, lock holders.

`RecoveryTracker.evaluate(tick)` returns the tick with a `fault` anomaly per
fault being followed (cleared, with its final evidence, in the tick it
recovered). It reads nothing but ticks, so `report --redetect` reproduces it.
The bar for "under the SLO" is the SLO, or the baseline itself when the run
was already above it before the fault (p95 x 1.5, error rate + 0.1 point).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.engine.thresholds import DEFAULT_SLO
from app.tick import Anomaly, LazyHist, Percentiles, Tick, merge_histograms

BASELINE_S = 10.0
RECOVERED_TICKS = 3
RECOVERED_OPS = 0.9


@dataclass
class _Fault:
    n: int
    kind: str
    note: str
    source: str
    t_inject: float
    planned_s: float
    started_tick: int
    baseline_ops: float | None
    baseline_p95: float | None
    baseline_err_pct: float
    t_end: float | None = None
    min_ops: float | None = None
    max_p95: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    streak: int = 0
    streak_start: float | None = None
    recovered_at: float | None = None
    recovered_tick: int | None = None
    impact_closed: bool = False  # a later fault started: its impact is its own
    probes: dict[str, Any] = field(default_factory=dict)
    # per scenario: a fault that hits one scenario of a mix is plain there
    baseline_by: dict[str, float] = field(default_factory=dict)
    min_by: dict[str, float] = field(default_factory=dict)
    _restarts0: int | None = None


@dataclass(frozen=True, slots=True)
class _Past:
    """What a fault's baseline needs of one earlier tick. The tick itself
    holds a 139 KB histogram per scenario and every probe reading: 10 s of
    them at a short --interval (10 ms: 1,000 ticks) held ~550 MB (issue 10)."""

    t: float
    paused: bool
    ops_per_s: float
    completed: int
    failed: int
    hists: tuple[LazyHist, ...]  # encoded, ~1-3 KB each
    by: tuple[tuple[str, float], ...]  # (scenario, completed per second)

    @classmethod
    def of(cls, tick: Tick) -> _Past:
        hs = [s.hist for s in tick.scenarios]
        if all(isinstance(h, LazyHist) for h in hs):
            hists = tuple(LazyHist.of(h) for h in hs)  # read back: already encoded
        elif tick.completed:
            hists = (LazyHist.of(tick.histogram()),)  # one merge, one encoding
        else:
            hists = ()
        iv = tick.interval
        return cls(
            t=tick.t, paused=tick.paused, ops_per_s=tick.ops_per_s, completed=tick.completed,
            failed=tick.failed, hists=hists,
            by=tuple((s.name, s.completed / iv) for s in tick.scenarios) if iv > 0 else (),
        )  # fmt: skip


class RecoveryTracker:
    def __init__(self, slo: Mapping[str, float] | None = None) -> None:
        slo = {**DEFAULT_SLO, **(slo or {})}
        self.slo_p95 = float(slo["p95_ms"])
        self.slo_err = float(slo["error_pct"])
        self.history: deque[_Past] = deque()  # the last BASELINE_S, compact
        self.open: dict[int, _Fault] = {}

    # ---- per tick ------------------------------------------------------------------
    def evaluate(self, tick: Tick) -> Tick:
        for e in tick.events:
            if e.kind == "fault" and e.before is not None:
                for other in self.open.values():
                    other.impact_closed = True
                self._start(int(e.before), e, tick)
            elif e.kind == "fault-heal" and e.before is not None:
                f = self.open.get(int(e.before))
                if f is not None and f.t_end is None:
                    f.t_end = e.t
        active, cleared = [], []
        for f in list(self.open.values()):
            self._observe(f, tick)
            a = self._anomaly(f, tick)
            if f.recovered_at is not None:
                cleared.append(a)
                del self.open[f.n]
            else:
                active.append(a)
        self.history.append(_Past.of(tick))
        while self.history and self.history[0].t < tick.t - BASELINE_S - 1e-6:
            self.history.popleft()
        if not active and not cleared:
            return tick
        return dataclasses.replace(
            tick, anomalies=(*tick.anomalies, *active), cleared=(*tick.cleared, *cleared)
        )

    def _start(self, n: int, e: Any, tick: Tick) -> None:
        before = [t for t in self.history
                  if t.t <= e.t + 1e-6 and t.t > e.t - BASELINE_S and not t.paused]  # fmt: skip
        ops = [t.ops_per_s for t in before]
        lat = (
            Percentiles.of(merge_histograms(h for t in before for h in t.hists)) if before else None
        )
        done = sum(t.completed for t in before)
        kind = e.note.split(":", 1)[0].split(" ", 1)[-1] if e.note else "fault"
        self.open[n] = _Fault(
            n=n, kind=kind, note=e.note, source=e.source, t_inject=e.t,
            planned_s=float(e.after or 0.0), started_tick=tick.index,
            baseline_ops=statistics.median(ops) if ops else None,
            baseline_p95=lat.p95 if lat and lat.count else None,
            baseline_err_pct=100.0 * sum(t.failed for t in before) / done if done else 0.0,
            t_end=e.t if not e.after else None,
        )  # fmt: skip
        names = {sc for t in before for sc, _ in t.by}
        self.open[n].baseline_by = {
            name: statistics.median([v for t in before for sc, v in t.by if sc == name])
            for name in sorted(names)
        }

    def _bars(self, f: _Fault) -> tuple[float, float, float]:
        ops = RECOVERED_OPS * f.baseline_ops if f.baseline_ops else 0.0
        p95 = max(self.slo_p95, 1.5 * (f.baseline_p95 or 0.0))
        err = max(self.slo_err, f.baseline_err_pct + 0.1)
        return ops, p95, err

    def _observe(self, f: _Fault, tick: Tick) -> None:
        start = tick.t - tick.interval
        ops, p95 = tick.ops_per_s, tick.latency().p95
        err = 100.0 * tick.error_ratio
        # the drain's window is a tail; a later fault's ticks are that fault's impact
        if f.recovered_at is None and not tick.is_drain and not f.impact_closed:
            f.min_ops = ops if f.min_ops is None else min(f.min_ops, ops)
            f.max_p95 = max(f.max_p95, p95)
            f.failed += tick.failed
            for sw in tick.scenarios:
                v = sw.completed / tick.interval if tick.interval > 0 else 0.0
                f.min_by[sw.name] = min(f.min_by.get(sw.name, v), v)
            for k, v in tick.errors().items():
                f.errors[k] = f.errors.get(k, 0) + v
            self._probes(f, tick)
        if f.t_end is None or start < f.t_end - 1e-6 or tick.is_drain:
            return
        bar_ops, bar_p95, bar_err = self._bars(f)
        good = (
            not tick.paused and tick.completed > 0
            and ops >= bar_ops and p95 <= bar_p95 and err <= bar_err
        )  # fmt: skip
        if not good:
            f.streak, f.streak_start = 0, None
            return
        if f.streak == 0:
            f.streak_start = start
        f.streak += 1
        if f.streak >= RECOVERED_TICKS:
            f.recovered_at = f.streak_start
            f.recovered_tick = tick.index

    def _probes(self, f: _Fault, tick: Tick) -> None:
        p = f.probes
        r = tick.readings
        pods = r.get("pods")
        if pods is not None and pods.ok:
            cs = pods.data.get("containers") or []
            total = sum(int(c.get("restarts") or 0) for c in cs)
            if f._restarts0 is None:
                f._restarts0 = total
            restarts = max(total - f._restarts0, 0)
            p["pod_restarts"] = max(p.get("pod_restarts", 0), restarts)
        pg = r.get("postgres")
        if pg is not None and pg.ok:
            d = pg.data
            if "connections" in d:
                p["pg_connections_min"] = min(
                    p.get("pg_connections_min", 10**9), int(d["connections"])
                )
                p["pg_connections_max"] = max(p.get("pg_connections_max", 0), int(d["connections"]))
            p["pg_waiting_max"] = max(p.get("pg_waiting_max", 0), int(d.get("waiting") or 0))
            p["pg_idle_in_tx_max"] = max(
                p.get("pg_idle_in_tx_max", 0), int(d.get("idle_in_tx_count") or 0)
            )
            holders = set(p.get("lock_holders", []))
            for node in d.get("blocking_tree") or []:
                pid = (node.get("root") or node).get("pid") if isinstance(node, Mapping) else None
                if pid:
                    holders.add(int(pid))
            if holders:
                p["lock_holders"] = sorted(holders)[:20]
        rd = r.get("redis")
        if rd is not None and rd.ok:
            d = rd.data
            if "connected_clients" in d:
                n = int(d["connected_clients"])
                p["redis_clients_min"] = min(p.get("redis_clients_min", 10**9), n)
                p["redis_clients_max"] = max(p.get("redis_clients_max", 0), n)
            p["redis_blocked_max"] = max(
                p.get("redis_blocked_max", 0), int(d.get("blocked_clients") or 0)
            )
        depth = [int(q.get("depth") or 0) for name in ("redis", "pg_queues")
                 if (x := r.get(name)) is not None and x.ok for q in x.data.get("queues") or []]  # fmt: skip
        if depth:
            p["queue_depth_peak"] = max(p.get("queue_depth_peak", 0), max(depth))

    def _anomaly(self, f: _Fault, tick: Tick) -> Anomaly:
        ev = evidence(f, tick, self._bars(f))
        if f.recovered_at is not None:
            summary = f"fault #{f.n} {f.kind}: recovered in {ev['recovery_s']:.1f} s"
        elif f.t_end is None:
            summary = f"fault #{f.n} {f.kind}: under way"
        else:
            summary = f"fault #{f.n} {f.kind}: recovering for {ev['recovering_s']:.1f} s"
        return Anomaly(
            key=f"fault:{f.n}", kind="fault", severity="warning", subject=f.kind,
            started_tick=f.started_tick, started_at=f.t_inject, summary=summary, evidence=ev,
            cleared_tick=f.recovered_tick, cleared_at=f.recovered_at,
        )  # fmt: skip


def _r(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def evidence(f: _Fault, tick: Tick, bars: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "n": f.n,
        "kind": f.kind,
        "note": f.note,
        "source": f.source,
        "injected_at": round(f.t_inject, 3),
        "ended_at": _r(f.t_end, 3),
        "planned_s": f.planned_s,
        "baseline": {"ops_per_s": _r(f.baseline_ops), "p95_ms": _r(f.baseline_p95),
                     "error_pct": _r(f.baseline_err_pct, 3)},
        "impact": {"min_ops_per_s": _r(f.min_ops), "max_p95_ms": _r(f.max_p95),
                   "failed": f.failed, "errors": dict(f.errors)},
        "by_scenario": {name: {"baseline_ops_per_s": _r(f.baseline_by.get(name)),
                               "min_ops_per_s": _r(f.min_by.get(name))}
                        for name in sorted({*f.baseline_by, *f.min_by})},
        "bar": {"ops_per_s": _r(bars[0]), "p95_ms": _r(bars[1]), "error_pct": _r(bars[2], 3)},
        "recovered": f.recovered_at is not None,
        "recovered_at": _r(f.recovered_at, 3),
        "recovery_s": _r(max(f.recovered_at - (f.t_end or f.t_inject), 0.0))
        if f.recovered_at is not None else None,
        "outage_s": _r(max(f.recovered_at - f.t_inject, 0.0)) if f.recovered_at is not None else None,
        "recovering_s": _r(max(tick.t - f.t_end, 0.0)) if f.t_end is not None else 0.0,
        "probes": dict(f.probes),
    }  # fmt: skip


class FaultReport:
    """The Faults section's rows, fed one tick at a time (the report streams):
    holds the last state of each fault only."""

    def __init__(self) -> None:
        self.last: dict[str, Anomaly] = {}
        self.first_t: float | None = None

    def add(self, t: Tick) -> None:
        if self.first_t is None:
            self.first_t = t.t - t.elapsed
        for a in (*t.anomalies, *t.cleared):
            if a.kind == "fault":
                self.last[a.key] = a

    def result(self) -> list[dict[str, Any]]:
        """One row per fault (chart-friendly: seconds since the run started)."""
        origin = self.first_t or 0.0

        def rel(v: Any) -> float | None:
            return None if v is None else round(float(v) - origin, 1)

        rows = []
        for a in sorted(self.last.values(), key=lambda a: a.started_at):
            ev = dict(a.evidence)
            ev["at_s"] = rel(ev.get("injected_at"))
            ev["ended_s"] = rel(ev.get("ended_at"))
            ev["recovered_s"] = rel(ev.get("recovered_at"))
            rows.append(ev)
        return rows


def fault_rows(ticks: Iterable[Tick]) -> list[dict[str, Any]]:
    """One row per fault, its last state in the ticks (the report's Faults
    section and its JSON)."""
    acc = FaultReport()
    for t in ticks:
        acc.add(t)
    return acc.result()


def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    return f"{v:.1f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def fault_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The **Faults** section: a table, then what the probes saw per fault."""
    if not rows:
        return []
    L = ["## Faults", "",
         "Baseline: the 10 s before the fault. Recovered: ops/s ≥ 90 % of baseline and the"
         " error rate and p95 under the SLO for 3 consecutive ticks, timed from the fault's"
         " end (its heal; the injection for a fault that heals itself).", ""]  # fmt: skip
    head = ["#", "fault", "at", "ended", "baseline ops/s", "baseline p95",
            "min ops/s", "max p95", "errors", "recovery"]  # fmt: skip
    L.append("| " + " | ".join(head) + " |")
    L.append(
        "|"
        + "|".join(["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---", "---:"])
        + "|"
    )
    for r in rows:
        b, i = r.get("baseline") or {}, r.get("impact") or {}
        errs = ", ".join(f"{k} {v}" for k, v in sorted((i.get("errors") or {}).items())) or "none"
        rec = f"**{r['recovery_s']:.1f} s**" if r.get("recovered") else "**not recovered**"
        cells = [str(r.get("n")), r.get("kind", "?"), _f(r.get("at_s"), " s"),
                 _f(r.get("ended_s"), " s"), _f(b.get("ops_per_s")), _f(b.get("p95_ms"), " ms"),
                 _f(i.get("min_ops_per_s")), _f(i.get("max_p95_ms"), " ms"), errs, rec]  # fmt: skip
        L.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    L.append("")
    for r in rows:
        probes = r.get("probes") or {}
        seen = (
            ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in probes.items())
            or "no probe readings"
        )
        per = ", ".join(
            f"{name} {_f(v.get('baseline_ops_per_s'))} → {_f(v.get('min_ops_per_s'))} ops/s"
            for name, v in (r.get("by_scenario") or {}).items()
        )
        L.append(f"- {r.get('note', '')}; per scenario (baseline → min): {per or '–'};"
                 f" the probes saw: {seen}")  # fmt: skip
    L.append("")
    L.append("```json")
    import json

    L.append(json.dumps(rows, indent=None, default=str))
    L.append("```")
    return L
