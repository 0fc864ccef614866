"""The anomaly part of the session report: a pure function of the ticks.

`anomaly_report_data(ticks)` gives JSON-able data; `anomaly_report_section`
renders it as Markdown: "Look here first", the anomaly timeline, and the
capacity table with the USL fit and the recommended maximum concurrency.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app import fmt
from app.detect.base import SEVERITY_RANK, slo_options
from app.detect.stats import fit_usl
from app.tick import Percentiles, Tick, add_histogram, merge_histograms, new_histogram, step_key

DEFAULT_SLO = {"p95_ms": 500.0, "p99_ms": 1000.0, "error_ratio": 0.001}
_SLO_ALIASES = {"p95": "p95_ms", "p99": "p99_ms", "errors": "error_ratio", "error": "error_ratio"}


def _slo(slo: Mapping[str, Any] | None) -> dict[str, float]:
    """The SLO a step is judged by: the defaults, overridden by `slo` (its keys
    read as the detectors' slo options read them, plus the short aliases)."""
    named = {_SLO_ALIASES.get(k, k): v for k, v in (slo or {}).items()}
    return {**DEFAULT_SLO, **{k: float(v) for k, v in slo_options(named).items()}}


class _Episodes:
    def __init__(self) -> None:
        self.eps: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, tk: Tick, t0: float) -> None:
        eps = self.eps
        for a in (*tk.anomalies, *tk.cleared):
            if a.kind == "fault":
                # what was done, not what was found: the report's Faults section
                # has it, with its baseline, impact and recovery
                continue
            ident = (a.key, a.started_tick)
            ep = eps.get(ident)
            if ep is None:
                ep = eps[ident] = {
                    "key": a.key,
                    "kind": a.kind,
                    "subject": a.subject,
                    "severity": a.severity,
                    "started_tick": a.started_tick,
                    "raised_tick": tk.index,
                    "from_s": round(a.started_at - t0, 1),
                    "started_at": a.started_at,
                    "cleared_tick": None,
                    "to_s": None,
                    "summary": a.summary,
                    "evidence": dict(a.evidence),
                    "_peak": SEVERITY_RANK.get(a.severity, 0),
                }
            rank = SEVERITY_RANK.get(a.severity, 0)
            if rank >= ep["_peak"]:  # keep the worst moment's words and numbers
                ep.update(severity=a.severity, summary=a.summary, evidence=dict(a.evidence))
                ep["_peak"] = rank
            if a.cleared_tick is not None:
                ep["cleared_tick"] = a.cleared_tick
                ep["to_s"] = round((a.cleared_at or tk.t) - t0, 1)

    def result(self, last: Tick, t0: float) -> list[dict[str, Any]]:
        out = []
        for ep in self.eps.values():
            ep = dict(ep)
            ep.pop("_peak")
            end = ep["to_s"] if ep["to_s"] is not None else round(last.t - t0, 1)
            ep["active_at_end"] = ep["cleared_tick"] is None
            ep["duration_s"] = round(max(0.0, end - ep["from_s"]), 1)
            ep["time_to_detect_ticks"] = ep["raised_tick"] - ep["started_tick"]
            ep.pop("started_at")
            out.append(ep)
        out.sort(key=lambda e: (e["from_s"], e["key"]))
        return out


class _Run:
    """A run of ticks with the same target concurrency. Capacity figures use
    its settled ticks: the live (not paused) ones, less the first when there
    are at least three (it carries the ramp). Kept as two accumulators, the
    first live tick and the rest, so no tick is held."""

    def __init__(self, tk: Tick) -> None:
        self.target = tk.target_concurrency
        self.mode = tk.mode
        self.rate = tk.rate if tk.mode == "rate" else None
        self.key = step_key(tk)  # one step definition for every table (app.tick.steps)
        self.from_tick = self.to_tick = tk.index
        self.ticks = 0
        self.live = 0
        self.first: list[Any] | None = None  # [secs, ops, failed, conc, hist]
        self.rest: list[Any] = [0.0, 0, 0, 0, None]

    def add(self, tk: Tick, hists: Sequence[Any]) -> None:
        self.ticks += 1
        self.to_tick = tk.index
        if tk.paused:
            return
        self.live += 1
        if self.first is None:
            h = new_histogram()
            for x in hists:
                add_histogram(h, x)
            self.first = [tk.interval, tk.completed, tk.failed, tk.concurrency, h]
            return
        r = self.rest
        r[0] += tk.interval
        r[1] += tk.completed
        r[2] += tk.failed
        r[3] += tk.concurrency
        if r[4] is None:
            r[4] = new_histogram()
        for x in hists:
            add_histogram(r[4], x)

    def close(self, i: int, slo: dict[str, float]) -> dict[str, Any]:
        parts = [] if self.first is None else [self.first]
        if self.live >= 3:
            parts = [self.rest]
        elif self.live >= 2:
            parts.append(self.rest)
        secs = sum(p[0] for p in parts)
        ops = sum(p[1] for p in parts)
        failed = sum(p[2] for p in parts)
        n = self.live - 1 if self.live >= 3 else self.live
        hist = merge_histograms(p[4] for p in parts)
        lat = Percentiles.of(hist)
        p50, p95, p99 = lat.p50, lat.p95, lat.p99
        err = failed / ops if ops else 0.0
        meets = (
            bool(ops)
            and p95 <= slo["p95_ms"]
            and p99 <= slo["p99_ms"]
            and err <= slo["error_ratio"]
        )
        self.first = None
        self.rest = [0.0, 0, 0, 0, None]
        return {
            "step": i + 1,  # 1-based, like every other table and the console's plan
            "target": self.target,
            "mode": self.mode,
            "rate": self.rate,
            "from_tick": self.from_tick,
            "to_tick": self.to_tick,
            "ticks": self.ticks,
            "concurrency": round(sum(p[3] for p in parts) / n, 2) if n else 0.0,
            "ops_per_s": round(ops / secs, 2) if secs else 0.0,
            "ops": ops,
            "p50_ms": round(p50, 2),
            "p95_ms": round(p95, 2),
            "p99_ms": round(p99, 2),
            "error_ratio": round(err, 5),
            "meets_slo": meets,
        }


class AnomalyReport:
    """`anomaly_report_data`, fed one tick at a time (in index order)."""

    def __init__(self, slo: Mapping[str, Any] | None = None) -> None:
        self.slo = _slo(slo)
        self.t0: float | None = None
        self.last: Tick | None = None
        self.episodes = _Episodes()
        self.steps: list[dict[str, Any]] = []
        self.run: _Run | None = None

    def add(self, tk: Tick, hists: Sequence[Any] | None = None) -> None:
        if hists is None:
            hists = [s.hist for s in tk.scenarios]
        if self.t0 is None:
            self.t0 = tk.t - tk.elapsed
        self.last = tk
        self.episodes.add(tk, self.t0)
        if self.run is None or self.run.key != step_key(tk):
            if self.run is not None:
                self.steps.append(self.run.close(len(self.steps), self.slo))
            self.run = _Run(tk)
        self.run.add(tk, hists)

    def result(self) -> dict[str, Any]:
        slo_ = self.slo
        if self.last is None or self.t0 is None:
            return {"anomalies": [], "look_here_first": [], "steps": [], "usl": None,
                    "slo": slo_, "recommended_max_concurrency": None}  # fmt: skip
        steps = list(self.steps)
        if self.run is not None:
            steps.append(self.run.close(len(steps), slo_))
            self.steps = steps
            self.run = None
        episodes = self.episodes.result(self.last, self.t0)
        ranked = sorted(
            episodes,
            key=lambda e: (-SEVERITY_RANK.get(e["severity"], 0), -e["duration_s"], e["from_s"]),
        )
        load_steps = [s for s in steps if s["mode"] == "workers" and s["target"] > 0 and s["ops"]]
        fit = fit_usl([(s["concurrency"], s["ops_per_s"]) for s in load_steps])
        recommended = None
        for s in sorted(load_steps, key=lambda s: s["target"]):
            if not s["meets_slo"]:
                break
            recommended = s["target"]
        return {
            "anomalies": episodes,
            "look_here_first": [
                {
                    k: e[k]
                    for k in (
                        "key",
                        "kind",
                        "subject",
                        "severity",
                        "from_s",
                        "duration_s",
                        "summary",
                    )
                }  # fmt: skip
                for e in ranked[:5]
            ],
            "steps": steps,
            "usl": fit.as_dict() if fit is not None else None,
            "slo": slo_,
            "recommended_max_concurrency": recommended,
        }


def anomaly_report_data(ticks: Iterable[Tick], slo: Mapping[str, Any] | None = None) -> dict:
    """The anomaly timeline, "look here first", per-step capacity figures, the
    USL fit and the recommended maximum concurrency, as JSON-able data. A
    list is put in index order first; any other iterable (a recording being
    streamed) is taken as it comes."""
    acc = AnomalyReport(slo)
    if isinstance(ticks, list | tuple):
        ticks = sorted(ticks, key=lambda tk: tk.index)
    for tk in ticks:
        acc.add(tk)
    return acc.result()


# ---- Markdown --------------------------------------------------------------------


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _evidence_text(ev: Mapping[str, Any]) -> str:
    parts = []
    for k, v in ev.items():
        if k in ("problems", "points", "waiters", "slo", "breaches", "reasons"):
            continue
        if isinstance(v, Mapping):
            inner = ", ".join(f"{ik}={iv}" for ik, iv in v.items() if iv not in (None, "", []))
            parts.append(f"{k}: {inner}")
        elif v not in (None, "", [], {}):
            parts.append(f"{k}={json.dumps(v) if isinstance(v, list) else v}")
    return "; ".join(parts)


def anomaly_report_section(ticks: Iterable[Tick], slo: Mapping[str, Any] | None = None) -> str:
    """Markdown: look here first, the anomaly timeline, capacity and the USL fit."""
    return render_anomaly_section(anomaly_report_data(ticks, slo))


def render_anomaly_section(d: Mapping[str, Any]) -> str:
    """`anomaly_report_section` from `anomaly_report_data`'s result."""
    slo_ = d["slo"]
    lines = ["## Anomalies", ""]
    if not d["anomalies"]:
        lines += ["No anomalies were raised.", ""]
    else:
        lines += ["### Look here first", ""]
        for i, e in enumerate(d["look_here_first"], 1):
            lines.append(
                f"{i}. **{e['severity']}** `{e['kind']}` {e['subject']}, "
                f"{fmt.seconds(e['duration_s'])} from {fmt.seconds(e['from_s'])}: "
                f"{_cell(e['summary'], 300)}"
            )
        lines += ["", "### Timeline", ""]
        lines.append("| kind | subject | severity | from | to | detected after | evidence |")
        lines.append("|---|---|---|---|---|---|---|")
        for e in d["anomalies"]:
            lines.append(
                f"| {e['kind']} | {_cell(e['subject'], 60)} | {e['severity']} | "
                f"{fmt.seconds(e['from_s'])} | {fmt.seconds(e['to_s'], none='end')} | "
                f"{e['time_to_detect_ticks']} ticks | {_cell(_evidence_text(e['evidence']), 240)} |"
            )
        lines.append("")
    lines += ["### Capacity", ""]
    steps = [s for s in d["steps"] if s["ops"]]
    if steps:
        lines.append("| step | load | ops/s | p50 | p95 | p99 | errors | SLO |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for s in steps:
            load = f"{fmt.rate(s['rate'])}/s" if s.get("rate") else str(s["target"])
            lines.append(
                f"| {s['step']} | {load} | {fmt.rate(s['ops_per_s'])} | {fmt.ms(s['p50_ms'])} | "
                f"{fmt.ms(s['p95_ms'])} | {fmt.ms(s['p99_ms'])} | {s['error_ratio'] * 100:.2f}% | "
                f"{'meets' if s['meets_slo'] else 'breaks'} |"
            )
        lines.append("")
    fit = d["usl"]
    if fit:
        peak = (
            f"peak throughput ~{fmt.rate(fit['x_peak'])} ops/s at N ~{fit['n_peak']:.0f}"
            if fit["n_peak"] is not None and not math.isinf(fit["n_peak"])
            else "no peak within reach (kappa ~ 0)"
        )
        lines.append(
            f"USL fit over {fit['points']} steps: sigma = {fit['sigma']:.4f} (contention), "
            f"kappa = {fit['kappa']:.6f} (coherency), {peak}, R^2 = {fit['r2']:.2f}."
        )
    else:
        lines.append("USL fit: needs at least 3 steps of different concurrency.")
    slo_txt = (
        f"p95 <= {slo_['p95_ms']:g} ms, p99 <= {slo_['p99_ms']:g} ms, "
        f"errors <= {slo_['error_ratio'] * 100:g}%"
    )
    rec = d["recommended_max_concurrency"]
    lines.append("")
    if rec is None:
        lines.append(f"Recommended maximum concurrency: none; no step met the SLO ({slo_txt}).")
    else:
        lines.append(
            f"Recommended maximum concurrency: **{rec}**, the highest step that, with every "
            f"step below it, meets the SLO ({slo_txt})."
        )
    lines.append("")
    return "\n".join(lines)
