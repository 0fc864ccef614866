"""The detector framework: findings in, anomalies out, with hysteresis.

A detector is one small class. Once per tick it looks at the tick (and its
own bounded state) and returns `Finding`s: "this condition holds for this
subject now". It never decides when an anomaly starts or ends; `DetectorSet`
does that for every detector alike:

- a condition must hold `raise_ticks` consecutive ticks before it is raised;
  the anomaly's `started_tick` is the first of those ticks (the onset);
- a raised anomaly stays active until its condition has been absent for
  `clear_ticks` consecutive ticks, so it does not flap;
- a `Finding(sustain=True)` (the value sits between the clear and the raise
  threshold) keeps an active anomaly alive but never raises a new one, which
  gives two-threshold hysteresis;
- the key is `kind:subject` (or `kind:ident`), stable while the condition lasts; severity,
  summary and evidence follow the latest finding.

Adding a detector: subclass `Detector`, set `kind`, give it an `Options`
dataclass (subclass of `Options`, every field with a default) and a `check`
method, and add the class to `BUILTIN` in `app.detect.detectors`. Nothing is
registered by importing a module: a `DetectorSet` runs the classes it is given.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from app.tick import Anomaly, Percentiles, ScenarioWindow, Tick

log = logging.getLogger(__name__)

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}

MAX_TRACKS = 1000  # active + pending conditions the set follows at most


@dataclass(frozen=True, slots=True)
class Finding:
    """A condition that holds for `subject` in this tick."""

    subject: str
    summary: str
    severity: str = "warning"
    evidence: Mapping[str, Any] = field(default_factory=dict)
    sustain: bool = False  # keeps an active anomaly alive; never raises a new one
    ident: str | None = None  # the key's tail when the subject alone is not unique

    def key(self, kind: str) -> str:
        return f"{kind}:{self.ident or self.subject}"


@dataclass
class Options:
    """Options every detector has. `None` means the detector's own default."""

    enabled: bool = True
    raise_ticks: int | None = None  # consecutive ticks a condition must hold to be raised
    clear_ticks: int | None = None  # consecutive ticks it must be gone to be cleared


# ---- a per-tick view shared by all detectors -----------------------------------


class TickView:
    """What detectors read, computed once per tick: latency figures per
    scenario (cached) and the fresh, successful probe readings by probe."""

    def __init__(self, tick: Tick, stale_after_s: float) -> None:
        self.tick = tick
        self._stale = stale_after_s
        self._lat: dict[str, Percentiles] = {}

    def latency(self, s: ScenarioWindow) -> Percentiles:
        got = self._lat.get(s.name)
        if got is None:
            got = self._lat[s.name] = s.latency()
        return got

    def readings(self, probe: str) -> Iterator[tuple[str, float, Mapping[str, Any]]]:
        """(reading name, poll time, data) for each fresh ok reading of `probe`."""
        for name, r in self.tick.readings.items():
            if r.probe != probe or not r.ok:
                continue
            if self._stale > 0 and self.tick.t - r.t > self._stale:
                continue
            yield name, r.t, r.data


# ---- detectors -----------------------------------------------------------------


# `Detector.Options` (the class attribute) shadows the module-level class inside
# the class body, so annotations there name the base class through this alias.
_BaseOptions = Options


class Detector:
    """One kind of anomaly. Subclasses set `kind`, `Options`, and `check`."""

    kind: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    raise_ticks: ClassVar[int] = 1
    clear_ticks: ClassVar[int] = 3
    description: ClassVar[str] = ""

    def __init__(self, options: _BaseOptions | None = None) -> None:
        self.opt = options if options is not None else self.Options()

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        raise NotImplementedError

    @property
    def raise_after(self) -> int:
        return max(1, self.opt.raise_ticks or self.raise_ticks)

    @property
    def clear_after(self) -> int:
        return max(1, self.opt.clear_ticks or self.clear_ticks)


def by_kind(detectors: Iterable[type[Detector]]) -> dict[str, type[Detector]]:
    """kind -> class, in the order given. A kind empty or given twice is a ValueError."""
    out: dict[str, type[Detector]] = {}
    for cls in detectors:
        if not cls.kind or cls.kind in out:
            raise ValueError(
                f"detector kind {cls.kind!r} of {cls.__name__} is empty or given twice"
            )
        out[cls.kind] = cls
    return out


# ---- configuration -------------------------------------------------------------


def _norm(name: str) -> str:
    return name.strip().replace("_", "-").lower()


@dataclass
class DetectConfig:
    """Which detectors run and their thresholds.

    From a dict (the `[detect]` table of loadtop.toml, or flags)::

        enabled = ["latency-spike", "slo-breach"]   # default: every kind
        disabled = ["pod"]
        stale_after_s = 30
        [detect.latency-spike]
        k = 6
        [detect.slo-breach]
        p95_ms = 300
        # or: slo = {p95_ms = 300, p99_ms = 800, error_pct = 0.5} (the session's SLO)

    Dotted keys work too: {"latency-spike.k": 6}. Underscores and hyphens are
    interchangeable in kind names. Unknown keys are a ValueError whose one-line
    message lists what is valid.
    """

    options: dict[str, Options] = field(default_factory=dict)
    stale_after_s: float = 30.0  # readings older than this are ignored

    def enabled_kinds(self) -> list[str]:
        return [k for k, o in self.options.items() if o.enabled]

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, detectors: Iterable[type[Detector]]
    ) -> DetectConfig:
        """The config for `detectors` (their kinds are what `data` may name)."""
        known = by_kind(detectors)
        cfg = cls({kind: c.Options() for kind, c in known.items()})
        if not data:
            return cfg
        nested: dict[str, dict[str, Any]] = {}
        for raw_key, value in data.items():
            key = str(raw_key)
            if key in ("enabled", "disabled"):
                continue
            if key == "stale_after_s":
                cfg.stale_after_s = _coerce("stale_after_s", value, 30.0)
                continue
            if key == "slo":  # the session's SLO feeds slo-breach
                nested.setdefault("slo-breach", {}).update(slo_options(value))
                continue
            if "." in key:
                kind, opt = key.split(".", 1)
                nested.setdefault(_norm(kind), {})[opt] = value
                continue
            kind = _norm(key)
            if kind in known:
                if not isinstance(value, Mapping):
                    raise ValueError(f"detect: [{kind}] must be a table of options, not {value!r}")
                nested.setdefault(kind, {}).update(value)
                continue
            raise ValueError(
                f"detect: unknown key {key!r}; valid: enabled, disabled, stale_after_s, slo, "
                f"or a detector kind: {', '.join(known)}"
            )
        for name in ("enabled", "disabled"):
            if name in data:
                kinds = data[name]
                if isinstance(kinds, str):
                    kinds = [k for k in kinds.split(",") if k.strip()]
                kinds = [_norm(k) for k in kinds]
                bad = [k for k in kinds if k not in known]
                if bad:
                    raise ValueError(
                        f"detect: unknown kind {bad[0]!r} in {name}; valid: {', '.join(known)}"
                    )
                if name == "enabled":
                    for k in known:
                        cfg.options[k].enabled = k in kinds
                else:
                    for k in kinds:
                        cfg.options[k].enabled = False
        for kind, opts in nested.items():
            if kind not in known:
                raise ValueError(
                    f"detect: unknown detector kind {kind!r}; valid: {', '.join(known)}"
                )
            target = cfg.options[kind]
            fields = {f.name: f for f in dataclasses.fields(target)}
            for opt, value in opts.items():
                name = opt.replace("-", "_")
                if name not in fields:
                    raise ValueError(
                        f"detect: unknown option {opt!r} for {kind}; valid: {', '.join(fields)}"
                    )
                setattr(target, name, _coerce(f"{kind}.{name}", value, getattr(target, name)))
        return cfg


def slo_options(slo: Any) -> dict[str, Any]:
    """{p95_ms, p99_ms, error_pct | error_ratio} -> slo-breach options."""
    if not isinstance(slo, Mapping):
        raise ValueError(f"detect: slo must be a table (p95_ms, p99_ms, error_pct), not {slo!r}")
    out: dict[str, Any] = {}
    for k, v in slo.items():
        if k in ("p95_ms", "p99_ms", "error_ratio"):
            out[k] = v
        elif k == "error_pct":
            out["error_ratio"] = _coerce("slo.error_pct", v, 0.1) / 100.0
        elif k == "dropped_pct":
            continue  # the run's verdict judges delivered load; no detector reads it
        else:
            raise ValueError(
                f"detect: unknown slo key {k!r}; valid: p95_ms, p99_ms, error_pct, error_ratio"
            )
    return out


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(value)
        if default is None:  # optional ints (raise_ticks, clear_ticks) and floats
            return None if value is None else (int(value) if float(value).is_integer() else value)
        return type(default)(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"detect: {name} = {value!r} is not a valid {type(default).__name__}"
        ) from None


# ---- the set: hysteresis and bookkeeping ---------------------------------------


@dataclass(slots=True)
class _Track:
    detector: Detector
    subject: str
    onset_tick: int
    onset_t: float
    streak: int = 0
    absent: int = 0
    anomaly: Anomaly | None = None


class DetectorSet:
    """Runs the enabled detectors once per tick and turns their findings into
    anomalies with hysteresis. State is bounded: one track per live condition."""

    def __init__(
        self, detectors: Iterable[type[Detector]], config: DetectConfig | None = None
    ) -> None:
        classes = by_kind(detectors)
        self.config = config or DetectConfig.from_dict(None, classes.values())
        opts = {k: self.config.options.get(k) or c.Options() for k, c in classes.items()}
        self.detectors: list[Detector] = [c(opts[k]) for k, c in classes.items() if opts[k].enabled]
        self._tracks: dict[str, _Track] = {}
        self._failed: set[str] = set()  # detectors that raised once (logged once)

    @property
    def kinds(self) -> list[str]:
        return [d.kind for d in self.detectors]

    def active(self) -> tuple[Anomaly, ...]:
        return tuple(t.anomaly for t in self._tracks.values() if t.anomaly is not None)

    def evaluate(self, tick: Tick) -> tuple[tuple[Anomaly, ...], tuple[Anomaly, ...]]:
        """Returns (active at the close of this tick, cleared in this tick)."""
        view = TickView(tick, self.config.stale_after_s)
        seen: dict[str, tuple[Detector, Finding]] = {}
        for det in self.detectors:
            try:
                findings = list(det.check(tick, view))
            except Exception:  # a detector bug must never stop the load
                if det.kind not in self._failed:
                    self._failed.add(det.kind)
                    log.exception("detector %s failed; it is skipped for this tick", det.kind)
                continue
            for f in findings:
                key = f.key(det.kind)
                old = seen.get(key)
                if old is None or _stronger(f, old[1]):
                    seen[key] = (det, f)

        cleared: list[Anomaly] = []
        for key, (det, f) in seen.items():
            tr = self._tracks.get(key)
            if tr is None:
                if f.sustain or len(self._tracks) >= MAX_TRACKS:
                    continue
                tr = self._tracks[key] = _Track(det, f.subject, tick.index, tick.t)
            tr.absent = 0
            if tr.anomaly is None:
                if f.sustain:
                    del self._tracks[key]  # a pending condition must hold at full strength
                    continue
                tr.streak += 1
                if tr.streak >= det.raise_after:
                    tr.anomaly = Anomaly(
                        key=key,
                        kind=det.kind,
                        severity=f.severity,
                        subject=f.subject,
                        started_tick=tr.onset_tick,
                        started_at=tr.onset_t,
                        summary=f.summary,
                        evidence=dict(f.evidence),
                    )
            else:
                a = tr.anomaly
                if (a.severity, a.summary) != (f.severity, f.summary) or a.evidence != f.evidence:
                    tr.anomaly = dataclasses.replace(
                        a, severity=f.severity, summary=f.summary, evidence=dict(f.evidence)
                    )
        for key in [k for k in self._tracks if k not in seen]:
            tr = self._tracks[key]
            if tr.anomaly is None:
                del self._tracks[key]
                continue
            tr.absent += 1
            if tr.absent >= tr.detector.clear_after:
                cleared.append(
                    dataclasses.replace(tr.anomaly, cleared_tick=tick.index, cleared_at=tick.t)
                )
                del self._tracks[key]
        return self.active(), tuple(cleared)


def _stronger(a: Finding, b: Finding) -> bool:
    if a.sustain != b.sustain:
        return not a.sustain
    return SEVERITY_RANK.get(a.severity, 0) > SEVERITY_RANK.get(b.severity, 0)


def config_reference(detectors: Iterable[type[Detector]]) -> str:
    """Markdown: every detector kind, what it raises, and its options with
    their defaults (for `loadtop.toml` documentation and `--help`)."""
    lines = ["| kind | raises | options (defaults) |", "|---|---|---|"]
    for kind, cls in by_kind(detectors).items():
        opts = cls.Options()
        shown = [
            f"{f.name}={getattr(opts, f.name)!r}"
            for f in dataclasses.fields(opts)
            if f.name not in ("enabled", "raise_ticks", "clear_ticks")
        ]
        shown.append(f"raise_ticks={cls.raise_ticks}, clear_ticks={cls.clear_ticks}")
        doc = " ".join((cls.__doc__ or "").split())
        lines.append(f"| `{kind}` | {doc} | {', '.join(shown)} |")
    return "\n".join(lines)


def detect_flags(
    items: Iterable[str],
    detectors: Iterable[type[Detector]],
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`--detect` flags onto a [detect] table: "latency-spike.k=6",
    "disabled=pod,redis-lock", "slo-breach.p95_ms=300". Later flags win."""
    out: dict[str, Any] = dict(base or {})
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--detect {item!r}: expected KIND.OPTION=VALUE or disabled=KIND,...")
        out[key.strip()] = value.strip()
    DetectConfig.from_dict(out, detectors)  # validate now: a bad flag is a one-line error at start
    return out
