"""What is news about an anomaly for a line-per-event output (headless mode):
raised, escalated (warning -> critical), or its evidence changed materially
(a figure doubled or halved, e.g. a queue's depth 230 -> 520). Each anomaly
key is followed with the figures last printed, so a steady anomaly prints once
and a worsening one prints again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.detect.base import SEVERITY_RANK
from app.tick import Anomaly

MIN_CHANGE = 10.0  # a figure must also move by at least this much (absolute)


def _figures(ev: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in ev.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("at",)
    }


class AnomalyNews:
    """`news(a)` -> a line for `a`, or None when nothing material changed."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, dict[str, float]]] = {}

    def news(self, a: Anomaly) -> str | None:
        figs = _figures(a.evidence)
        prev = self._last.get(a.key)
        if prev is None:
            self._last[a.key] = (a.severity, figs)
            return f"! {a.kind}: {a.summary}"
        sev, old = prev
        if SEVERITY_RANK.get(a.severity, 0) > SEVERITY_RANK.get(sev, 0):
            self._last[a.key] = (a.severity, figs)
            return f"!! {a.kind} {sev} -> {a.severity}: {a.summary}"
        moved = [
            f"{k} {_fmt(old[k])} -> {_fmt(v)}"
            for k, v in figs.items()
            if k in old
            and abs(v - old[k]) >= MIN_CHANGE
            and (abs(v) >= 2 * abs(old[k]) or abs(v) <= abs(old[k]) / 2)
        ]
        if not moved:
            return None
        self._last[a.key] = (a.severity if SEVERITY_RANK.get(a.severity, 0) >= SEVERITY_RANK.get(
            sev, 0) else sev, figs)  # fmt: skip
        return f"~ {a.kind} {', '.join(moved[:3])}: {a.summary}"

    def cleared(self, a: Anomaly) -> None:
        self._last.pop(a.key, None)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.2f}"
