"""The session summary: data first, then Markdown.

A report is a pure function of the recording (header, ticks, end line): it can
be rebuilt after a crash, on another machine, a week later. Step figures are
computed by merging the step's histograms, never by averaging percentiles.

It streams: one pass over the ticks feeds accumulators (per step, per
scenario, the anomaly and probe sections), each tick's histograms decoded
once and let go, so an eight-hour recording is reported in bounded memory.
The live console's `e` export runs the same function over the session's
recording file, so it says what `loadtop report` would.

Long by design: the report's one streaming pass (the accumulators that merge
each step's histograms) and its Markdown; sections about anomalies and probes
live in app.detect and app.probes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from hdrh.histogram import HdrHistogram

from app import __version__, fmt
from app.detect import pg_report
from app.detect.pg_report import PgReportAcc
from app.detect.report import AnomalyReport, render_anomaly_section
from app.engine.errors import is_connection_error
from app.engine.thresholds import DEFAULT_SLO
from app.faults.recovery import FaultReport, fault_markdown
from app.probes.summary import ProbeReport
from app.session.recording import Recording
from app.tick import (
    Percentiles,
    Step,
    Tick,
    add_histogram,
    merge_histograms,
    new_histogram,
    step_key,
    window_hists,
)


class _Figures:
    """`_figures` accumulated one tick at a time: the merged histogram is the
    only large thing it holds, whatever the number of ticks."""

    def __init__(self, scenario: str | None = None, *, hist: bool = True) -> None:
        self.scenario = scenario
        self.seconds = 0.0
        self.ok = 0
        self.failed = 0
        self.hist: HdrHistogram | None = new_histogram() if hist else None
        self.errors: dict[str, int] = {}
        self.dropped = 0
        self.scheduled = 0
        self.max_lag = 0.0
        self.conc_max = 0

    def add(self, t: Tick, hists: Sequence[HdrHistogram] | None = None) -> None:
        self.seconds += t.interval
        self.conc_max = max(self.conc_max, t.concurrency)
        for k, s in enumerate(t.scenarios):
            if self.scenario is not None and s.name != self.scenario:
                continue
            self.ok += s.ok
            self.failed += s.failed
            if self.hist is not None:
                add_histogram(self.hist, hists[k] if hists is not None else s.hist)
            for e, v in s.errors.items():
                self.errors[e] = self.errors.get(e, 0) + v
            self.dropped += s.dropped
            self.scheduled += s.scheduled
            self.max_lag = max(self.max_lag, s.lag_ms)

    def result(self, seconds: float | None = None, conc_max: int | None = None) -> dict[str, Any]:
        seconds = self.seconds if seconds is None else seconds
        ok, failed = self.ok, self.failed
        done = ok + failed
        lat = Percentiles.of(self.hist if self.hist is not None else new_histogram(),
                             with_mean=True)  # fmt: skip
        return {
            "seconds": round(seconds, 2),
            "ok": ok,
            "failed": failed,
            "ops_per_s": round(done / seconds, 2) if seconds else 0.0,
            "error_pct": round(100.0 * failed / done, 4) if done else 0.0,
            "p50_ms": round(lat.p50, 3),
            "p95_ms": round(lat.p95, 3),
            "p99_ms": round(lat.p99, 3),
            "p999_ms": round(lat.p999, 3),
            "max_ms": round(lat.max, 3),
            "mean_ms": round(lat.mean, 3),
            "errors": dict(sorted(self.errors.items(), key=lambda kv: -kv[1])),
            "dropped": self.dropped,
            "scheduled": self.scheduled,
            "dropped_pct": round(100.0 * self.dropped / self.scheduled, 3)
            if self.scheduled
            else 0.0,
            "max_lag_ms": round(self.max_lag, 3),
            "concurrency_max": self.conc_max if conc_max is None else conc_max,
        }


def _figures(ticks: Iterable[Tick], scenario: str | None = None) -> dict[str, Any]:
    acc = _Figures(scenario)
    for t in ticks:
        acc.add(t)
    return acc.result()


class _StepAcc:
    """One step (a run of ticks with the same target concurrency, mode and
    rate) while it runs: its figures, one merged histogram per scenario (the
    step's and the scenarios' whole-run figures are merged from these when
    the step closes, so each window is added once), its ctx.count() sums."""

    def __init__(self, index: int, t: Tick) -> None:
        self.index = index
        self.key = step_key(t)  # app.tick.step_key: one step definition everywhere
        self.conc, self.mode, self.rate = t.target_concurrency, t.mode, t.rate
        self.first = self.last = t.index
        self.fig = _Figures(hist=False)
        self.hists: dict[str, HdrHistogram] = {}
        self.names: set[str] = set()
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, t: Tick, hists: Sequence[HdrHistogram] | None) -> None:
        self.last = t.index
        self.fig.add(t)
        for k, s in enumerate(t.scenarios):
            self.names.add(s.name)
            h = self.hists.get(s.name)
            if h is None:
                h = self.hists[s.name] = new_histogram()
            add_histogram(h, hists[k] if hists is not None else s.hist)
            for c, v in s.counters.items():
                self.counts[(s.name, c)] = self.counts.get((s.name, c), 0) + v

    def close(self) -> dict[str, Any]:
        conc, mode, rate = self.conc, self.mode, self.rate
        self.fig.hist = merge_histograms(self.hists.values())
        row = {
            "step": self.index + 1,
            "concurrency": conc,
            "mode": mode,
            "rate": rate,
            "from_tick": self.first,
            "to_tick": self.last,
            **self.fig.result(),
        }
        self.fig.hist = None  # the step is over: its histograms go (after the caller's merge)
        return row


class _Counters:
    """ctx.count() per scenario and name: the run's total and rate, and the rate
    in each step (None where the step never ran that scenario)."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, int]] = {}
        self.steps: list[tuple[float, set[str], dict[tuple[str, str], int]]] = []

    def add(self, t: Tick) -> None:
        for s in t.scenarios:
            for k, v in s.counters.items():
                c = self.totals.setdefault(s.name, {})
                c[k] = c.get(k, 0) + v

    def close_step(self, st: _StepAcc) -> None:
        self.steps.append((st.fig.seconds, st.names, st.counts))

    def result(self, seconds: float) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for name, counters in self.totals.items():
            for k, total in counters.items():
                c = out.setdefault(name, {}).setdefault(k, {"total": total})
                c["per_s"] = round(total / seconds, 3) if seconds else 0.0
                c["by_step"] = [
                    round(counts.get((name, k), 0) / secs, 3) if name in names and secs else None
                    for secs, names, counts in self.steps
                ]
        return out


def counter_figures(ticks: Iterable[Tick], steps: Sequence[Step]) -> dict[str, Any]:
    """ctx.count() per scenario and name: the run's total and rate, and the rate
    in each step (None where the step never ran that scenario)."""
    acc = _Counters()
    seconds = 0.0
    for t in ticks:
        acc.add(t)
        seconds += t.interval
    for i, st in enumerate(steps):
        sa = _StepAcc(i, st.ticks[0])
        for t in st.ticks:
            sa.add(t, None)
        acc.close_step(sa)
    return acc.result(seconds)


class _Outages:
    """Spans of ticks in which operations failed for lack of a connection."""

    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []
        self.cur: dict[str, Any] | None = None

    def add(self, t: Tick) -> None:
        cur = self.cur
        conn_errs = {k: v for k, v in t.errors().items() if is_connection_error(k)}
        if conn_errs:
            if cur is None:
                cur = self.cur = {"from_tick": t.index, "from_s": round(t.elapsed - t.interval, 1),
                                  "errors": {}, "ok_during": 0}  # fmt: skip
                self.out.append(cur)
            cur["to_tick"] = t.index
            cur["to_s"] = round(t.elapsed, 1)
            cur["ok_during"] += t.ok
            for k, v in conn_errs.items():
                cur["errors"][k] = cur["errors"].get(k, 0) + v
        elif cur is not None and t.ok == 0 and t.concurrency > 0:
            # workers backing off between reconnect attempts: still the same outage
            cur["to_tick"] = t.index
            cur["to_s"] = round(t.elapsed, 1)
        else:
            self.cur = None


def outage_windows(ticks: Iterable[Tick]) -> list[dict[str, Any]]:
    """Spans of ticks in which operations failed for lack of a connection."""
    acc = _Outages()
    for t in ticks:
        acc.add(t)
    return acc.out


def slo_verdict(fig: dict[str, Any], slo: dict[str, float] | None = None) -> dict[str, Any]:
    slo = {**DEFAULT_SLO, **(slo or {})}
    checks = {
        f"p95 < {slo['p95_ms']:g} ms": fig["p95_ms"] < slo["p95_ms"],
        f"p99 < {slo['p99_ms']:g} ms": fig["p99_ms"] < slo["p99_ms"],
        f"errors < {slo['error_pct']:g}%": fig["error_pct"] < slo["error_pct"],
    }
    if fig.get("scheduled"):  # a fixed-rate run: was the load asked for delivered?
        checks[f"dropped < {slo['dropped_pct']:g}%"] = fig.get("dropped_pct", 0.0) < slo[
            "dropped_pct"
        ] or not fig.get("dropped")
    return {"slo": slo, "checks": checks, "met": all(checks.values())}


class _Section:
    """A report section fed tick by tick; a section that fails never costs
    the whole report (it says it failed, the rest goes on)."""

    def __init__(self, factory: Callable[..., Any], **kwargs: Any) -> None:
        self.acc: Any = None
        self.error: str | None = None
        try:
            self.acc = factory(**kwargs)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"

    def add(self, t: Tick, hists: Sequence[HdrHistogram]) -> None:
        if self.acc is None or self.error:
            return
        try:
            self.acc.add(t, hists)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"

    def result(self) -> Any:
        if self.error:
            return {"error": self.error}
        if self.acc is None:
            return None
        try:
            return self.acc.result()
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}


# ---- the verdict ---------------------------------------------------------------
# One function judges a run from its summary: the report's headline (Markdown
# and JSON), the closing lines and the process's exit code all come from it.

# anomaly kinds whose presence at any moment fails a run (and a watch); other
# branches add theirs (queue-stuck, lock-takeover, consumers-gone, ...)
FAIL_ON_ANOMALY_KINDS: set[str] = {"queue-stuck", "lock-takeover", "consumers-gone"}
# a watch loads nothing, so no SLO or capacity judges it: the systems do, and
# an anomaly of one of these severities fails it
WATCH_FAILS_ON_SEVERITY: set[str] = {"critical"}
# ... except these, which judge load (a watch applies none)
LOAD_ONLY_KINDS: set[str] = {"slo-breach", "capacity-knee", "generator-saturated"}

# more rules, for a run and a watch alike: each reads the summary and returns
# the reasons it fails the run ([] when it does not), e.g. server-side errors
VERDICT_CHECKS: list[Callable[[dict[str, Any]], list[str]]] = []


def _server_side(s: dict[str, Any]) -> list[str]:
    """Issue 12: the target database's own errors (deadlocks, a rollback ratio,
    recovery conflicts) fail a run and a watch alike."""
    bad = pg_report.server_errors_bad(s.get("server_errors"), s.get("anomaly_kinds") or ())
    return [f"server side: {', '.join(bad)}"] if bad else []


VERDICT_CHECKS.append(_server_side)

EXIT_CODES = {"PASS": 0, "FAIL": 1, "INCOMPLETE": 1, "ERROR": 2}


def _reasons_run(s: dict[str, Any]) -> list[str]:
    """Why a run (with load) fails, most telling first; [] when it passes."""
    out: list[str] = []
    t = s.get("total") or {}
    done = t.get("ok", 0) + t.get("failed", 0)
    if s.get("scenarios") and s.get("ticks") and not t.get("ok"):
        if done:
            top = next(iter(t.get("errors") or {}), "errors")
            out.append(f"no operation succeeded ({t['failed']:,} failed, mostly {top})")
        else:
            out.append("no operation ran")
    for name, vs in (s.get("invariants") or {}).items():
        more = f" (and {len(vs) - 1} more)" if len(vs) > 1 else ""
        out.append(f"invariant violated: {name}: {vs[0]}{more}" if vs else f"invariant: {name}")
    tr = (s.get("thresholds") or {}).get("tripped")
    if tr:
        at = f" at {tr['elapsed_s']} s" if tr.get("elapsed_s") is not None else ""
        out.append(f"--abort-on {tr.get('expr')} tripped{at}")
    slo = s.get("slo") or {}
    if done and slo.get("checks") and not slo.get("met"):
        seen = {"p95": f"{t.get('p95_ms', 0):.4g} ms", "p99": f"{t.get('p99_ms', 0):.4g} ms",
                "errors": f"{t.get('error_pct', 0):.3g}%",
                "dropped": f"{t.get('dropped_pct', 0):.3g}% of {t.get('scheduled', 0):,} intended"
                           " starts, no free worker: raise -c or lower --rate"}  # fmt: skip
        broken = [f"{k} (was {seen.get(k.split()[0], '?')})"
                  for k, ok in slo["checks"].items() if not ok]  # fmt: skip
        out.append(f"SLO broken: {', '.join(broken)}")
    return out


def _reasons_common(s: dict[str, Any]) -> list[str]:
    """Why a run or a watch fails whatever its load: a check that could not
    run, what was left behind, an anomaly that never passes."""
    out: list[str] = []
    for name, why in (s.get("unverified") or {}).items():
        out.append(f"final verify() of {name} could not run ({why})")
    left = s.get("leftovers") or []
    if left:
        out.append("cleanup failed: left " + "; ".join(x["what"] for x in left)
                   + " (commands to remove it in the report)")  # fmt: skip
    kinds = set(s.get("anomaly_kinds") or ())
    failing = sorted(k for k in kinds if k in FAIL_ON_ANOMALY_KINDS)
    if failing:
        out.append(f"raised: {', '.join(failing)}")
    for check in VERDICT_CHECKS:
        try:
            out += check(s)
        except Exception as e:  # a check that breaks fails closed, and says so
            out.append(f"verdict check {getattr(check, '__name__', check)} failed: {e}")
    return out


def verdict(s: dict[str, Any]) -> dict[str, Any]:
    """PASS (exit 0): the run is complete and every threshold, SLO and
    invariant held, cleanup removed everything and no failing anomaly was
    raised. FAIL (1): any of those broke, or a final verify() could not run.
    INCOMPLETE (1): the recording has no end record (a killed run), or the run
    ended in an error. ERROR (2): the run never started on bad input. A watch
    is judged by the systems it watched (anomalies), never by an SLO.
    Returns {verdict, exit_code, why (one line), reasons}."""
    end_error = s.get("error")
    watching = (s.get("load") or {}).get("mode") == "watch"
    reasons = [] if watching else _reasons_run(s)
    reasons += _reasons_common(s)
    if watching:
        severity = s.get("anomaly_severity") or {}
        bad = sorted(k for k, sev in severity.items() if sev in WATCH_FAILS_ON_SEVERITY
                     and k not in FAIL_ON_ANOMALY_KINDS and k not in LOAD_ONLY_KINDS)  # fmt: skip
        if bad:
            reasons.append(f"critical: {', '.join(bad)}")
    if end_error and s.get("exit_code") == 2:
        name, why = "ERROR", f"the run did not start: {end_error}"
    elif not s.get("complete"):
        name = "INCOMPLETE"
        why = ("the recording has no end record (a killed run): judged up to tick"
               f" {max(s.get('ticks', 0) - 1, 0)} only")  # fmt: skip
        if reasons:
            why += "; " + "; ".join(reasons)
    elif end_error:
        name, why = "INCOMPLETE", f"the run ended in an error: {end_error}"
    elif reasons:
        name = "FAIL"
        why = "; ".join(reasons[:3]) + (
            f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""
        )
    else:
        name = "PASS"
        if watching:
            n = len(s.get("anomaly_kinds") or {})
            why = f"a watch: nothing failing raised ({n} anomaly kinds seen)" if n else \
                "a watch: no anomaly raised"  # fmt: skip
        else:
            why = "every threshold, SLO and invariant held; cleanup complete"
    return {"verdict": name, "exit_code": EXIT_CODES[name], "why": why, "reasons": reasons}


def verdict_line(v: dict[str, Any]) -> str:
    """The one closing line: `FAIL: SLO broken: ...`."""
    return f"{v['verdict']}: {v['why']}"


class _Severity:
    """Every anomaly kind raised during the run, with its worst severity (what
    a watch's verdict reads), one tick at a time."""

    RANK = {"info": 0, "warning": 1, "critical": 2}

    def __init__(self) -> None:
        self.worst: dict[str, str] = {}

    def add(self, t: Tick) -> None:
        for a in (*t.anomalies, *t.cleared):
            if self.RANK.get(a.severity, 0) >= self.RANK.get(self.worst.get(a.kind, ""), -1):
                self.worst[a.kind] = a.severity


class TickSection(Protocol):
    """A report section fed in the report's one pass (the chart): `add` sees
    each tick with its windows' histograms, decoded once for the whole pass."""

    def add(self, tick: Tick, hists: Sequence[HdrHistogram]) -> None: ...

    def markdown(self) -> str: ...


def _report_pass(
    rec: Recording, *, probes: bool = True, also: Sequence[TickSection] = ()
) -> tuple[dict[str, Any], Any]:
    """One streaming pass over the recording's ticks: the summary, and the
    probe section's Markdown. Each tick's histograms are decoded once, merged
    into the step, scenario and capacity accumulators, and let go; nothing
    per tick is kept but control events (and a tick count). `also`: sections
    fed in the same pass."""
    h = rec.header
    end = rec.end or {}
    total = _Figures(hist=False)
    per_name: dict[str, _Figures] = {}
    steps: list[dict[str, Any]] = []
    step: _StepAcc | None = None
    counters = _Counters()
    outages = _Outages()
    invariants: dict[str, list[str]] = dict(end.get("invariants") or {})
    pg = PgReportAcc()  # issue 12: blind probes, server-side errors, latest invariants
    severity = _Severity()  # issue 13: what a watch's verdict reads
    tripped = end.get("threshold_tripped")
    find_trip = tripped is None
    events_raw: list[Any] = []
    first: Tick | None = None
    last: Tick | None = None
    n = 0
    anomalies = _Section(AnomalyReport, slo=h.get("slo"))
    probe_sec = _Section(ProbeReport) if probes else None
    faults = FaultReport()
    for t in rec.ticks:
        hists = window_hists(t)
        faults.add(t)
        n += 1
        if first is None:
            first = t
        last = t
        total.add(t)
        for s in t.scenarios:
            fig = per_name.get(s.name)
            if fig is None:
                fig = per_name[s.name] = _Figures(s.name)
            fig.ok += s.ok
            fig.failed += s.failed
            for e, v in s.errors.items():
                fig.errors[e] = fig.errors.get(e, 0) + v
            fig.dropped += s.dropped
            fig.max_lag = max(fig.max_lag, s.lag_ms)
        key = step_key(t)
        if step is None or step.key != key:
            if step is not None:
                steps.append(step.close())
                counters.close_step(step)
                _merge_into(per_name, step)
            step = _StepAcc(len(steps), t)
        step.add(t, hists)
        counters.add(t)
        outages.add(t)
        pg.add(t)
        severity.add(t)
        if find_trip and tripped is None:
            hit = next((s for s in t.thresholds if s.tripped), None)
            if hit is not None:
                tripped = {"expr": hit.expr, "tick": t.index, "elapsed_s": round(t.elapsed, 1),
                           "value": hit.value}  # fmt: skip
        events_raw.extend(t.events)
        anomalies.add(t, hists)
        if probe_sec is not None:
            probe_sec.add(t, hists)
        for sec in also:
            sec.add(t, hists)
        del hists
    if step is not None:
        steps.append(step.close())
        counters.close_step(step)
        _merge_into(per_name, step)
    # the anomalies carry each violation's latest figures (and the first's); an
    # end record marked `invariants_final` already holds the final verify()'s,
    # which ran after the last tick (issue 12.6)
    if not end.get("invariants_final"):
        invariants.update(pg.invariant_data())
    started = h.get("started") or (first.t - first.elapsed if first else None)
    ended = end.get("ended") or (last.t if last else started)
    names = [s["name"] for s in h.get("scenarios", [])] or sorted(per_name)
    # all scenarios together: the exact merge of the per-scenario merges
    total.hist = merge_histograms(f.hist for f in per_name.values())
    total_fig = total.result()
    per_scenario = {
        name: per_name.get(name, _Figures(name)).result(total.seconds, total.conc_max)
        for name in names
    }
    events = [
        {
            "t": e.t,
            "elapsed_s": round(e.t - started, 1) if started else None,
            "kind": e.kind,
            "source": e.source,
            "before": e.before,
            "after": e.after,
            "note": e.note,
        }  # fmt: skip
        for e in events_raw
    ]
    summary: dict[str, Any] = {
        "loadtop_recording_version": h.get("version"),
        # which loadtop wrote the recording (older recordings: only in "versions")
        "recorded_by": h.get("loadtop_version") or (h.get("versions") or {}).get("loadtop"),
        "reported_by": __version__,
        "probe_blind": pg.blind_data(),
        "server_errors": pg.server_error_data(),
        "anomaly_kinds": sorted(pg.kinds),
        "run_id": h.get("run_id"),
        "started": started,
        "ended": ended,
        "duration_s": round((ended or 0) - (started or 0), 1) if started else 0.0,
        "complete": rec.complete,
        "truncated": rec.truncated,
        "stop_reason": end.get("reason", "killed (no end record)"),
        "exit_code": end.get("exit_code"),
        "targets": h.get("targets", {}),
        "scenarios": names,
        "params": h.get("params", {}),
        "load": h.get("load", {}),
        "ticks": n,
        "total": total_fig,
        "per_scenario": per_scenario,
        "steps": steps,
        "counters": counters.result(total.seconds),
        "outages": outages.out,
        "never_connected": end.get("never_connected", {}),
        "invariants": invariants,
        "thresholds": {"abort_on": h.get("thresholds", []), "tripped": tripped},
        "slo": slo_verdict(total_fig, h.get("slo")),
        "events": events,
        # what the verdict reads besides the figures (see verdict())
        "anomaly_severity": severity.worst,
        "unverified": dict(end.get("unverified") or {}),
        "leftovers": list(end.get("leftovers") or []),
        "error": end.get("error"),
    }
    summary["faults"] = faults.result()
    summary["anomalies"] = anomalies.result()
    summary["verdict"] = verdict(summary)
    return summary, probe_sec.result() if probe_sec is not None else None


def _merge_into(per_name: dict[str, _Figures], step: _StepAcc) -> None:
    for name, h in step.hists.items():
        fig = per_name[name]
        assert fig.hist is not None
        add_histogram(fig.hist, h)
    step.hists = {}


def build_summary(rec: Recording) -> dict[str, Any]:
    return _report_pass(rec, probes=False)[0]


def _section_md(out: Any, fn: str, render: Any = None) -> str:
    if isinstance(out, dict) and "error" in out:
        return f"_({fn} failed: {out['error']})_"
    if render is not None and out is not None:
        try:
            out = render(out)
        except Exception as e:
            return f"_({fn} failed: {type(e).__name__}: {e})_"
    if isinstance(out, str):
        return out.strip()
    return ""


def _ts(t: float | None) -> str:
    if not t:
        return "?"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(
    rec: Recording, summary: dict[str, Any] | None = None, *, chart: TickSection | None = None
) -> str:
    """The Markdown report: one streaming pass over the ticks (two when a
    summary is given: the probe section still needs its own). `chart`: the
    chart section (app.session.export's: the SVG link and the text chart),
    fed in the same pass and placed after the headline."""
    also = (chart,) if chart is not None else ()
    if summary is None:
        s, probe_md = _report_pass(rec, also=also)
    else:
        s = summary
        probe_md = _report_pass(rec, also=also)[1]
    chart_md = chart.markdown() if chart is not None else ""
    L: list[str] = []
    v = s.get("verdict") or verdict(s)
    # a stuck queue, a lock taken over after expiry or consumers gone is never a pass
    failing = sorted(set(s.get("anomaly_kinds") or ()) & FAIL_ON_ANOMALY_KINDS)
    L.append(f"# loadtop report — {', '.join(s['scenarios']) or 'no scenario'}")
    L.append("")
    state = "" if s["complete"] else " · **recording ends without an end record (killed run)**"
    L.append(
        f"**{v['verdict']}** · {_ts(s['started'])} · {fmt.seconds(s['duration_s'])}"
        f" · {s['ticks']} ticks"
        f" · stopped: {s['stop_reason']}{state}"
    )
    if failing:
        L.append("")
        L.append(f"Raised during the run: {', '.join(failing)} (see Anomalies).")
    recorded = s.get("recorded_by") or "an unknown version"
    L.append(f"Recorded by loadtop {recorded} · reported by loadtop {s['reported_by']}")
    L.append("")
    L.append(f"Verdict: {v['why']}.")
    L.append("")
    t = s["total"]
    L += pg_report.headline_notes(s, L)
    L.append(
        f"{t['ok'] + t['failed']:,} operations, {fmt.rate(t['ops_per_s'])} ops/s overall"
        + (f" ({fmt.rate(t['ok'] / t['seconds'])} ok/s)," if t["failed"] and t["seconds"] else ",")
        + f" p95 {fmt.ms(t['p95_ms'])}, p99 {fmt.ms(t['p99_ms'])}, errors {t['error_pct']:.3g}%"
    )
    L.append("")
    if chart_md:
        L.append(chart_md)
        L.append("")
    L.append("## Run")
    L.append("")
    rows = [[k, f"`{v}`"] for k, v in s["targets"].items()]
    rows.append(["scenarios", ", ".join(s["scenarios"])])
    for k, v in s["load"].items():
        if v not in (None, [], ""):
            rows.append([k, f"`{v}`"])
    if s["params"]:
        rows.append(["params", ", ".join(f"`{k}={v}`" for k, v in s["params"].items())])
    L += _table(["", ""], rows, "ll")
    L.append("")
    L.append("## Steps")
    L.append("")
    L.append("Percentiles merge each step's per-tick HdrHistograms (1 µs–60 s, 3 digits).")
    L.append("")
    rows = []
    for st in s["steps"]:
        load = f"{fmt.rate(st['rate'])}/s" if st["mode"] == "rate" and st["rate"] else str(
            st["concurrency"])  # fmt: skip
        rows.append([
            str(st["step"]), load, fmt.seconds(st["seconds"]), fmt.rate(st["ops_per_s"]),
            fmt.ms(st["p50_ms"]), fmt.ms(st["p95_ms"]), fmt.ms(st["p99_ms"]), fmt.ms(st["p999_ms"]),
            fmt.ms(st["max_ms"]), f"{st['error_pct']:.3g}%",
        ])  # fmt: skip
    L += _table(
        ["step", "load", "time", "ops/s", "p50", "p95", "p99", "p99.9", "max", "errors"], rows
    )
    L.append("")
    if len(s["per_scenario"]) > 1:
        L.append("## Scenarios")
        L.append("")
        rows = [
            [
                name,
                f"{f['ok'] + f['failed']:,}",
                fmt.rate(f["ops_per_s"]),
                fmt.ms(f["p50_ms"]),
                fmt.ms(f["p95_ms"]),
                fmt.ms(f["p99_ms"]),
                f"{f['error_pct']:.3g}%",
            ]  # fmt: skip
            for name, f in s["per_scenario"].items()
        ]
        L += _table(["scenario", "ops", "ops/s", "p50", "p95", "p99", "errors"], rows)
        L.append("")
    if s["counters"]:
        L.append("## Counters")
        L.append("")
        L.append("What scenarios counted with `ctx.count()`, per second in each step.")
        L.append("")
        n_steps = len(s["steps"])
        shown = min(n_steps, 8)  # wider tables stop reading well in a terminal
        rows = []
        for name, counters in s["counters"].items():
            for k, c in counters.items():
                by = [fmt.rate(v, none="–") for v in c["by_step"][:shown]]
                rows.append([name, f"`{k}`", f"{c['total']:,}", fmt.rate(c["per_s"]), *by])
        heads = ["scenario", "counter", "total", "/s"] + [f"step {i + 1}" for i in range(shown)]
        L += _table(heads, rows, "ll" + "r" * (len(heads) - 2))
        if n_steps > shown:
            L.append("")
            L.append(f"({n_steps - shown} later steps in `loadtop report --json`.)")
        L.append("")
    L.append("## Errors")
    L.append("")
    if t["errors"]:
        rows = [[f"`{k}`", f"{v:,}", f"{100 * v / max(t['ok'] + t['failed'], 1):.3g}%"]
                for k, v in t["errors"].items()]  # fmt: skip
        L += _table(["class", "count", "of ops"], rows)
    else:
        L.append("None from loadtop's own operations.")
    if t["dropped"]:  # said with or without errors: drops are not errors
        L.append("")
        L.append(f"Open model: {t['dropped']:,} of {t.get('scheduled', 0):,} intended starts"
                 f" dropped ({t.get('dropped_pct', 0):.3g}%, no free worker), worst schedule"
                 f" lag {fmt.ms(t['max_lag_ms'])}.")  # fmt: skip
    L += pg_report.server_errors_md(s.get("server_errors"))
    if s["outages"]:
        L.append("")
        L.append("Connection outages (operations failing for lack of a connection):")
        L.append("")
        for o in s["outages"]:
            errs = ", ".join(f"{k} ×{v}" for k, v in o["errors"].items())
            L.append(f"- {fmt.seconds(o['from_s'])} → {fmt.seconds(o['to_s'])}"
                     f" (ticks {o['from_tick']}–{o['to_tick']}): {errs}")  # fmt: skip
    if s["never_connected"]:
        L.append("")
        for name, n in s["never_connected"].items():
            L.append(f"- `{name}`: {n} worker(s) never got a connection")
    L.append("")
    if s.get("faults"):
        L += fault_markdown(s["faults"])
        L.append("")
    L.append("## Invariants")
    L.append("")
    if s["invariants"]:
        for name, vs in s["invariants"].items():
            for v in pg_report.first_and_more(vs, 20):
                L.append(f"- **{name}**: {v}")
    if s.get("unverified"):
        for name, why in s["unverified"].items():
            L.append(f"- **{name}**: the final `verify()` could not run ({why}): not verified")
    elif not s["invariants"]:
        L.append("Every scenario's `verify()` held.")
    L.append("")
    L += cleanup_md(s.get("leftovers") or [])
    L.append("## Thresholds")
    L.append("")
    slo = s["slo"]
    L.append("SLO verdict over the whole run: " + ", ".join(
        f"{k} {'✅' if ok else '❌'}" for k, ok in slo["checks"].items()))  # fmt: skip
    L.append("")
    if s["thresholds"]["abort_on"]:
        tr = s["thresholds"]["tripped"]
        for expr in s["thresholds"]["abort_on"]:
            if tr and tr.get("expr") == expr:
                L.append(f"- `--abort-on {expr}`: **tripped** at {fmt.seconds(tr.get('elapsed_s'), '?')}"
                         f" (tick {tr.get('tick', '?')}), the load was stopped")  # fmt: skip
            else:
                L.append(f"- `--abort-on {expr}`: held")
        L.append("")
    for section in (
        _section_md(s.get("anomalies"), "anomaly_report_section", render_anomaly_section),
        _section_md(probe_md, "probe_report_section"),
    ):
        if section:
            L.append(section)
            L.append("")
    L.append("## Timeline")
    L.append("")
    if s["events"]:
        rows = []
        for e, n, last in collapse_events(s["events"])[:500]:
            change = ""
            if e["before"] is not None or e["after"] is not None:
                change = f"{fmt.num(e['before'], none='–')} → {fmt.num(e['after'], none='–')}"
            when = fmt.seconds(e["elapsed_s"], none="?")
            note = e["note"] or ""
            if n > 1:  # one row for a run of identical events (issue 13)
                note = (f"{note} ×{n}" if note else f"×{n}") + (
                    f", first at {when}, last at {fmt.seconds(last, none='?')}"
                )
            rows.append([when, e["kind"], e["source"], change, note])
        L += _table(["at", "event", "by", "change", "note"], rows, "rllll")
    else:
        L.append("No control events.")
    L.append("")
    return pg_report.watch_sections("\n".join(L), s)


def collapse_events(
    events: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], int, float | None]]:
    """Consecutive identical control events (same kind, source, change and
    note, e.g. "capped at --max-concurrency" at every key press) as one:
    (the first, how many, the last's elapsed_s)."""
    out: list[tuple[dict[str, Any], int, float | None]] = []
    ident = ("kind", "source", "before", "after", "note")
    for e in events:
        if out and all(out[-1][0][k] == e[k] for k in ident):
            first, n, _ = out[-1]
            out[-1] = (first, n + 1, e["elapsed_s"])
        else:
            out.append((e, 1, e["elapsed_s"]))
    return out


def cleanup_md(leftovers: list[dict[str, Any]]) -> list[str]:
    """The `## Cleanup` section: only when something was left on a target."""
    if not leftovers:
        return []
    L = ["## Cleanup", "", "**Cleanup failed.** What this run left, and how to remove it:", ""]
    for x in leftovers:
        L.append(f"- {x['target']}: {x['what']} ({x.get('error') or 'not removed'})")
        L.append("")
        L.append("  ```")
        L += [f"  {c}" for c in x.get("commands", [])]
        L.append("  ```")
    L.append("")
    return L


def render_json(rec: Recording) -> str:
    return json.dumps(build_summary(rec), indent=2, default=str)
