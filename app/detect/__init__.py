"""Anomaly detection: detectors read the timeline of ticks and raise named
anomalies with evidence, with hysteresis so they do not flap.

The session's pipeline (app/session/pipeline.py) calls, once per tick::

    detectors = build_detectors(config.get("detect"))
    active, cleared = detectors.evaluate(tick)
    tick = dataclasses.replace(tick, anomalies=active, cleared=cleared)

verify() results reach the `invariant` detector in the tick (`tick.invariants`),
so detectors read ticks only and a recording can be re-detected. The report
calls `anomaly_report_section(ticks)`.
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
