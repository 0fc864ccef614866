"""Anomaly detection: detectors read the timeline of ticks and raise named
anomalies with evidence, with hysteresis so they do not flap.

The engine calls, once per tick::

    detectors = build_detectors(config.get("detect"))
    active, cleared = detectors.evaluate(tick)
    tick = dataclasses.replace(tick, anomalies=active, cleared=cleared)

and `detectors.note_invariants(scenario, violations)` with each verify()
result. The report calls `anomaly_report_section(ticks)`.
"""

from app.detect.base import (
    REGISTRY,
    DetectConfig,
    Detector,
    DetectorSet,
    Finding,
    Options,
    TickView,
    build_detectors,
    config_reference,
    detect_flags,
    register,
)
from app.detect.detectors import *  # noqa: F403  (registers every built-in kind)
from app.detect.report import anomaly_report_data, anomaly_report_section
from app.detect.stats import UslFit, fit_usl

KINDS = tuple(REGISTRY)

__all__ = [
    "KINDS",
    "REGISTRY",
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
    "register",
]
