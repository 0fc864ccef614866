"""Probe readings in words: the key figures for the headless line and the
per-step section of the Markdown report. Both are pure functions of readings
(ticks), so a report regenerated from a recording says exactly the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app import fmt
from app.probes.redis_locks import elide_middle
from app.tick import Reading, Tick, step_key

SHORT = {"postgres": "pg", "redis": "redis", "pods": "pods", "pg_queues": "pgq"}


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
            parts.append(f"redis {fmt.rate(float(d.get('ops_per_sec') or 0))} ops/s")
            depths = [q.get("depth") or 0 for q in d.get("queues") or []]
            if depths:
                parts.append(f"q max {fmt.rate(max(depths))}")
    pq = readings.get("pg_queues")  # shown only when it has queues (or fails)
    if pq is not None and (not pq.ok or pq.data.get("queues")):
        depths = [q.get("depth") or 0 for q in pq.data.get("queues") or []]
        parts.append(f"pgq max {fmt.rate(max(depths))}" if pq.ok else "pgq ERR")
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


def _counter_delta(first: Mapping[str, Any] | None, last: Mapping[str, Any], key: str) -> int:
    a = int((first or {}).get(key, 0) or 0)
    b = int(last.get(key, 0) or 0)
    return b - a if b >= a else b  # a counter that went back was reset: count from zero


class _Pg:
    """A step's Postgres readings, folded as they come."""

    def __init__(self) -> None:
        self.n = 0
        self.peak: Reading | None = None
        self.act = self.wait = self.iit = 0
        self.deepest: tuple[int, int, dict] | None = None
        self.first: Reading | None = None
        self.last: Reading | None = None
        self.oldest = 0.0

    def add(self, r: Reading) -> None:
        d = r.data
        if self.peak is None or d.get("connections", 0) > self.peak.data.get("connections", 0):
            self.peak = r
        by = d.get("by_state") or {}
        self.act = by.get("active", 0) if not self.n else max(self.act, by.get("active", 0))
        self.wait = d.get("waiting", 0) if not self.n else max(self.wait, d.get("waiting", 0))
        iit = by.get("idle in transaction", 0)
        self.iit = iit if not self.n else max(self.iit, iit)
        for node in d.get("blocking_tree") or []:
            key = (node.get("depth", 0), node.get("waiting_count", 0))
            if self.deepest is None or key > self.deepest[:2]:
                self.deepest = (*key, node)
        self.first = self.first or r
        self.last = r
        self.oldest = max(self.oldest, d.get("oldest_xact_s") or 0)
        self.n += 1

    def lines(self, before: Reading | None) -> list[str]:
        if not self.n:
            return []
        assert self.peak is not None and self.first is not None and self.last is not None
        lines = []
        conn, mx = self.peak.data.get("connections", 0), self.peak.data.get("max_connections")
        pct = f" ({100 * conn / mx:.0f}%)" if mx else ""
        lines.append(
            f"- Postgres: peak {conn} connections of {mx if mx else 'n/a'} max{pct}; "
            f"peak {self.act} active, {self.wait} waiting on locks, {self.iit} idle in transaction"
        )
        if self.deepest:
            depth, n, node = self.deepest
            root = node.get("root") or {}
            app = root.get("application_name") or "?"
            q = _md(root.get("query") or "", 160)
            lines.append(
                f"- Deepest lock-wait chain: {depth} deep, {n} waiting behind pid {root.get('pid')} "
                f"({app}, {root.get('state') or 'unknown'}, transaction "
                f"{fmt.age(root.get('xact_age_s'), none='n/a')}): `{q}`"
            )
        base = before.data.get("totals") if before else None
        last = self.last.data.get("totals") or {}
        first = base if base is not None else self.first.data.get("totals")
        dl = _counter_delta(first, last, "deadlocks")
        rb = _counter_delta(first, last, "rollbacks")
        lines.append(
            f"- Deadlocks: {dl}; rollbacks: {rb}; longest transaction: {fmt.age(self.oldest, none='n/a')}"
        )
        return lines


# Lock keys and holders followed per step: beyond these the report counts
# them without their details (a lock per order id would otherwise grow
# without end over a long run).
MAX_LOCK_KEYS = 5000
MAX_HOLDERS = 1000
MAX_QUEUES = 2000


class _Queues:
    """The queues of one probe (redis, pg_queues) over a step: peak depth,
    growth from the step's start, peak in flight, failed, oldest age (peak)
    and mean consumption rate, plus the probe's last hints."""

    def __init__(self, title: str = "Queues") -> None:
        self.title = title
        self.first_t: float | None = None
        self.queues: dict[tuple[str, str], dict[str, Any]] = {}
        self.hints: list[str] = []

    def add(self, t: float, d: Mapping[str, Any], *, before: bool = False) -> None:
        if self.first_t is None and not before:
            self.first_t = t
        for q in d.get("queues") or []:
            self._queue(t, q, before)
        if d.get("hints") and not before:
            self.hints = list(d["hints"])

    def _queue(self, t: float, q: Mapping[str, Any], before: bool) -> None:
        k = (q.get("layout", ""), q.get("name", ""))
        a = self.queues.get(k)
        if a is None:
            if len(self.queues) >= MAX_QUEUES:
                return
            a = self.queues[k] = {"peak": q.get("depth") or 0, "first": (t, q), "last": (t, q),
                                  "fl": q.get("in_flight") or 0, "in_step": False,
                                  "age": None, "rate_sum": 0.0, "rate_n": 0}  # fmt: skip
        a["peak"] = max(a["peak"], q.get("depth") or 0)
        a["last"] = (t, q)
        a["fl"] = max(a["fl"], q.get("in_flight") or 0)
        if q.get("oldest_age_s") is not None:
            a["age"] = max(a["age"] or 0.0, float(q["oldest_age_s"]))
        if q.get("consumed_per_s") is not None:
            a["rate_sum"] += float(q["consumed_per_s"])
            a["rate_n"] += 1
        if not before:
            a["in_step"] = True

    def lines(self) -> list[str]:
        lines: list[str] = []
        in_step = {k: v for k, v in self.queues.items() if v["in_step"]}
        if in_step:
            lines.append("")
            lines.append(f"{self.title} (growth from the step's start):")
            lines.append("")
            lines.append(
                "| queue | layout | peak depth | growth | peak in flight | failed | oldest age "
                "(peak) | consumed /s (mean) |"
            )
            lines.append("|---|---|---|---|---|---|---|---|")
            rows_q = sorted(in_step.items(), key=lambda kv: -kv[1]["peak"])
            for (layout, name), a in rows_q[:10]:
                (t0, q0), (t1, q1) = a["first"], a["last"]
                growth = (q1.get("depth") or 0) - (q0.get("depth") or 0)
                rate = f" ({growth / (t1 - t0):+.1f}/s)" if t1 > t0 else ""
                failed = q1.get("failed")
                age_txt = fmt.age(a["age"], none="n/a") if a["age"] is not None else "n/a"
                rate_txt = fmt.rate(a["rate_sum"] / a["rate_n"]) if a["rate_n"] else "n/a"
                lines.append(
                    f"| `{_md(elide_middle(str(name), 50), 50)}` | {layout} | {a['peak']} | "
                    f"{growth:+d}{rate} | {a['fl']} | {'n/a' if failed is None else failed} | "
                    f"{age_txt} | {rate_txt} |"
                )
            if len(rows_q) > 10:
                lines.append(f"| … {len(rows_q) - 10} more | | | | | | | |")
        if self.hints:
            lines.append("")
            lines += [f"- {_md(h, 300)}" for h in self.hints]
        return lines


class _Redis:
    def __init__(self) -> None:
        self.n = 0
        self.ops = 0.0
        self.mem_r: Reading | None = None
        self.ev = self.rej = self.cl = 0
        self.holds: dict[str, dict[str, Any]] = {}  # per key: its longest hold and its holders
        self.more_keys = 0  # lock keys not kept (past MAX_LOCK_KEYS), counted per sighting
        self.queues = _Queues()

    def add(self, r: Reading, before: Reading | None) -> None:
        d = r.data
        if not self.n and before is not None:
            self.queues.add(before.t, before.data, before=True)
        ops = float(d.get("ops_per_sec") or 0)
        self.ops = ops if not self.n else max(self.ops, ops)
        if self.mem_r is None or (d.get("used_memory") or 0) > (
            self.mem_r.data.get("used_memory") or 0
        ):
            self.mem_r = r
        self.ev += int(d.get("evicted_keys_delta") or 0)
        self.rej += int(d.get("rejected_connections_delta") or 0)
        cl = int(d.get("connected_clients") or 0)
        self.cl = cl if not self.n else max(self.cl, cl)
        for lk in d.get("locks") or []:
            h = self.holds.get(lk["key"])
            if h is None:
                if len(self.holds) >= MAX_LOCK_KEYS:
                    self.more_keys += 1
                    continue
                h = self.holds[lk["key"]] = {"age": -1.0, "holder": "", "holders": set(),
                                             "no_ttl": False}  # fmt: skip
            age = float(lk.get("age_s") or 0)
            if len(h["holders"]) < MAX_HOLDERS:
                h["holders"].add(lk.get("holder", ""))
            if age > h["age"]:
                h["age"], h["holder"] = age, lk.get("holder", "")
            h["no_ttl"] = h["no_ttl"] or bool(lk.get("no_ttl"))
        self.queues.add(r.t, d)
        self.n += 1

    def lines(self) -> list[str]:
        if not self.n:
            return []
        assert self.mem_r is not None
        lines = []
        mem, mx = self.mem_r.data.get("used_memory"), self.mem_r.data.get("maxmemory")
        limit = f" of {fmt.size(mx, none='n/a')} maxmemory" if mx else " (no maxmemory)"
        lines.append(
            f"- Redis: peak {fmt.rate(self.ops)} ops/s; peak memory {fmt.size(mem, none='n/a')}{limit}; "
            f"peak {self.cl} clients; {self.ev} keys evicted; {self.rej} connections rejected"
        )
        holds = self.holds
        if holds:
            rows = sorted(holds.items(), key=lambda kv: (not kv[1]["no_ttl"], -kv[1]["age"]))
            n_keys = len(rows) + self.more_keys
            lines.append("")
            lines.append(f"Lock holders seen ({n_keys} keys):")
            lines.append("")
            lines.append("| key | holder (longest hold) | longest hold | holders seen | TTL |")
            lines.append("|---|---|---|---|---|")
            for key, h in rows[:10]:
                ttl = "**none**" if h["no_ttl"] else "set"
                seen = len(h["holders"])
                lines.append(
                    f"| `{_md(key, 60)}` | `{_md(elide_middle(h['holder'], 80), 80)}` | "
                    f"{fmt.age(h['age'], none='n/a')} | "
                    f"{seen}{'+' if seen >= MAX_HOLDERS else ''} | {ttl} |"
                )
            if n_keys > 10:
                lines.append(f"| … {n_keys - 10} more | | | | |")
        return lines + self.queues.lines()


class _Pods:
    def __init__(self) -> None:
        self.n = 0
        self.agg: dict[tuple[str, str], dict[str, Any]] = {}
        self.base: dict[tuple[str, str], int] = {}
        self.source = "?"

    def add(self, r: Reading, before: Reading | None) -> None:
        if not self.n and before:
            for c in before.data.get("containers") or []:
                self.base[(c["pod"], c["container"])] = int(c.get("restarts") or 0)
        self.n += 1
        self.source = r.data.get("source", "?")
        base = self.base
        for c in r.data.get("containers") or []:
            k = (c["pod"], c["container"])
            a = self.agg.setdefault(
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

    def lines(self) -> list[str]:
        if not self.n:
            return []
        agg = self.agg
        if not agg:
            return ["- Pods: no containers matched"]
        restarts = sum(max(0, a["r1"] - a["r0"]) for a in agg.values())
        ooms = sum(a["oom"] for a in agg.values())
        lines = [
            f"- Pods ({self.source}): {restarts} restarts, {ooms} OOM kills in this step",
            "",
        ]
        lines.append(
            "| pod/container | peak CPU | CPU limit | peak memory | memory limit | restarts |"
        )
        lines.append("|---|---|---|---|---|---|")

        def pct(v: float | None, lim: float | None) -> str:
            return f" ({fmt.share(v, lim)})" if v is not None and lim else ""

        rows = sorted(agg.items(), key=lambda kv: -(kv[1]["cpu"] or 0))
        for (pod, ctr), a in rows[:12]:
            cpu = "n/a" if a["cpu"] is None else f"{a['cpu']:.2f}"
            cl = "none" if not a["cpu_lim"] else f"{a['cpu_lim']:g}"
            ml = "none" if not a["mem_lim"] else fmt.size(a["mem_lim"], none="n/a")
            rst = max(0, a["r1"] - a["r0"])
            lines.append(
                f"| {_md(pod, 40)}/{_md(ctr, 30)} | {cpu}{pct(a['cpu'], a['cpu_lim'])} | {cl} | "
                f"{fmt.size(a['mem'], none='n/a')}{pct(a['mem'], a['mem_lim'])} | {ml} | {rst:+d} |"
            )
        if len(rows) > 12:
            lines.append(f"| … {len(rows) - 12} more | | | | | |")
        return lines


class _StepProbes:
    def __init__(self, index: int, tk: Tick, before: dict[str, Reading]) -> None:
        self.index = index
        self.concurrency = tk.target_concurrency
        self.mode, self.rate = tk.mode, tk.rate
        self.key = step_key(tk)
        self.first = tk
        self.last = tk
        self.ticks = 0
        self.before = dict(before)
        self.pg, self.rd, self.pods = _Pg(), _Redis(), _Pods()
        self.pgq = _Queues("Postgres queues")
        self.pgq_errors: set[str] = set()
        self.seen: dict[str, float] = {}  # probe -> t of its last reading (a slow probe repeats)
        self.bad: dict[str, list[Any]] = {}  # probe -> [count, first error]
        self.lasts: dict[str, Reading] = {}

    def add(self, tk: Tick) -> None:
        self.ticks += 1
        self.last = tk
        for probe, r in tk.readings.items():
            if not r.ok:
                b = self.bad.setdefault(probe, [0, ""])
                if not b[0]:
                    b[1] = r.error
                b[0] += 1
                continue
            self.bad.setdefault(probe, [0, ""])
            if (
                probe not in ("postgres", "redis", "pods", "pg_queues")
                or self.seen.get(probe) == r.t
            ):
                continue
            self.seen[probe] = r.t
            self.lasts[probe] = r
            if probe == "postgres":
                self.pg.add(r)
            elif probe == "redis":
                self.rd.add(r, self.before.get("redis"))
            elif probe == "pg_queues":
                bf = self.before.get("pg_queues")
                if bf is not None and self.pgq.first_t is None:
                    self.pgq.add(bf.t, bf.data, before=True)
                self.pgq.add(r.t, r.data)
                if len(self.pgq_errors) < 20:
                    self.pgq_errors.update(r.data.get("errors") or ())
            else:
                self.pods.add(r, self.before.get("pods"))

    def _load(self) -> str:
        if self.mode == "rate" and self.rate:
            return f"rate {fmt.rate(self.rate)}/s"
        return f"concurrency {self.concurrency}"

    def lines(self, t0: float) -> list[str]:
        a = self.first.elapsed - self.first.interval - t0
        b = self.last.elapsed - t0
        out = [
            f"### Step {self.index}: {self._load()} "
            f"({fmt.clock(a)}–{fmt.clock(b)}, {self.ticks} ticks)",
            "",
        ]
        body: list[str] = []
        body += self.pg.lines(self.before.get("postgres"))
        body += self.rd.lines()
        body += self.pgq.lines()
        body += [f"- Postgres queue not read: {_md(e, 200)}" for e in sorted(self.pgq_errors)[:5]]
        pl = self.pods.lines()
        if pl:
            body += ([""] if body and body[-1].startswith("|") else []) + pl
        for probe in sorted(self.bad):
            n, err = self.bad[probe]
            if n:
                body.append(
                    f"- {probe} probe failing in {n} of {self.ticks} ticks: {_md(err, 200)}"
                )
        out += body or ["- no probe readings in this step"]
        out.append("")
        return out


class ProbeReport:
    """`probe_report_section`, fed one tick at a time: per step, what the
    probes saw, folded as the ticks pass (no tick or reading list is kept)."""

    def __init__(self) -> None:
        self.any = False
        self.t0: float | None = None
        self.out = ["## Systems under load", ""]
        self.step: _StepProbes | None = None
        self.last: dict[str, Reading] = {}
        self.n = 0

    def add(self, tk: Tick, hists: Any = None) -> None:
        if self.t0 is None:
            self.t0 = tk.elapsed - tk.interval
        self.any = self.any or bool(tk.readings)
        if self.step is None or self.step.key != step_key(tk):  # app.tick.step_key
            self._close()
            self.n += 1
            self.step = _StepProbes(self.n, tk, self.last)
        self.step.add(tk)

    def _close(self) -> None:
        st = self.step
        if st is None:
            return
        self.out += st.lines(self.t0 or 0.0)
        self.last.update(st.lasts)
        self.step = None

    def result(self) -> str:
        self._close()
        if not self.any:
            return ""
        return "\n".join(_blank_after_tables(self.out)).rstrip() + "\n"


def probe_report_section(ticks: Iterable[Tick]) -> str:
    """Markdown: per step (a run of ticks with the same target concurrency), what
    the probes saw. "" when no tick carries a probe reading."""
    acc = ProbeReport()
    for t in ticks:
        acc.add(t)
    return acc.result()


def _blank_after_tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].startswith("|") and line and not line.startswith("|"):
            out.append("")
        out.append(line)
    return out
