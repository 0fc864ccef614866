"""Detectors on the load itself: latency, SLO, errors, the knee, invariants,
and loadtop's own saturation.

Long by design: the load detectors (latency spike, SLO breach, error burst,
connection saturation of the client pools, capacity knee, generator saturation,
invariants), each a small class over the same tick view.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app import fmt
from app.detect.base import Detector, Finding, Options, TickView
from app.detect.stats import MAD_TO_SIGMA, UslFit, fit_usl, mad, median, slope
from app.tick import Tick, step_key


def _pg_waiting(tick: Tick) -> int | None:
    for r in tick.readings.values():
        if r.probe == "postgres" and r.ok and isinstance(r.data.get("waiting"), int):
            return r.data["waiting"]
    return None


# ---- latency-spike ---------------------------------------------------------------


@dataclass
class LatencySpikeOptions(Options):
    k: float = 5.0  # raise above median + k * MAD (MAD scaled to a standard deviation)
    k_clear: float = 2.5  # stay raised while above median + k_clear * MAD
    min_ratio: float = 2.0  # and at least this multiple of the baseline median
    min_delta_ms: float = 10.0  # and at least this many ms above it (p99: twice that)
    settle_ticks: int = 3  # ticks after a step change that are not judged nor learnt
    min_baseline: int = 5  # baseline ticks needed before judging
    baseline_ticks: int = 30  # rolling baseline length per step
    min_ops: int = 10  # operations needed in a tick to judge it
    min_ops_p99: int = 1000  # p99 is judged only with this many (>= 10 in its tail)


@dataclass
class _StepBase:
    step: tuple[int, str, float | None]  # app.tick.step_key, per scenario
    ticks: int = 0
    p95: deque[float] = field(default_factory=deque)
    p99: deque[float] = field(default_factory=deque)
    last: Finding | None = None


class LatencySpikeDetector(Detector):
    """p95 or p99 above the current step's own baseline (median + k·MAD)."""

    kind = "latency-spike"
    Options = LatencySpikeOptions
    raise_ticks = 2  # one slow tick (a GC pause, a checkpoint) is not a spike
    clear_ticks = 3
    opt: LatencySpikeOptions

    def __init__(self, options: LatencySpikeOptions | None = None) -> None:
        super().__init__(options)
        self._st: dict[str, _StepBase] = {}

    def _threshold(self, xs: deque[float], k: float, ratio: float, delta: float):
        med = median(xs)
        sd = mad(xs, med) * MAD_TO_SIGMA
        return med, sd, max(med + k * sd, med * ratio, med + delta)

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out: list[Finding] = []
        for s in tick.scenarios:
            st = self._st.get(s.name)
            step = step_key(tick, s.target)
            if st is None or st.step != step:
                st = self._st[s.name] = _StepBase(
                    step, p95=deque(maxlen=o.baseline_ticks), p99=deque(maxlen=o.baseline_ticks)
                )
            if tick.paused:
                continue
            st.ticks += 1
            if st.ticks <= o.settle_ticks:
                continue
            lat = view.latency(s)
            if lat.count < o.min_ops:
                # nothing completed: a stall keeps a raised spike alive
                if st.last is not None and s.concurrency > 0:
                    out.append(_as_sustain(st.last))
                continue
            if len(st.p95) < o.min_baseline:
                st.p95.append(lat.p95)
                st.p99.append(lat.p99)
                continue
            # p99 is a handful of operations per tick, so its floor is twice p95's
            d99 = 2 * o.min_delta_ms
            m95, sd95, hi95 = self._threshold(st.p95, o.k, o.min_ratio, o.min_delta_ms)
            m99, sd99, hi99 = self._threshold(st.p99, o.k, o.min_ratio, d99)
            lo_ratio = 1.0 + (o.min_ratio - 1.0) / 2.0
            lo95 = max(m95 + o.k_clear * sd95, m95 * lo_ratio, m95 + o.min_delta_ms / 2)
            lo99 = max(m99 + o.k_clear * sd99, m99 * lo_ratio, m99 + d99 / 2)
            use99 = lat.count >= o.min_ops_p99
            spiking = lat.p95 > hi95 or (use99 and lat.p99 > hi99)
            elevated = lat.p95 > lo95 or (use99 and lat.p99 > lo99)
            if not elevated:
                st.p95.append(lat.p95)
                st.p99.append(lat.p99)
                st.last = None
                continue
            r95, r99 = lat.p95 / max(m95, 1e-3), lat.p99 / max(m99, 1e-3)
            which = "p99" if use99 and r99 > r95 else "p95"
            val, base = (lat.p95, m95) if which == "p95" else (lat.p99, m99)
            ratio = val / max(base, 1e-3)
            waiting = _pg_waiting(tick)
            hint = (
                f"; Postgres shows {waiting} backends waiting on locks"
                if waiting
                else "; look for lock waits, a slow dependency or a saturated target"
            )
            f = Finding(
                subject=s.name,
                severity="critical" if ratio >= 5 else "warning",
                summary=(
                    f"{s.name}: {which} {fmt.ms(val)} is {ratio:.1f}x this step's baseline "
                    f"{fmt.ms(base)} at {s.target} workers{hint}"
                ),
                evidence={
                    "scenario": s.name,
                    "metric": which,
                    "p95_ms": round(lat.p95, 2),
                    "p99_ms": round(lat.p99, 2),
                    "baseline_p95_ms": round(m95, 2),
                    "baseline_p99_ms": round(m99, 2),
                    "mad_p95_ms": round(sd95 / MAD_TO_SIGMA, 3),
                    "mad_p99_ms": round(sd99 / MAD_TO_SIGMA, 3),
                    "threshold_p95_ms": round(hi95, 2),
                    "threshold_p99_ms": round(hi99, 2),
                    "ratio": round(ratio, 2),
                    "workers": s.target,
                    "ops": lat.count,
                    "pg_waiting": waiting,
                },
                sustain=not spiking,
            )
            st.last = f
            out.append(f)
        for name in [n for n in self._st if tick.scenario(n) is None]:
            del self._st[name]
        return out


def _as_sustain(f: Finding) -> Finding:
    return Finding(f.subject, f.summary, f.severity, f.evidence, sustain=True)


# ---- slo-breach ------------------------------------------------------------------


@dataclass
class SloBreachOptions(Options):
    p95_ms: float = 500.0
    p99_ms: float = 1000.0
    error_ratio: float = 0.001  # 0.1 %
    error_window_ticks: int = 5  # the error ratio is judged over this many ticks
    min_ops: int = 1


class SloBreachDetector(Detector):
    """p95 / p99 / error ratio over the SLO thresholds."""

    kind = "slo-breach"
    Options = SloBreachOptions
    raise_ticks = 2
    clear_ticks = 3
    opt: SloBreachOptions

    def __init__(self, options: SloBreachOptions | None = None) -> None:
        super().__init__(options)
        self._err: dict[str, deque[tuple[int, int]]] = {}

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for s in tick.scenarios:
            win = self._err.get(s.name)
            if win is None:
                win = self._err[s.name] = deque(maxlen=max(1, o.error_window_ticks))
            if tick.paused:
                continue
            win.append((s.completed, s.failed))
            done = sum(c for c, _ in win)
            failed = sum(f for _, f in win)
            ratio = failed / done if done else 0.0
            lat = view.latency(s)
            breaches = []
            if lat.count >= o.min_ops:
                if lat.p95 > o.p95_ms:
                    breaches.append(f"p95 {fmt.ms(lat.p95)} > {fmt.ms(o.p95_ms)}")
                if lat.p99 > o.p99_ms:
                    breaches.append(f"p99 {fmt.ms(lat.p99)} > {fmt.ms(o.p99_ms)}")
            if done >= o.min_ops and ratio > o.error_ratio:
                breaches.append(f"errors {ratio * 100:.2f}% > {o.error_ratio * 100:g}%")
            if not breaches:
                continue
            out.append(
                Finding(
                    subject=s.name,
                    severity="critical" if len(breaches) > 1 or ratio > 0.05 else "warning",
                    summary=f"{s.name} breaks its SLO at {s.target} workers: "
                    + "; ".join(breaches),
                    evidence={
                        "scenario": s.name,
                        "breaches": breaches,
                        "p95_ms": round(lat.p95, 2),
                        "p99_ms": round(lat.p99, 2),
                        "error_ratio": round(ratio, 5),
                        "errors": failed,
                        "ops": done,
                        "workers": s.target,
                        "slo": {"p95_ms": o.p95_ms, "p99_ms": o.p99_ms, "errors": o.error_ratio},
                    },
                )
            )
        return out


# ---- error-burst -----------------------------------------------------------------

ERROR_HINTS = (
    ("40P01", "deadlocks: transactions lock rows in different orders; lock in one order"),
    ("40001", "serialization failures: hot rows under REPEATABLE READ/SERIALIZABLE; retry or"
     " reduce contention"),
    ("53300", "max_connections reached: lower concurrency or pool size, or add a pooler"),
    ("55P03", "lock_timeout / NOWAIT failures: something holds the lock too long"),
    ("57014", "statements canceled (statement_timeout): look for lock waits or slow queries"),
    ("pool timeout", "no pooled connection within the timeout: the client pool is too small for"
     " the workers, or operations hold one connection while asking for another"),
    ("timeout", "operations time out: the target is slow or saturated"),
    ("connection refused", "the target is down or not listening"),
    ("connection lost", "connections dropped: check restarts, failover, proxies"),
    ("http 5", "the service returns 5xx: check its logs and pods"),
    ("http 429", "the service is rate limiting (429)"),
)  # fmt: skip


def _hint(error_class: str) -> str:
    for prefix, hint in ERROR_HINTS:
        if error_class.startswith(prefix):
            return hint
    return "see the last error message"


@dataclass
class ErrorBurstOptions(Options):
    window_ticks: int = 3  # rates are judged over this many ticks
    min_count: int = 3  # errors of one class in the window
    min_ratio: float = 0.01  # and this share of the operations
    severe: tuple[str, ...] = (
        "40P01", "53300", "connection refused", "connection lost", "08", "57P0", "http 5",
    )  # fmt: skip
    severe_min_count: int = 2  # severe classes need only this count, whatever the ratio


class ErrorBurstDetector(Detector):
    """An error rate by class, naming the class."""

    kind = "error-burst"
    Options = ErrorBurstOptions
    raise_ticks = 1
    clear_ticks = 3
    opt: ErrorBurstOptions

    def __init__(self, options: ErrorBurstOptions | None = None) -> None:
        super().__init__(options)
        self._win: dict[str, deque[tuple[int, dict[str, int], float]]] = {}

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for s in tick.scenarios:
            win = self._win.get(s.name)
            if win is None:
                win = self._win[s.name] = deque(maxlen=max(1, o.window_ticks))
            win.append((s.completed, dict(s.errors), tick.interval))
            done = sum(c for c, _, _ in win)
            seconds = sum(i for _, _, i in win) or 1.0
            counts: dict[str, int] = {}
            for _, errs, _ in win:
                for cls, n in errs.items():
                    counts[cls] = counts.get(cls, 0) + n
            for cls, n in counts.items():
                if n <= 0:
                    continue
                ratio = n / done if done else 1.0
                severe = cls.startswith(o.severe)
                hot = (
                    n >= o.severe_min_count
                    if severe
                    else (n >= o.min_count and ratio >= o.min_ratio)
                )
                warm = n > 0 if severe else ratio >= o.min_ratio / 2
                if not (hot or warm):
                    continue
                out.append(
                    Finding(
                        subject=f"{s.name}:{cls}",
                        severity="critical" if severe or ratio >= 0.1 else "warning",
                        summary=(
                            f"{s.name}: {n} '{cls}' errors in {seconds:.0f} s "
                            f"({ratio * 100:.1f}% of operations, {n / seconds:.1f}/s): {_hint(cls)}"
                        ),
                        evidence={
                            "scenario": s.name,
                            "class": cls,
                            "count": n,
                            "window_s": round(seconds, 2),
                            "per_s": round(n / seconds, 2),
                            "ratio": round(ratio, 4),
                            "ops": done,
                            "last_error": s.last_error[:200],
                        },
                        sustain=not hot,
                    )
                )
        return out


# ---- capacity-knee ---------------------------------------------------------------


@dataclass
class CapacityKneeOptions(Options):
    settle_ticks: int = 2  # ticks after a step change left out of the step's figures
    min_ticks: int = 2  # settled ticks before a step is judged
    min_points: int = 2  # distinct concurrencies before judging (the USL fit needs 3)
    min_gain: float = 0.05  # throughput growth below this share counts as "stopped growing"
    latency_rise: float = 0.10  # p95 must have climbed by this share over the lower step


@dataclass
class _Point:
    n: float
    x: float
    p95: float
    target: int


class CapacityKneeDetector(Detector):
    """Throughput stops growing with concurrency while latency climbs; the
    steps' (concurrency, throughput) points are fitted to the USL."""

    kind = "capacity-knee"
    Options = CapacityKneeOptions
    raise_ticks = 1
    clear_ticks = 2
    opt: CapacityKneeOptions
    MAX_POINTS = 64

    def __init__(self, options: CapacityKneeOptions | None = None) -> None:
        super().__init__(options)
        self._points: dict[int, _Point] = {}  # by target concurrency: the latest visit
        self._step: int | None = None
        self._key: tuple[int, str, float | None] | None = None  # app.tick.step_key
        self._ticks = 0
        self._acc: list[tuple[float, float, float]] = []  # (n, x, p95) of settled ticks
        self._fit_key: tuple | None = None
        self._fit: UslFit | None = None
        self._last: Finding | None = None

    def _current(self) -> _Point | None:
        if len(self._acc) < self.opt.min_ticks or not self._step:
            return None
        k = len(self._acc)
        return _Point(
            n=sum(a[0] for a in self._acc) / k,
            x=sum(a[1] for a in self._acc) / k,
            p95=median([a[2] for a in self._acc]),
            target=self._step,
        )

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        if tick.mode != "workers":
            return ()
        if step_key(tick) != self._key:
            cur = self._current()
            if cur is not None:
                self._points[cur.target] = cur
                while len(self._points) > self.MAX_POINTS:
                    del self._points[next(iter(self._points))]
            self._step, self._ticks, self._acc = tick.target_concurrency, 0, []
            self._key = step_key(tick)
        if tick.paused or not tick.target_concurrency:
            return self._hold()
        self._ticks += 1
        if self._ticks <= o.settle_ticks:
            return self._hold()
        p95 = max((view.latency(s).p95 for s in tick.scenarios), default=0.0)
        self._acc.append((float(tick.concurrency), tick.ops_per_s, p95))
        if len(self._acc) > 600:
            self._acc = self._acc[-600:]
        cur = self._current()
        if cur is None:
            return self._hold()
        others = [p for t, p in self._points.items() if t != cur.target]
        if len({round(p.n) for p in others} | {round(cur.n)}) < o.min_points:
            return ()
        lower = [p for p in others if p.n < cur.n]
        if not lower:
            return ()
        best = max(lower, key=lambda p: p.x)
        below = max(lower, key=lambda p: p.n)
        key = (
            tuple(sorted((p.target, round(p.x)) for p in others)),
            cur.target,
            len(self._acc) > 5,
        )
        if key != self._fit_key:  # refit when a step is ready or ends, not every tick
            self._fit_key = key
            self._fit = fit_usl([(p.n, p.x) for p in [*others, cur]])
        fit = self._fit
        flat = cur.x <= best.x * (1.0 + o.min_gain)
        climbing = cur.p95 > below.p95 * (1.0 + o.latency_rise)
        past_peak = fit is not None and fit.kappa > 0 and cur.n > fit.n_peak
        if not (flat and (climbing or past_peak)):
            self._last = None
            return ()
        fitd = fit.as_dict() if fit is not None else None
        peak_txt = (
            f"; USL peak ~{fmt.rate(fitd['x_peak'])} ops/s at N~{fitd['n_peak']:.0f} "
            f"(sigma {fitd['sigma']:.3f}, kappa {fitd['kappa']:.5f})"
            if fitd and fitd["n_peak"] is not None
            else ""
        )
        retro = cur.x < best.x * (1.0 - o.min_gain)
        self._last = Finding(
            subject="load",
            severity="critical" if retro else "warning",
            summary=(
                f"past the knee: {fmt.rate(cur.x)} ops/s at {cur.target} workers vs "
                f"{fmt.rate(best.x)} at {best.target}, p95 {fmt.ms(cur.p95)} vs "
                f"{fmt.ms(below.p95)}{peak_txt}; "
                f"more workers only add latency, cap near {best.target}"
            ),
            evidence={
                "workers": cur.target,
                "concurrency": round(cur.n, 1),
                "ops_per_s": round(cur.x, 1),
                "p95_ms": round(cur.p95, 2),
                "best_workers": best.target,
                "best_ops_per_s": round(best.x, 1),
                "lower_step_p95_ms": round(below.p95, 2),
                "retrograde": retro,
                "usl": fitd,
                "points": [
                    {"n": round(p.n, 1), "x": round(p.x, 1), "p95_ms": round(p.p95, 2)}
                    for p in sorted([*others, cur], key=lambda p: p.n)
                ],
            },
        )
        return (self._last,)

    def _hold(self) -> tuple[Finding, ...]:
        """While a new step settles, a raised knee stays raised (no flapping
        across steps); the settled step then confirms or clears it."""
        return (_as_sustain(self._last),) if self._last is not None else ()


# ---- invariant -------------------------------------------------------------------


@dataclass
class InvariantOptions(Options):
    max_per_scenario: int = 20  # further violations are counted in one extra anomaly


class InvariantDetector(Detector):
    """Every string a scenario's verify() returns."""

    kind = "invariant"
    Options = InvariantOptions
    raise_ticks = 1
    clear_ticks = 1
    opt: InvariantOptions

    def __init__(self, options: InvariantOptions | None = None) -> None:
        super().__init__(options)
        self._violations: dict[str, tuple[str, ...]] = {}

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        # a scenario's latest verify() result holds until its next one (the
        # tick carries the results that completed in its window)
        for scenario, violations in tick.invariants.items():
            self._violations[scenario] = tuple(dict.fromkeys(str(v) for v in violations))
        out = []
        cap = max(1, self.opt.max_per_scenario)
        for scn, vs in self._violations.items():
            firsts = self._latest_truth(scn, vs)
            for v in vs[:cap]:
                ident = violation_identity(v)
                digest = hashlib.sha1(ident.encode()).hexdigest()[:10]
                first, checks = firsts.get(ident, (v, 1))
                ev: dict[str, Any] = {
                    "scenario": scn, "violation": v[:1000], "total": len(vs), "checks": checks,
                }  # fmt: skip
                if first != v:
                    ev["first"] = first[:1000]
                out.append(
                    Finding(
                        subject=scn,
                        ident=f"{scn}:{digest}",
                        severity="critical",
                        summary=v[:300],
                        evidence=ev,
                    )
                )
            if len(vs) > cap:
                out.append(
                    Finding(
                        subject=scn,
                        ident=f"{scn}:more",
                        severity="critical",
                        summary=f"and {len(vs) - cap} more invariant violations",
                        evidence={
                            "scenario": scn,
                            "more": len(vs) - cap,
                            "total": len(vs),
                            "violations": [v[:300] for v in vs[cap : cap + 200]],
                        },
                    )  # fmt: skip
                )
        return out

    def _latest_truth(self, scn: str, vs: tuple[str, ...]) -> dict[str, tuple[str, int]]:
        """identity -> (first text, checks that returned it) for a scenario. A
        new verify() result (a new tuple) counts once: an identity it no longer
        returns is forgotten (it cleared; a return is a new violation), the
        others keep their first text, so an anomaly stays raised across checks
        with the newest figures (see `violation_identity`)."""
        track: dict[str, tuple[tuple[str, ...] | None, dict[str, tuple[str, int]]]]
        track = self.__dict__.setdefault("_truth", {})
        last, firsts = track.get(scn, (None, {}))
        if vs is not last:
            now = {violation_identity(v) for v in vs}
            firsts = {i: f for i, f in firsts.items() if i in now}
            for v in vs:
                ident = violation_identity(v)
                first, n = firsts.get(ident, (v, 0))
                firsts[ident] = (first, n + 1)
            track[scn] = (vs, firsts)
        return firsts


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def violation_identity(v: str) -> str:
    """What a violation is about, without its figures: what names it (the text
    before the first ": ", e.g. "product 3") stays, numbers after it are
    masked. "product 3: oversold by 1645 units" and "... by 7395 units" are the
    same violation with new figures; "product 4: ..." is another."""
    head, sep, rest = v.partition(": ")
    if not sep:
        return _NUMBER.sub("#", v)
    return head + sep + _NUMBER.sub("#", rest)


# ---- generator-saturated ---------------------------------------------------------


@dataclass
class GeneratorSaturatedOptions(Options):
    loop_lag_ms: float = 100.0
    cpu_pct: float = 90.0
    # High CPU alone is what a closed loop against a fast local target always
    # shows; it distorts latency only once operations wait for the loop, so it
    # counts when the loop also lags this much (or the open model falls behind).
    cpu_loop_lag_ms: float = 20.0
    schedule_lag_ms: float = 100.0  # open model: schedule lag above this and growing
    window_ticks: int = 5


class GeneratorSaturatedDetector(Detector):
    """loadtop itself is the bottleneck (event-loop lag, CPU, schedule lag)."""

    kind = "generator-saturated"
    Options = GeneratorSaturatedOptions
    raise_ticks = 2
    clear_ticks = 3
    opt: GeneratorSaturatedOptions

    def __init__(self, options: GeneratorSaturatedOptions | None = None) -> None:
        super().__init__(options)
        self._lag: deque[tuple[float, float]] = deque(maxlen=5)

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        if self._lag.maxlen != max(2, o.window_ticks):
            self._lag = deque(self._lag, maxlen=max(2, o.window_ticks))
        g = tick.generator
        sched = max((s.lag_ms for s in tick.scenarios), default=0.0)
        self._lag.append((tick.elapsed, sched))
        reasons = []
        if g.loop_lag_ms >= o.loop_lag_ms:
            reasons.append(f"event-loop lag {fmt.ms(g.loop_lag_ms)}")
        growth = slope(list(self._lag)) if len(self._lag) >= 3 else 0.0
        behind = tick.mode == "rate" and sched >= o.schedule_lag_ms and growth > 0
        if behind:
            reasons.append(f"schedule lag {fmt.ms(sched)}, growing {fmt.ms(growth)}/s")
        if g.cpu_pct >= o.cpu_pct and (reasons or g.loop_lag_ms >= o.cpu_loop_lag_ms):
            reasons.append(f"CPU {g.cpu_pct:.0f}%")
        if not reasons:
            return ()
        return (
            Finding(
                subject="loadtop",
                severity="warning",
                summary=(
                    "loadtop itself is saturated (" + ", ".join(reasons) + "): latency and "
                    "throughput understate the target; lower the concurrency or split the load"
                    " over more loadtop processes"
                ),
                evidence={
                    "reasons": reasons,
                    "loop_lag_ms": round(g.loop_lag_ms, 1),
                    "cpu_pct": round(g.cpu_pct, 1),
                    "rss_mb": round(g.rss_mb, 1),
                    "schedule_lag_ms": round(sched, 1),
                    "schedule_lag_growth_ms_per_s": round(growth, 1)
                    if not math.isnan(growth)
                    else None,
                },
            ),
        )
