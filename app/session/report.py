"""The session summary: data first, then Markdown.

A report is a pure function of the recording (header, ticks, end line): it can
be rebuilt after a crash, on another machine, a week later. Step figures are
computed by merging the step's histograms, never by averaging percentiles.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app import __version__
from app.engine.errors import is_connection_error
from app.engine.thresholds import DEFAULT_SLO
from app.session.recording import Recording
from app.tick import Percentiles, Tick, merge_histograms


@dataclass
class Step:
    index: int
    concurrency: int
    mode: str
    rate: float | None
    first: int  # tick index
    last: int
    ticks: list[Tick]

    @property
    def seconds(self) -> float:
        return sum(t.interval for t in self.ticks)


def split_steps(ticks: Sequence[Tick]) -> list[Step]:
    """Runs of consecutive ticks with the same target concurrency (and rate)."""
    steps: list[Step] = []
    for t in ticks:
        key = (t.target_concurrency, t.mode, t.rate)
        if steps and (steps[-1].concurrency, steps[-1].mode, steps[-1].rate) == key:
            steps[-1].ticks.append(t)
            steps[-1].last = t.index
        else:
            steps.append(
                Step(len(steps), t.target_concurrency, t.mode, t.rate, t.index, t.index, [t])
            )
    return steps


def _figures(ticks: Sequence[Tick], scenario: str | None = None) -> dict[str, Any]:
    wins = [s for t in ticks for s in t.scenarios if scenario is None or s.name == scenario]
    seconds = sum(t.interval for t in ticks)
    ok = sum(s.ok for s in wins)
    failed = sum(s.failed for s in wins)
    done = ok + failed
    lat = Percentiles.of(merge_histograms(s.hist for s in wins), with_mean=True)
    errors: dict[str, int] = {}
    for s in wins:
        for k, v in s.errors.items():
            errors[k] = errors.get(k, 0) + v
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
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "dropped": sum(s.dropped for s in wins),
        "max_lag_ms": round(max((s.lag_ms for s in wins), default=0.0), 3),
        "concurrency_max": max((t.concurrency for t in ticks), default=0),
    }


def counter_figures(ticks: Sequence[Tick], steps: Sequence[Step]) -> dict[str, Any]:
    """ctx.count() per scenario and name: the run's total and rate, and the rate
    in each step (None where the step never ran that scenario)."""
    out: dict[str, dict[str, Any]] = {}
    seconds = sum(t.interval for t in ticks)
    for t in ticks:
        for s in t.scenarios:
            for k, v in s.counters.items():
                c = out.setdefault(s.name, {}).setdefault(k, {"total": 0})
                c["total"] += v
    for name, counters in out.items():
        for k, c in counters.items():
            c["per_s"] = round(c["total"] / seconds, 3) if seconds else 0.0
            by_step = []
            for st in steps:
                wins = [s for t in st.ticks for s in t.scenarios if s.name == name]
                by_step.append(
                    round(sum(s.counters.get(k, 0) for s in wins) / st.seconds, 3)
                    if wins and st.seconds
                    else None
                )
            c["by_step"] = by_step
    return out


def outage_windows(ticks: Sequence[Tick]) -> list[dict[str, Any]]:
    """Spans of ticks in which operations failed for lack of a connection."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for t in ticks:
        conn_errs = {k: v for k, v in t.errors().items() if is_connection_error(k)}
        if conn_errs:
            if cur is None:
                cur = {"from_tick": t.index, "from_s": round(t.elapsed - t.interval, 1),
                       "errors": {}, "ok_during": 0}  # fmt: skip
                out.append(cur)
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
            cur = None
    return out


def slo_verdict(fig: dict[str, Any], slo: dict[str, float] | None = None) -> dict[str, Any]:
    slo = {**DEFAULT_SLO, **(slo or {})}
    checks = {
        f"p95 < {slo['p95_ms']:g} ms": fig["p95_ms"] < slo["p95_ms"],
        f"p99 < {slo['p99_ms']:g} ms": fig["p99_ms"] < slo["p99_ms"],
        f"errors < {slo['error_pct']:g}%": fig["error_pct"] < slo["error_pct"],
    }
    return {"slo": slo, "checks": checks, "met": all(checks.values())}


def build_summary(rec: Recording) -> dict[str, Any]:
    h = rec.header
    ticks = rec.ticks
    end = rec.end or {}
    steps = split_steps(ticks)
    started = h.get("started") or (ticks[0].t - ticks[0].elapsed if ticks else None)
    ended = end.get("ended") or (ticks[-1].t if ticks else started)
    scenarios = [s["name"] for s in h.get("scenarios", [])] or sorted(
        {s.name for t in ticks for s in t.scenarios}
    )
    total = _figures(ticks)
    invariants: dict[str, list[str]] = dict(end.get("invariants") or {})
    # the anomalies carry each violation's latest figures (and the first's)
    latest = _section_data("app.detect.pg_report", "invariant_data", ticks)
    if isinstance(latest, dict) and "error" not in latest:
        invariants.update(latest)
    # issue 12: what the probes could not see; the target database's own error counts
    probe_blind = _section_data("app.detect.pg_report", "blind_data", ticks) or []
    server_errors = _section_data("app.detect.pg_report", "server_error_data", ticks)
    thresholds = h.get("thresholds", [])
    tripped = end.get("threshold_tripped")
    if tripped is None:
        for t in ticks:
            hit = next((s for s in t.thresholds if s.tripped), None)
            if hit is not None:
                tripped = {"expr": hit.expr, "tick": t.index, "elapsed_s": round(t.elapsed, 1),
                           "value": hit.value}  # fmt: skip
                break
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
        for t in ticks
        for e in t.events
    ]
    summary: dict[str, Any] = {
        "loadtop_recording_version": h.get("version"),
        # which loadtop wrote the recording (older recordings: only in "versions")
        "recorded_by": h.get("loadtop_version") or (h.get("versions") or {}).get("loadtop"),
        "reported_by": __version__,
        "probe_blind": probe_blind,
        "server_errors": server_errors,
        "run_id": h.get("run_id"),
        "started": started,
        "ended": ended,
        "duration_s": round((ended or 0) - (started or 0), 1) if started else 0.0,
        "complete": rec.complete,
        "truncated": rec.truncated,
        "stop_reason": end.get("reason", "killed (no end record)"),
        "exit_code": end.get("exit_code"),
        "targets": h.get("targets", {}),
        "scenarios": scenarios,
        "params": h.get("params", {}),
        "load": h.get("load", {}),
        "ticks": len(ticks),
        "total": total,
        "per_scenario": {name: _figures(ticks, name) for name in scenarios},
        "steps": [
            {
                "step": s.index + 1,
                "concurrency": s.concurrency,
                "mode": s.mode,
                "rate": s.rate,
                "from_tick": s.first,
                "to_tick": s.last,
                **_figures(s.ticks),
            }  # fmt: skip
            for s in steps
        ],
        "counters": counter_figures(ticks, steps),
        "outages": outage_windows(ticks),
        "never_connected": end.get("never_connected", {}),
        "invariants": invariants,
        "thresholds": {"abort_on": thresholds, "tripped": tripped},
        "slo": slo_verdict(total, h.get("slo")),
        "events": events,
    }
    summary["anomalies"] = _section_data(
        "app.detect.report", "anomaly_report_data", ticks, slo=h.get("slo")
    )
    return summary


def _section_data(module: str, fn: str, ticks: list[Tick], **kwargs: Any) -> Any:
    try:
        mod = __import__(module, fromlist=[fn])
        return getattr(mod, fn)(ticks, **kwargs)
    except (ImportError, AttributeError):
        return None
    except Exception as e:  # a section must never cost the whole report
        return {"error": f"{type(e).__name__}: {e}"}


def _section_md(module: str, fn: str, ticks: list[Tick], **kwargs: Any) -> str:
    out = _section_data(module, fn, ticks, **kwargs)
    if isinstance(out, str):
        return out.strip()
    if isinstance(out, dict) and "error" in out:
        return f"_({fn} failed: {out['error']})_"
    return ""


def _ts(t: float | None) -> str:
    if not t:
        return "?"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    if v >= 100:
        return f"{v:.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def _table(headers: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


FAIL_KINDS = frozenset({"queue-stuck", "lock-takeover", "consumers-gone"})


def render_markdown(rec: Recording, summary: dict[str, Any] | None = None) -> str:
    s = summary or build_summary(rec)
    ticks = rec.ticks
    L: list[str] = []
    # a stuck queue, a lock taken over after expiry or consumers gone is never a pass
    failing = sorted({a.kind for t in ticks for a in t.anomalies if a.kind in FAIL_KINDS})
    verdict = "PASS" if s["slo"]["met"] and not s["invariants"] and not s["thresholds"][
        "tripped"] and not failing else "FAIL"  # fmt: skip
    L.append(f"# loadtop report — {', '.join(s['scenarios']) or 'no scenario'}")
    L.append("")
    state = "" if s["complete"] else " · **recording ends without an end record (killed run)**"
    L.append(
        f"**{verdict}** · {_ts(s['started'])} · {s['duration_s']:.0f} s · {s['ticks']} ticks"
        f" · stopped: {s['stop_reason']}{state}"
    )
    if failing:
        L.append("")
        L.append(f"Raised during the run: {', '.join(failing)} (see Anomalies).")
    recorded = s.get("recorded_by") or "an unknown version"
    L.append(f"Recorded by loadtop {recorded} · reported by loadtop {s['reported_by']}")
    L.append("")
    t = s["total"]
    from app.detect import pg_report  # issue 12: server-side errors, blind probes, watch

    L += pg_report.headline_notes(s, ticks, L)
    L.append(
        f"{t['ok'] + t['failed']:,} operations, {t['ops_per_s']:,.0f} ops/s overall,"
        f" p95 {_ms(t['p95_ms'])}, p99 {_ms(t['p99_ms'])}, errors {t['error_pct']:.3g}%"
    )
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
        load = f"{st['rate']:g}/s" if st["mode"] == "rate" and st["rate"] else str(
            st["concurrency"])  # fmt: skip
        rows.append([
            str(st["step"]), load, f"{st['seconds']:.0f} s", f"{st['ops_per_s']:,.1f}",
            _ms(st["p50_ms"]), _ms(st["p95_ms"]), _ms(st["p99_ms"]), _ms(st["p999_ms"]),
            _ms(st["max_ms"]), f"{st['error_pct']:.3g}%",
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
                f"{f['ops_per_s']:,.1f}",
                _ms(f["p50_ms"]),
                _ms(f["p95_ms"]),
                _ms(f["p99_ms"]),
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
                by = [("–" if v is None else f"{v:,.1f}") for v in c["by_step"][:shown]]
                rows.append([name, f"`{k}`", f"{c['total']:,}", f"{c['per_s']:,.2f}", *by])
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
        if t["dropped"]:
            L.append("")
            L.append(f"Open model: {t['dropped']:,} intended starts dropped (no free worker),"
                     f" worst schedule lag {_ms(t['max_lag_ms'])}.")  # fmt: skip
    else:
        L.append("None from loadtop's own operations.")
    L += pg_report.server_errors_md(s.get("server_errors"))
    if s["outages"]:
        L.append("")
        L.append("Connection outages (operations failing for lack of a connection):")
        L.append("")
        for o in s["outages"]:
            errs = ", ".join(f"{k} ×{v}" for k, v in o["errors"].items())
            L.append(f"- {o['from_s']:.0f} s → {o['to_s']:.0f} s"
                     f" (ticks {o['from_tick']}–{o['to_tick']}): {errs}")  # fmt: skip
    if s["never_connected"]:
        L.append("")
        for name, n in s["never_connected"].items():
            L.append(f"- `{name}`: {n} worker(s) never got a connection")
    L.append("")
    L.append("## Invariants")
    L.append("")
    if s["invariants"]:
        for name, vs in s["invariants"].items():
            for v in pg_report.first_and_more(vs, 20):
                L.append(f"- **{name}**: {v}")
    else:
        L.append("Every scenario's `verify()` held.")
    L.append("")
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
                L.append(f"- `--abort-on {expr}`: **tripped** at {tr.get('elapsed_s', '?')} s"
                         f" (tick {tr.get('tick', '?')}), the load was stopped")  # fmt: skip
            else:
                L.append(f"- `--abort-on {expr}`: held")
        L.append("")
    for section in (
        _section_md(
            "app.detect.report", "anomaly_report_section", ticks, slo=rec.header.get("slo")
        ),
        _section_md("app.probes.summary", "probe_report_section", ticks),
    ):
        if section:
            L.append(section)
            L.append("")
    L.append("## Timeline")
    L.append("")
    if s["events"]:
        rows = []
        for e in s["events"][:500]:
            change = ""
            if e["before"] is not None or e["after"] is not None:
                change = f"{_num(e['before'])} → {_num(e['after'])}"
            when = f"{e['elapsed_s']:.1f} s" if e["elapsed_s"] is not None else "?"
            rows.append([when, e["kind"], e["source"], change, e["note"]])
        L += _table(["at", "event", "by", "change", "note"], rows, "rllll")
    else:
        L.append("No control events.")
    L.append("")
    return pg_report.watch_sections("\n".join(L), s)


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def render_json(rec: Recording) -> str:
    return json.dumps(build_summary(rec), indent=2, default=str)
