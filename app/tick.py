"""The timeline's data: one immutable `Tick` per window, and its JSON form.

Everything downstream of the engine (recorder, detectors, console, headless
printer, report) reads `Tick`s and nothing else. The engine builds the raw
tick when a window closes; the session's enrichers return copies with
anomalies, thresholds and invariant results added; nobody mutates a tick.

Latencies are microseconds in HdrHistograms (1 µs .. 60 s, 3 significant
digits). Probe readings are JSON-able mappings whose shapes are documented in
`app.probes` (see `app/probes/schema.py`); the tick does not interpret them.

Over ~500 lines on purpose: the data model and its JSON form (the recording
format) change together, field by field, so they live in one module.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import weakref
from collections.abc import Iterable, Mapping
from ctypes import addressof
from dataclasses import dataclass, field
from typing import Any, Literal

from hdrh.histogram import HdrHistogram
from pyhdrh import add_array as _add_array

HIST_MIN_US = 1
HIST_MAX_US = 60_000_000
HIST_DIGITS = 3

RECORDING_VERSION = 1

SEVERITIES = ("info", "warning", "critical")


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds: 1 µs .. 60 s, 3 digits."""
    return acyclic(HdrHistogram(HIST_MIN_US, HIST_MAX_US, HIST_DIGITS))


def acyclic(h: HdrHistogram) -> HdrHistogram:
    """`h` without hdrh's reference cycle (histogram -> encoder -> histogram),
    so its 139 KB of counts are freed as soon as the last reference goes.

    With the cycle only the cyclic garbage collector frees a histogram, and
    one that survived a young collection (a tick waiting a frame for the
    console, say) waits for a full one, which a process with many long-lived
    objects (Textual's DOM) runs rarely: the console held up to ~5,000 dead
    histograms (~700 MB) between full collections (issue 10). Every
    histogram loadtop makes goes through here (`new_histogram`, `_decode_raw`).
    """
    enc = h.encoder
    if not isinstance(enc.histogram, weakref.ProxyType):
        enc.histogram = weakref.proxy(h)
    return h


def merge_histograms(hists: Iterable[HdrHistogram]) -> HdrHistogram:
    """Exact merge of interval histograms (never average percentiles)."""
    out = new_histogram()
    for h in hists:
        add_histogram(out, h)
    return out


def add_histogram(out: HdrHistogram, h: Any) -> None:
    """`out += h`, exactly; an encoded `LazyHist` is added without keeping
    its decoded form (so a merge over a long recording stays small)."""
    if h is None:
        return
    if isinstance(h, LazyHist):
        if h._h is None:
            if h.total:
                d = h.decode_once()
                if d.get_total_count():
                    _add(out, d)
            return
        h = h._h
    if h.get_total_count():
        _add(out, h)


def _add(out: HdrHistogram, h: HdrHistogram) -> None:
    """`out.add(h)`, adding only h's occupied span of buckets (hdrh adds all
    17,408 counters: most of the cost of merging a long recording)."""
    if (out.bucket_count, out.sub_bucket_count, out.unit_magnitude, out.word_size) != (
        h.bucket_count,
        h.sub_bucket_count,
        h.unit_magnitude,
        h.word_size,
    ) or out.counts_len != h.counts_len:
        out.add(h)
        return
    lo = h._counts_index_for(h.get_min_value())
    hi = h._counts_index_for(h.get_max_value()) + 1
    ws = h.word_size
    _add_array(
        addressof(out.encoder.get_counts()) + lo * ws,
        addressof(h.encoder.get_counts()) + lo * ws,
        hi - lo,
        ws,
    )
    # as HdrHistogram.add does
    out.total_count += h.get_total_count()
    out.max_value = max(out.max_value, h.get_max_value())
    out.min_value = min(out.get_min_value(), h.get_min_value())


def window_hists(tick: Tick) -> list[HdrHistogram]:
    """Each scenario window's histogram, decoded once for this call and not
    kept on the tick (a streaming report merges them and lets them go)."""
    return [
        h.decode_once() if isinstance(h, LazyHist) else h for h in (s.hist for s in tick.scenarios)
    ]


class LazyHist:
    """A latency histogram kept in HdrHistogram's compressed encoding (about
    1 KB instead of 139 KB for the full 1 µs..60 s counts array) and decoded
    on first use. Stands in for an `HdrHistogram` wherever one is read: every
    attribute not its own is the decoded histogram's. Used for ticks read
    back from a recording and for ticks kept in memory for a while."""

    __slots__ = ("_h", "text", "total")

    def __init__(self, text: str, total: int | None = None) -> None:
        self.text = text
        self.total = 1 if total is None else total  # 0: known empty, no decode needed
        self._h: HdrHistogram | None = None

    @classmethod
    def of(cls, h: HdrHistogram | LazyHist) -> LazyHist:
        """`h` encoded; a `LazyHist` gives a copy without its decoded form."""
        if isinstance(h, LazyHist):
            return cls(h.text, h.total)
        return cls(encode_histogram(h), h.get_total_count())

    def decode_once(self) -> HdrHistogram:
        """The decoded histogram, not kept (for a one-off merge)."""
        return self._h if self._h is not None else _decode_raw(self.text)

    def decoded(self) -> HdrHistogram:
        if self._h is None:
            self._h = decode_histogram(self.text)
        return self._h

    def release(self) -> None:
        """Drop the decoded form (the encoding stays)."""
        self._h = None

    def encode(self) -> str:
        return self.text

    def get_total_count(self) -> int:
        if self._h is None and self.total == 0:
            return 0
        return self.decoded().get_total_count()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoded(), name)


def encode_histogram(h: HdrHistogram) -> str:
    """HdrHistogram's standard compressed, base64 encoding, as text."""
    if isinstance(h, LazyHist):
        return h.text
    raw = h.encode()
    return raw.decode("ascii") if isinstance(raw, bytes) else raw


def decode_histogram(text: str) -> HdrHistogram:
    h = _decode_raw(text)
    if (h.lowest_trackable_value, h.highest_trackable_value, h.significant_figures) == (
        HIST_MIN_US,
        HIST_MAX_US,
        HIST_DIGITS,
    ) and h.word_size == 8:
        return h  # already ours: no copy
    # decode() keeps the encoder's range; normalise to ours for exact merges.
    out = new_histogram()
    out.add(h)
    return out


def _decode_raw(text: str) -> HdrHistogram:
    # Validate the base64 first so a corrupted line gives a clean ValueError.
    base64.b64decode(text, validate=True)
    return acyclic(HdrHistogram.decode(text.encode("ascii")))


def _counts(h: HdrHistogram) -> memoryview:
    """The histogram's counts up to its highest recorded value, as C integers."""
    top = h._counts_index_for(h.get_max_value()) + 1
    fmts: dict[int, Literal["H", "I", "Q"]] = {2: "H", 4: "I", 8: "Q"}
    fmt = fmts[h.word_size]
    return memoryview(h.counts).cast("B").cast(fmt)[:top]


def values_at_percentiles(h: HdrHistogram, ps: Iterable[float]) -> list[int]:
    """`h.get_value_at_percentile(p)` for each p (µs), in one pass.

    hdrh walks its counts in Python for every percentile (about 1 ms each on
    a 1 µs..60 s histogram) and for the mean (about 40 ms); a C-level
    cumulative sum and a bisect give the same values in a fraction of that.
    """
    ps = list(ps)
    total = h.get_total_count()
    if not total:
        return [0 for _ in ps]
    counts = _counts(h)
    cum = list(itertools.accumulate(counts))
    last = len(cum) - 1
    out = []
    for p in ps:
        need = max(int(p / 100.0 * total + 0.5), 1)
        i = min(bisect.bisect_left(cum, need), last)
        out.append(h.get_highest_equivalent_value(h.get_value_from_index(i)))
    return out


def mean_value(h: HdrHistogram) -> float:
    """`h.get_mean_value()` (µs), visiting only the non-empty buckets."""
    total = h.get_total_count()
    if not total:
        return 0.0
    acc = 0
    for i, c in enumerate(_counts(h)):
        if c:
            acc += c * h._hdr_median_equiv_value(h.get_value_from_index(i))
    return acc / total


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latency figures in milliseconds for one histogram."""

    count: int
    p50: float
    p95: float
    p99: float
    p999: float
    max: float
    mean: float

    @classmethod
    def of(cls, h: HdrHistogram, *, with_mean: bool = False) -> Percentiles:
        """Figures of `h`; the mean costs a walk over the non-empty buckets,
        so it is computed only when asked for (the report does; ticks don't)."""
        n = h.get_total_count()
        if not n:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ms = 1000.0
        p50, p95, p99, p999 = values_at_percentiles(h, (50, 95, 99, 99.9))
        return cls(
            count=n,
            p50=p50 / ms,
            p95=p95 / ms,
            p99=p99 / ms,
            p999=p999 / ms,
            max=h.get_max_value() / ms,
            mean=mean_value(h) / ms if with_mean else 0.0,
        )


@dataclass(frozen=True, slots=True)
class ScenarioWindow:
    """One scenario's load figures for one tick's window."""

    name: str
    concurrency: int  # workers of this scenario alive at the close of the window
    target: int  # workers this scenario should have
    started: int
    ok: int
    failed: int
    errors: Mapping[str, int]  # error class -> count (see app.engine.errors)
    hist: HdrHistogram  # latency of completed operations (ok and failed), µs (or a LazyHist)
    # open model (--rate) only; zeros in the closed model
    scheduled: int = 0  # operations whose intended start fell in this window
    dropped: int = 0  # intended starts skipped because no worker was free
    lag_ms: float = 0.0  # worst schedule lag (actual start - intended start)
    last_error: str = ""  # one example message of the commonest error class
    counters: Mapping[str, int] = field(default_factory=dict)  # ctx.count(): name -> n

    @property
    def completed(self) -> int:
        return self.ok + self.failed

    def latency(self) -> Percentiles:
        return Percentiles.of(self.hist)


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A change to the load, and who made it.

    kind: concurrency | rate | pause | resume | panic | plan-start | plan-stop |
          plan-step | plan-paused | abort | step-size | backend-cancel |
          backend-terminate | export | start | stop
    source: cli | plan | key | threshold | signal | system
    """

    t: float
    kind: str
    source: str
    before: float | None = None
    after: float | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Reading:
    """The latest result of one probe. `ok=False` readings carry `error`,
    a sentence that says what is wrong and what to do."""

    probe: str  # "postgres" | "redis" | "pods" | ...
    t: float  # wall time the poll finished
    ok: bool
    duration_ms: float
    data: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A condition a detector raised. `key` is stable while the condition
    lasts (kind + subject), so the console and report can follow it."""

    key: str
    kind: str
    severity: str  # info | warning | critical
    subject: str  # a scenario name or a target ("postgres", "redis:lock:orders")
    started_tick: int
    started_at: float
    summary: str  # one line a person can act on
    evidence: Mapping[str, Any] = field(default_factory=dict)
    cleared_tick: int | None = None
    cleared_at: float | None = None


@dataclass(frozen=True, slots=True)
class ThresholdStatus:
    expr: str  # as given: "p95>500ms"
    value: float | None  # the figure this tick, in the expression's unit
    breached: bool  # the condition holds this tick
    streak: int  # consecutive ticks it has held
    tripped: bool  # held long enough to act


@dataclass(frozen=True, slots=True)
class ControlState:
    """Where the controls stood at the close of the window, so a front end
    needs no copy of its own. `target` is the total target as set (a pause
    does not zero it); `targets`/`rates` are the per-scenario shares now."""

    paused: bool = False
    panicked: bool = False
    plan_running: bool = False
    plan_step: int | None = None  # the plan's current step, also while it is paused
    plan_steps: int = 0  # steps in the ramp plan (0: none)
    mode: str = "workers"
    target: int = 0
    rate: float | None = None
    targets: Mapping[str, int] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)


def _control_to_json(c: ControlState) -> dict[str, Any]:
    return {
        "paused": c.paused,
        "panicked": c.panicked,
        "plan_running": c.plan_running,
        "plan_step": c.plan_step,
        "plan_steps": c.plan_steps,
        "mode": c.mode,
        "target": c.target,
        "rate": c.rate,
        "targets": dict(c.targets),
        "rates": {k: round(v, 6) for k, v in c.rates.items()},
    }


def _control_from_json(d: Mapping[str, Any]) -> ControlState:
    return ControlState(
        paused=bool(d.get("paused", False)),
        panicked=bool(d.get("panicked", False)),
        plan_running=bool(d.get("plan_running", False)),
        plan_step=d.get("plan_step"),
        plan_steps=int(d.get("plan_steps", 0)),
        mode=str(d.get("mode", "workers")),
        target=int(d.get("target", 0)),
        rate=d.get("rate"),
        targets={str(k): int(v) for k, v in (d.get("targets") or {}).items()},
        rates={str(k): float(v) for k, v in (d.get("rates") or {}).items()},
    )


@dataclass(frozen=True, slots=True)
class GeneratorStats:
    """loadtop's own health, so the tool's limits are not blamed on the target."""

    loop_lag_ms: float = 0.0
    cpu_pct: float = 0.0
    rss_mb: float = 0.0


@dataclass(frozen=True, slots=True)
class Tick:
    index: int
    t: float  # wall time at the close of the window (epoch seconds)
    elapsed: float  # seconds since the load started
    interval: float  # window length in seconds
    mode: str  # "workers" (closed model) | "rate" (open model)
    target_concurrency: int
    concurrency: int  # achieved: workers alive at the close of the window
    rate: float | None = None  # open model: intended operations per second
    paused: bool = False
    plan_step: int | None = None  # index into the ramp plan while it runs
    scenarios: tuple[ScenarioWindow, ...] = ()
    readings: Mapping[str, Reading] = field(default_factory=dict)
    anomalies: tuple[Anomaly, ...] = ()  # active at the close of this tick
    cleared: tuple[Anomaly, ...] = ()  # cleared in this tick
    events: tuple[ControlEvent, ...] = ()
    thresholds: tuple[ThresholdStatus, ...] = ()
    generator: GeneratorStats = field(default_factory=GeneratorStats)
    # the controls at the close (None in recordings made before it existed)
    control: ControlState | None = None
    # verify() results that completed in this window: scenario -> violations
    # (an empty tuple: the check ran and found nothing)
    invariants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    # ---- derived figures, all scenarios together -------------------------
    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.scenarios)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.scenarios)

    @property
    def completed(self) -> int:
        return self.ok + self.failed

    @property
    def ops_per_s(self) -> float:
        return self.completed / self.interval if self.interval > 0 else 0.0

    @property
    def is_drain(self) -> bool:
        """The last, partial window, closed after the load stopped: it holds the
        operations that were in flight at the stop, which are the slow ones (an
        operation in flight at a random moment is more likely a long one), over
        a few milliseconds. Its percentiles are a tail and its rate means little;
        the report still merges its histogram, so no operation is lost."""
        return any(e.kind == "stop" for e in self.events)

    @property
    def error_ratio(self) -> float:
        return self.failed / self.completed if self.completed else 0.0

    def histogram(self) -> HdrHistogram:
        return merge_histograms(s.hist for s in self.scenarios)

    def latency(self) -> Percentiles:
        return Percentiles.of(self.histogram())

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.scenarios:
            for k, v in s.errors.items():
                out[k] = out.get(k, 0) + v
        return out

    def counters(self) -> dict[str, int]:
        """ctx.count() figures in this tick; "scenario: name" when several
        scenarios run, so two scenarios' "rejected" stay apart."""
        many = len(self.scenarios) > 1
        out: dict[str, int] = {}
        for s in self.scenarios:
            for k, v in s.counters.items():
                key = f"{s.name}: {k}" if many else k
                out[key] = out.get(key, 0) + v
        return out

    def scenario(self, name: str) -> ScenarioWindow | None:
        for s in self.scenarios:
            if s.name == name:
                return s
        return None


# ---- load steps ------------------------------------------------------------


def step_key(tick: Tick, target: int | None = None) -> tuple[int, str, float | None]:
    """What makes a load step: target concurrency, mode and, in the open model,
    the rate. `target`: a scenario's own target instead of the session's."""
    conc = tick.target_concurrency if target is None else target
    return (conc, tick.mode, tick.rate if tick.mode == "rate" else None)


@dataclass(slots=True)
class Step:
    """A run of consecutive ticks with the same `step_key`."""

    number: int  # 1-based, as the console's plan display counts
    concurrency: int  # target concurrency
    mode: str
    rate: float | None
    ticks: list[Tick]

    @property
    def first(self) -> int:
        return self.ticks[0].index

    @property
    def last(self) -> int:
        return self.ticks[-1].index

    @property
    def seconds(self) -> float:
        return sum(t.interval for t in self.ticks)


def steps(ticks: Iterable[Tick]) -> list[Step]:
    """The load steps of a run, in order: every report table, the probe summary
    and the detectors split and number steps this one way."""
    out: list[Step] = []
    key: tuple[int, str, float | None] | None = None
    for t in ticks:
        k = step_key(t)
        if out and k == key:
            out[-1].ticks.append(t)
        else:
            out.append(Step(len(out) + 1, t.target_concurrency, t.mode, t.rate, [t]))
            key = k
    return out


# ---- JSON form (the recording) -------------------------------------------


def tick_p95_ms(tick: Tick) -> float:
    """p95 of all scenarios' operations in the tick, ms (0 without any)."""
    h = tick.histogram()
    if not h.get_total_count():
        return 0.0
    return values_at_percentiles(h, (95,))[0] / 1000.0


_EMPTY_TEXT: str | None = None


def lazy_hist(text: str) -> LazyHist:
    """A recording's encoded histogram, checked but not decoded."""
    global _EMPTY_TEXT
    if _EMPTY_TEXT is None:
        _EMPTY_TEXT = encode_histogram(new_histogram())
    if not isinstance(text, str):
        raise TypeError("hist is not text")
    base64.b64decode(text, validate=True)  # a damaged line is an error when read
    return LazyHist(text, 0 if text == _EMPTY_TEXT else None)


def tick_to_json(tick: Tick) -> dict[str, Any]:
    """The tick's recording line. `p95_ms` (all scenarios merged) is derived,
    written so a replay can chart a long recording without decoding every
    histogram; readers that do not know it ignore it."""
    return {
        "type": "tick",
        "index": tick.index,
        "t": round(tick.t, 3),
        "elapsed": round(tick.elapsed, 3),
        "interval": round(tick.interval, 4),
        "mode": tick.mode,
        "target_concurrency": tick.target_concurrency,
        "concurrency": tick.concurrency,
        "rate": tick.rate,
        "paused": tick.paused,
        "plan_step": tick.plan_step,
        "scenarios": [
            {
                "name": s.name,
                "concurrency": s.concurrency,
                "target": s.target,
                "started": s.started,
                "ok": s.ok,
                "failed": s.failed,
                "errors": dict(s.errors),
                "hist": encode_histogram(s.hist),
                "scheduled": s.scheduled,
                "dropped": s.dropped,
                "lag_ms": round(s.lag_ms, 3),
                "last_error": s.last_error,
                **({"counters": dict(s.counters)} if s.counters else {}),
            }
            for s in tick.scenarios
        ],
        "readings": {
            name: {
                "probe": r.probe,
                "t": round(r.t, 3),
                "ok": r.ok,
                "duration_ms": round(r.duration_ms, 3),
                "data": r.data,
                "error": r.error,
            }
            for name, r in tick.readings.items()
        },
        "anomalies": [_anomaly_to_json(a) for a in tick.anomalies],
        "cleared": [_anomaly_to_json(a) for a in tick.cleared],
        "events": [
            {
                "t": round(e.t, 3),
                "kind": e.kind,
                "source": e.source,
                "before": e.before,
                "after": e.after,
                "note": e.note,
            }
            for e in tick.events
        ],
        "thresholds": [
            {
                "expr": th.expr,
                "value": th.value,
                "breached": th.breached,
                "streak": th.streak,
                "tripped": th.tripped,
            }
            for th in tick.thresholds
        ],
        "generator": {
            "loop_lag_ms": round(tick.generator.loop_lag_ms, 3),
            "cpu_pct": round(tick.generator.cpu_pct, 1),
            "rss_mb": round(tick.generator.rss_mb, 1),
        },
        **({"control": _control_to_json(tick.control)} if tick.control is not None else {}),
        **(
            {"invariants": {k: list(v) for k, v in tick.invariants.items()}}
            if tick.invariants
            else {}
        ),  # fmt: skip
        "p95_ms": round(tick_p95_ms(tick), 3),
    }


def _anomaly_to_json(a: Anomaly) -> dict[str, Any]:
    return {
        "key": a.key,
        "kind": a.kind,
        "severity": a.severity,
        "subject": a.subject,
        "started_tick": a.started_tick,
        "started_at": round(a.started_at, 3),
        "summary": a.summary,
        "evidence": a.evidence,
        "cleared_tick": a.cleared_tick,
        "cleared_at": None if a.cleared_at is None else round(a.cleared_at, 3),
    }


def _anomaly_from_json(d: Mapping[str, Any]) -> Anomaly:
    return Anomaly(
        key=d["key"],
        kind=d["kind"],
        severity=d["severity"],
        subject=d.get("subject", ""),
        started_tick=int(d["started_tick"]),
        started_at=float(d["started_at"]),
        summary=d.get("summary", ""),
        evidence=d.get("evidence") or {},
        cleared_tick=d.get("cleared_tick"),
        cleared_at=d.get("cleared_at"),
    )


def tick_from_json(d: Mapping[str, Any]) -> Tick:
    """Inverse of `tick_to_json`. Raises KeyError/ValueError/TypeError on a
    malformed line; the recording reader turns those into one clear error."""
    return Tick(
        index=int(d["index"]),
        t=float(d["t"]),
        elapsed=float(d["elapsed"]),
        interval=float(d["interval"]),
        mode=str(d["mode"]),
        target_concurrency=int(d["target_concurrency"]),
        concurrency=int(d["concurrency"]),
        rate=d.get("rate"),
        paused=bool(d.get("paused", False)),
        plan_step=d.get("plan_step"),
        scenarios=tuple(
            ScenarioWindow(
                name=s["name"],
                concurrency=int(s["concurrency"]),
                target=int(s.get("target", s["concurrency"])),
                started=int(s["started"]),
                ok=int(s["ok"]),
                failed=int(s["failed"]),
                errors={str(k): int(v) for k, v in s.get("errors", {}).items()},
                hist=lazy_hist(s["hist"]),
                scheduled=int(s.get("scheduled", 0)),
                dropped=int(s.get("dropped", 0)),
                lag_ms=float(s.get("lag_ms", 0.0)),
                last_error=s.get("last_error", ""),
                counters={str(k): int(v) for k, v in (s.get("counters") or {}).items()},
            )
            for s in d.get("scenarios", [])
        ),
        readings={
            name: Reading(
                probe=r["probe"],
                t=float(r["t"]),
                ok=bool(r["ok"]),
                duration_ms=float(r.get("duration_ms", 0.0)),
                data=r.get("data") or {},
                error=r.get("error", ""),
            )
            for name, r in (d.get("readings") or {}).items()
        },
        anomalies=tuple(_anomaly_from_json(a) for a in d.get("anomalies", [])),
        cleared=tuple(_anomaly_from_json(a) for a in d.get("cleared", [])),
        events=tuple(
            ControlEvent(
                t=float(e["t"]),
                kind=e["kind"],
                source=e["source"],
                before=e.get("before"),
                after=e.get("after"),
                note=e.get("note", ""),
            )
            for e in d.get("events", [])
        ),
        thresholds=tuple(
            ThresholdStatus(
                expr=th["expr"],
                value=th.get("value"),
                breached=bool(th["breached"]),
                streak=int(th["streak"]),
                tripped=bool(th["tripped"]),
            )
            for th in d.get("thresholds", [])
        ),
        generator=GeneratorStats(**(d.get("generator") or {})),
        control=_control_from_json(d["control"]) if d.get("control") else None,
        invariants={
            str(k): tuple(str(v) for v in vs) for k, vs in (d.get("invariants") or {}).items()
        },
    )
