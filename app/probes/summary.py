"""Probe readings in words: the key figures for the headless line and the
per-step section of the Markdown report. Both are pure functions of readings
(ticks), so a report regenerated from a recording says exactly the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.probes.redis_locks import elide_middle
from app.tick import Reading, Tick

SHORT = {"postgres": "pg", "redis": "redis", "pods": "pods", "pg_queues": "pgq"}


def _human(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}" if abs(x) >= 10 or x == int(x) else f"{x:.1f}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def _secs(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _md(text: str, n: int = 120) -> str:
    """Text safe inside a Markdown table cell or inline code."""
    t = " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")
    return t if len(t) <= n else t[: n - 1] + "…"


# ---- the headless line ------------------------------------------------------------------


def format_reading_line(readings: Mapping[str, Reading]) -> str:
    """'pg 12 act/3 wait/300 max · redis 4.1k ops/s · q max 120 · pods cpu 0.8'.
    A failing probe shows as 'pg ERR'; a probe with no reading yet is left out."""
    parts: list[str] = []
    pg = readings.get("postgres")
    if pg is not None:
        if not pg.ok:
            parts.append("pg ERR")
        else:
            d = pg.data
            act = (d.get("by_state") or {}).get("active", 0)
            parts.append(
                f"pg {act} act/{d.get('waiting', 0)} wait/{d.get('max_connections', '?')} max"
            )
    rd = readings.get("redis")
    if rd is not None:
        if not rd.ok:
            parts.append("redis ERR")
        else:
            d = rd.data
            parts.append(f"redis {_human(float(d.get('ops_per_sec') or 0))} ops/s")
            depths = [q.get("depth") or 0 for q in d.get("queues") or []]
            if depths:
                parts.append(f"q max {_human(max(depths))}")
    pq = readings.get("pg_queues")  # shown only when it has queues (or fails)
    if pq is not None and (not pq.ok or pq.data.get("queues")):
        depths = [q.get("depth") or 0 for q in pq.data.get("queues") or []]
        parts.append(f"pgq max {_human(max(depths))}" if pq.ok else "pgq ERR")
    pods = readings.get("pods")
    if pods is not None:
        if not pods.ok:
            parts.append("pods ERR")
        else:
            cpus = [
                c["cpu_cores"]
                for c in pods.data.get("containers") or []
                if c.get("cpu_cores") is not None
            ]
            parts.append(f"pods cpu {max(cpus):.2g}" if cpus else "pods cpu n/a")
    for name, r in readings.items():  # any other probe: just its state
        if name not in SHORT:
            parts.append(f"{name} {'ok' if r.ok else 'ERR'}")
    return " · ".join(parts)


# ---- the report section ------------------------------------------------------------------


@dataclass
class _Step:
    index: int
    concurrency: int
    ticks: list[Tick] = field(default_factory=list)


def steps_of(ticks: Sequence[Tick]) -> list[_Step]:
    """Runs of consecutive ticks with the same target concurrency."""
    out: list[_Step] = []
    for t in ticks:
        if not out or out[-1].concurrency != t.target_concurrency:
            out.append(_Step(len(out) + 1, t.target_concurrency))
        out[-1].ticks.append(t)
    return out


def _ok(ticks: Iterable[Tick], probe: str) -> list[Reading]:
    """Distinct ok readings of one probe (a slow probe repeats across ticks)."""
    seen: set[float] = set()
    out = []
    for t in ticks:
        r = t.readings.get(probe)
        if r is not None and r.ok and r.t not in seen:
            seen.add(r.t)
            out.append(r)
    return out


def _counter_delta(first: Mapping[str, Any] | None, last: Mapping[str, Any], key: str) -> int:
    a = int((first or {}).get(key, 0) or 0)
    b = int(last.get(key, 0) or 0)
    return b - a if b >= a else b  # a counter that went back was reset: count from zero


def _failures(ticks: Sequence[Tick]) -> list[str]:
    out = []
    for probe in sorted({p for t in ticks for p in t.readings}):
        bad = [t.readings[probe] for t in ticks if probe in t.readings and not t.readings[probe].ok]
        if bad:
            out.append(
                f"- {probe} probe failing in {len(bad)} of {len(ticks)} ticks: {_md(bad[0].error, 200)}"
            )
    return out


def _pg_lines(rs: list[Reading], before: Reading | None) -> list[str]:
    if not rs:
        return []
    lines = []
    peak = max(rs, key=lambda r: r.data.get("connections", 0))
    conn, mx = peak.data.get("connections", 0), peak.data.get("max_connections")
    pct = f" ({100 * conn / mx:.0f}%)" if mx else ""
    act = max((r.data.get("by_state") or {}).get("active", 0) for r in rs)
    wait = max(r.data.get("waiting", 0) for r in rs)
    iit = max((r.data.get("by_state") or {}).get("idle in transaction", 0) for r in rs)
    lines.append(
        f"- Postgres: peak {conn} connections of {mx if mx else 'n/a'} max{pct}; "
        f"peak {act} active, {wait} waiting on locks, {iit} idle in transaction"
    )
    deepest: tuple[int, int, dict] | None = None
    for r in rs:
        for node in r.data.get("blocking_tree") or []:
            key = (node.get("depth", 0), node.get("waiting_count", 0))
            if deepest is None or key > deepest[:2]:
                deepest = (*key, node)
    if deepest:
        depth, n, node = deepest
        root = node.get("root") or {}
        app = root.get("application_name") or "?"
        q = _md(root.get("query") or "", 160)
        lines.append(
            f"- Deepest lock-wait chain: {depth} deep, {n} waiting behind pid {root.get('pid')} "
            f"({app}, {root.get('state') or 'unknown'}, transaction "
            f"{_secs(root.get('xact_age_s'))}): `{q}`"
        )
    base = before.data.get("totals") if before else None
    last = rs[-1].data.get("totals") or {}
    first = base if base is not None else rs[0].data.get("totals")
    dl = _counter_delta(first, last, "deadlocks")
    rb = _counter_delta(first, last, "rollbacks")
    oldest = max((r.data.get("oldest_xact_s") or 0 for r in rs), default=0)
    lines.append(f"- Deadlocks: {dl}; rollbacks: {rb}; longest transaction: {_secs(oldest)}")
    return lines


def _redis_lines(rs: list[Reading], before: Reading | None) -> list[str]:
    if not rs:
        return []
    lines = []
    ops = max(float(r.data.get("ops_per_sec") or 0) for r in rs)
    mem_r = max(rs, key=lambda r: r.data.get("used_memory") or 0)
    mem, mx = mem_r.data.get("used_memory"), mem_r.data.get("maxmemory")
    limit = f" of {_bytes(mx)} maxmemory" if mx else " (no maxmemory)"
    ev = sum(int(r.data.get("evicted_keys_delta") or 0) for r in rs)
    rej = sum(int(r.data.get("rejected_connections_delta") or 0) for r in rs)
    cl = max(int(r.data.get("connected_clients") or 0) for r in rs)
    lines.append(
        f"- Redis: peak {_human(ops)} ops/s; peak memory {_bytes(mem)}{limit}; "
        f"peak {cl} clients; {ev} keys evicted; {rej} connections rejected"
    )
    holds: dict[str, dict[str, Any]] = {}  # per key: its longest hold and its holders
    for r in rs:
        for lk in r.data.get("locks") or []:
            h = holds.setdefault(lk["key"], {"age": -1.0, "holder": "", "holders": set(),
                                             "no_ttl": False})  # fmt: skip
            age = float(lk.get("age_s") or 0)
            h["holders"].add(lk.get("holder", ""))
            if age > h["age"]:
                h["age"], h["holder"] = age, lk.get("holder", "")
            h["no_ttl"] = h["no_ttl"] or bool(lk.get("no_ttl"))
    if holds:
        rows = sorted(holds.items(), key=lambda kv: (not kv[1]["no_ttl"], -kv[1]["age"]))
        lines.append("")
        lines.append(f"Lock holders seen ({len(rows)} keys):")
        lines.append("")
        lines.append("| key | holder (longest hold) | longest hold | holders seen | TTL |")
        lines.append("|---|---|---|---|---|")
        for key, h in rows[:10]:
            ttl = "**none**" if h["no_ttl"] else "set"
            lines.append(
                f"| `{_md(key, 60)}` | `{_md(elide_middle(h['holder'], 80), 80)}` | "
                f"{_secs(h['age'])} | "
                f"{len(h['holders'])} | {ttl} |"
            )
        if len(rows) > 10:
            lines.append(f"| … {len(rows) - 10} more | | | | |")
    return lines + _queue_lines(rs, before)


def _queue_lines(rs: list[Reading], before: Reading | None, title: str = "Queues") -> list[str]:
    """The queue table of any probe whose readings carry `queues` (redis, pg_queues)."""
    if not rs:
        return []
    lines: list[str] = []
    queues: dict[tuple[str, str], list[tuple[float, dict]]] = {}
    for r in ([before] if before else []) + rs:
        for q in r.data.get("queues") or []:
            queues.setdefault((q.get("layout", ""), q.get("name", "")), []).append((r.t, q))
    in_step = {k: v for k, v in queues.items() if any(t >= rs[0].t for t, _ in v)}
    if in_step:
        lines.append("")
        lines.append(f"{title} (growth from the step's start):")
        lines.append("")
        lines.append(
            "| queue | layout | peak depth | growth | peak in flight | failed | oldest age "
            "(peak) | consumed /s (mean) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        rows_q = sorted(in_step.items(), key=lambda kv: -max(q.get("depth") or 0 for _, q in kv[1]))
        for (layout, name), samples in rows_q[:10]:
            peak = max(q.get("depth") or 0 for _, q in samples)
            (t0, q0), (t1, q1) = samples[0], samples[-1]
            growth = (q1.get("depth") or 0) - (q0.get("depth") or 0)
            rate = f" ({growth / (t1 - t0):+.1f}/s)" if t1 > t0 else ""
            fl = max((q.get("in_flight") or 0) for _, q in samples)
            failed = q1.get("failed")
            ages = [q["oldest_age_s"] for _, q in samples if q.get("oldest_age_s") is not None]
            rates = [q["consumed_per_s"] for _, q in samples if q.get("consumed_per_s") is not None]
            age_txt = _secs(max(ages)) if ages else "n/a"
            rate_txt = f"{sum(rates) / len(rates):.1f}" if rates else "n/a"
            lines.append(
                f"| `{_md(elide_middle(str(name), 50), 50)}` | {layout} | {peak} | "
                f"{growth:+d}{rate} | {fl} | {'n/a' if failed is None else failed} | "
                f"{age_txt} | {rate_txt} |"
            )
        if len(rows_q) > 10:
            lines.append(f"| … {len(rows_q) - 10} more | | | | | | | |")
    hints = next((r.data.get("hints") for r in reversed(rs) if r.data.get("hints")), None)
    if hints:
        lines.append("")
        lines += [f"- {_md(h, 300)}" for h in hints]
    return lines


def _pods_lines(rs: list[Reading], before: Reading | None) -> list[str]:
    if not rs:
        return []
    agg: dict[tuple[str, str], dict[str, Any]] = {}
    base: dict[tuple[str, str], int] = {}
    if before:
        for c in before.data.get("containers") or []:
            base[(c["pod"], c["container"])] = int(c.get("restarts") or 0)
    for r in rs:
        for c in r.data.get("containers") or []:
            k = (c["pod"], c["container"])
            a = agg.setdefault(
                k, {"cpu": None, "mem": None, "cpu_lim": None, "mem_lim": None,
                    "r0": base.get(k, int(c.get("restarts") or 0)), "r1": 0, "oom": 0,
                    "prev": base.get(k, int(c.get("restarts") or 0))},
            )  # fmt: skip
            if c.get("cpu_cores") is not None:
                a["cpu"] = max(a["cpu"] or 0.0, c["cpu_cores"])
            if c.get("memory_bytes") is not None:
                a["mem"] = max(a["mem"] or 0, c["memory_bytes"])
            a["cpu_lim"] = c.get("cpu_limit_cores") or a["cpu_lim"]
            a["mem_lim"] = c.get("memory_limit_bytes") or a["mem_lim"]
            n = int(c.get("restarts") or 0)
            if n > a["prev"] and c.get("last_reason") == "OOMKilled":
                a["oom"] += n - a["prev"]
            a["prev"] = n
            a["r1"] = n
    if not agg:
        return ["- Pods: no containers matched"]
    restarts = sum(max(0, a["r1"] - a["r0"]) for a in agg.values())
    ooms = sum(a["oom"] for a in agg.values())
    lines = [
        f"- Pods ({rs[-1].data.get('source', '?')}): {restarts} restarts, {ooms} OOM kills in this step",
        "",
    ]
    lines.append("| pod/container | peak CPU | CPU limit | peak memory | memory limit | restarts |")
    lines.append("|---|---|---|---|---|---|")

    def pct(v: float | None, lim: float | None) -> str:
        return f" ({100 * v / lim:.0f}%)" if v is not None and lim else ""

    rows = sorted(agg.items(), key=lambda kv: -(kv[1]["cpu"] or 0))
    for (pod, ctr), a in rows[:12]:
        cpu = "n/a" if a["cpu"] is None else f"{a['cpu']:.2f}"
        cl = "none" if not a["cpu_lim"] else f"{a['cpu_lim']:g}"
        ml = "none" if not a["mem_lim"] else _bytes(a["mem_lim"])
        rst = max(0, a["r1"] - a["r0"])
        lines.append(
            f"| {_md(pod, 40)}/{_md(ctr, 30)} | {cpu}{pct(a['cpu'], a['cpu_lim'])} | {cl} | "
            f"{_bytes(a['mem'])}{pct(a['mem'], a['mem_lim'])} | {ml} | {rst:+d} |"
        )
    if len(rows) > 12:
        lines.append(f"| … {len(rows) - 12} more | | | | | |")
    return lines


def probe_report_section(ticks: list[Tick]) -> str:
    """Markdown: per step (a run of ticks with the same target concurrency), what
    the probes saw. "" when no tick carries a probe reading."""
    if not any(t.readings for t in ticks):
        return ""
    t0 = ticks[0].elapsed - ticks[0].interval if ticks else 0.0
    out = ["## Systems under load", ""]
    last: dict[str, Reading] = {}
    for step in steps_of(ticks):
        a = step.ticks[0].elapsed - step.ticks[0].interval - t0
        b = step.ticks[-1].elapsed - t0
        out.append(
            f"### Step {step.index}: concurrency {step.concurrency} "
            f"({_clock(a)}–{_clock(b)}, {len(step.ticks)} ticks)"
        )
        out.append("")
        body: list[str] = []
        pg, rd, pods = (_ok(step.ticks, p) for p in ("postgres", "redis", "pods"))
        body += _pg_lines(pg, last.get("postgres"))
        body += _redis_lines(rd, last.get("redis"))
        pgq = _ok(step.ticks, "pg_queues")
        body += _queue_lines(pgq, last.get("pg_queues"), "Postgres queues")
        errs = sorted({e for r in pgq for e in r.data.get("errors") or ()})
        body += [f"- Postgres queue not read: {_md(e, 200)}" for e in errs[:5]]
        pl = _pods_lines(pods, last.get("pods"))
        if pl:
            body += ([""] if body and body[-1].startswith("|") else []) + pl
        body += _failures(step.ticks)
        out += body or ["- no probe readings in this step"]
        out.append("")
        for name, rs in (("postgres", pg), ("redis", rd), ("pods", pods), ("pg_queues", pgq)):
            if rs:
                last[name] = rs[-1]
    return "\n".join(_blank_after_tables(out)).rstrip() + "\n"


def _blank_after_tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].startswith("|") and line and not line.startswith("|"):
            out.append("")
        out.append(line)
    return out


def _clock(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60:02d}:{s % 60:02d}"
