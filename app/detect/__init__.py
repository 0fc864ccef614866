"""Anomaly detection: detectors read the timeline of ticks and raise named
anomalies with evidence, with hysteresis so they do not flap.

The session's pipeline (app/session/pipeline.py) calls, once per tick::

    detectors = build_detectors(config.get("detect"))
    active, cleared = detectors.evaluate(tick)
    tick = dataclasses.replace(tick, anomalies=active, cleared=cleared)

verify() results reach the `invariant` detector in the tick (`tick.invariants`),
so detectors read ticks only and a recording can be re-detected. The report
calls `anomaly_report_section(ticks)`.

The detectors a session runs are `BUILTIN` (app.detect.detectors), passed to
the `DetectorSet` explicitly; the helpers below do that for callers.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from app.detect import base
from app.detect.base import DetectConfig, Detector, DetectorSet, Finding, Options, TickView
from app.detect.detectors import BUILTIN
from app.detect.report import anomaly_report_data, anomaly_report_section
from app.detect.stats import UslFit, fit_usl

KINDS = tuple(cls.kind for cls in BUILTIN)


def build_detectors(config: Mapping[str, Any] | None = None) -> DetectorSet:
    """The built-in detectors, configured from the `[detect]` table / flags (see DetectConfig)."""
    return DetectorSet(BUILTIN, DetectConfig.from_dict(config, BUILTIN))


def config_reference() -> str:
    """Markdown: every built-in detector kind and its options (see base.config_reference)."""
    return base.config_reference(BUILTIN)


def detect_flags(items: Iterable[str], table: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`--detect` flags onto a [detect] table, validated against the built-in kinds."""
    return base.detect_flags(items, BUILTIN, table)


__all__ = [
    "BUILTIN",
    "KINDS",
    "DetectConfig",
    "Detector",
    "DetectorSet",
    "Finding",
    "Options",
    "TickView",
    "UslFit",
    "anomaly_report_data",
    "anomaly_report_section",
    "build_detectors",
    "config_reference",
    "detect_flags",
    "fit_usl",
]
