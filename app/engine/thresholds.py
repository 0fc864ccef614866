"""`--abort-on` thresholds and the SLO verdict.

An expression is `<metric><op><number><unit>`: `p95>500ms`, `p99>1s`,
`errors>1%`, `ops<100/s`, `recovery>30s` (a fault's time to
recover, app/faults/recovery.py). It is evaluated on every tick's figures (all
scenarios together); it *trips* when it has held for `grace` consecutive
ticks (3 by default), and then the load stops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.tick import Percentiles, ThresholdStatus, Tick

_EXPR = re.compile(
    r"^\s*(?P<metric>p50|p90|p95|p99|p99\.9|p999|max|mean|errors|error_rate|ops|rps|recovery)\s*"
    r"(?P<op><=|>=|<|>)\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|us|µs|%|/s)?\s*$"
)

# dropped_pct: of a fixed-rate run's intended starts, the share skipped for want of a
# free worker. Past it the load asked for was not delivered, and the latency
# figures describe a lighter load than the one the verdict would be about.
DEFAULT_SLO = {"p95_ms": 500.0, "p99_ms": 1000.0, "error_pct": 0.1, "dropped_pct": 1.0}
GRACE_TICKS = 3


def recovery_seconds(tick: Tick) -> float | None:
    """The longest recovery among the `fault` anomalies of the tick (app.faults.
    recovery): a finished one's time, or the time so far for one still recovering."""
    best = None
    for a in (*tick.anomalies, *tick.cleared):
        if a.kind != "fault":
            continue
        ev = a.evidence
        v = ev.get("recovery_s") if ev.get("recovered") else ev.get("recovering_s")
        if v is not None:
            best = float(v) if best is None else max(best, float(v))
    return best


class ThresholdError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Threshold:
    expr: str
    metric: str  # p50 p90 p95 p99 p999 max mean errors ops
    op: str
    limit: float  # in the metric's unit: ms for latency, % for errors, 1/s for ops

    @classmethod
    def parse(cls, text: str) -> Threshold:
        m = _EXPR.match(text)
        if not m:
            raise ThresholdError(
                f"--abort-on {text!r} is not a threshold: use e.g. 'p95>500ms', 'p99>1s',"
                " 'errors>1%' or 'ops<100/s'"
            )
        metric = {"p99.9": "p999", "error_rate": "errors", "rps": "ops"}.get(
            m["metric"], m["metric"]
        )
        num = float(m["num"])
        unit = m["unit"] or ""
        if metric in ("errors",):
            if unit not in ("%", ""):
                raise ThresholdError(f"--abort-on {text!r}: errors take a percentage, e.g. 1%")
        elif metric == "recovery":
            if unit not in ("s", "ms", ""):
                raise ThresholdError(f"--abort-on {text!r}: recovery takes s, e.g. recovery>30s")
            num = num / 1000.0 if unit == "ms" else num
        elif metric == "ops":
            if unit not in ("/s", ""):
                raise ThresholdError(f"--abort-on {text!r}: ops take a rate, e.g. 100/s")
        else:
            if unit in ("%", "/s"):
                raise ThresholdError(f"--abort-on {text!r}: latency takes ms or s, e.g. 500ms")
            num = {"s": num * 1000.0, "us": num / 1000.0, "µs": num / 1000.0}.get(unit, num)
        return cls(expr=text.strip(), metric=metric, op=m["op"], limit=num)

    def value(self, tick: Tick) -> float | None:
        if self.metric == "recovery":
            return recovery_seconds(tick)
        if self.metric == "ops":
            return tick.ops_per_s
        if self.metric == "errors":
            return tick.error_ratio * 100.0 if tick.completed else None
        lat = (
            Percentiles.of(tick.histogram(), with_mean=True)
            if self.metric == "mean"
            else tick.latency()
        )
        if not lat.count:
            return None
        return float(getattr(lat, self.metric))

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return {
            ">": value > self.limit,
            ">=": value >= self.limit,
            "<": value < self.limit,
            "<=": value <= self.limit,
        }[self.op]


class ThresholdSet:
    """Evaluates thresholds tick by tick; keeps the streaks."""

    def __init__(self, thresholds: list[Threshold], grace: int = GRACE_TICKS) -> None:
        self.thresholds = thresholds
        self.grace = grace
        self._streak = [0] * len(thresholds)
        self.tripped: ThresholdStatus | None = None
        self.tripped_tick: int | None = None

    def evaluate(self, tick: Tick) -> tuple[ThresholdStatus, ...]:
        out = []
        for i, th in enumerate(self.thresholds):
            if th.metric != "recovery" and (
                tick.paused or (tick.concurrency == 0 and th.metric == "ops")
            ):
                # no load, no verdict: a paused run does not trip ops<N/s
                self._streak[i] = 0
                out.append(ThresholdStatus(th.expr, None, False, 0, False))
                continue
            v = th.value(tick)
            breached = th.holds(v)
            self._streak[i] = self._streak[i] + 1 if breached else 0
            # a recovery longer than the limit is a fact, not a noisy figure: no grace
            tripped = self._streak[i] >= self.grace or (breached and th.metric == "recovery")
            st = ThresholdStatus(th.expr, v, breached, self._streak[i], tripped)
            if tripped and self.tripped is None:
                self.tripped = st
                self.tripped_tick = tick.index
            out.append(st)
        return tuple(out)


def parse_thresholds(exprs: list[str]) -> list[Threshold]:
    return [Threshold.parse(e) for e in exprs]
