"""One validated RunConfig: command-line flags, LOADTOP_* variables and
loadtop.toml all go through `build_run_config`, the one place that turns
operator input into a `RunConfig` (and the place a schema would go).

Bad input raises `UsageError`: one line that says what to fix (exit code 2).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from app.engine.engine import EngineConfig
from app.engine.thresholds import ThresholdError, parse_thresholds
from app.scenario import ScenarioError, check_processes, parse_mix
from app.targets import TargetError, check_http_url, check_pg_dsn, check_redis_url

if TYPE_CHECKING:
    from app.session.runner import RunConfig

ENV = {
    "pg": "LOADTOP_PG_DSN",
    "pg_monitor": "LOADTOP_PG_MONITOR_DSN",
    "redis": "LOADTOP_REDIS_URL",
    "http": "LOADTOP_HTTP_URL",
    "prometheus": "LOADTOP_PROMETHEUS_URL",
    "k8s_namespace": "LOADTOP_K8S_NAMESPACE",
    "k8s_selector": "LOADTOP_K8S_SELECTOR",
    "k8s_context": "LOADTOP_K8S_CONTEXT",
}
PROFILE_KEYS = {
    "pg", "pg_monitor", "redis", "http", "prometheus", "k8s_namespace", "k8s_selector",
    "k8s_context", "scenario", "concurrency", "max_concurrency", "steps", "step_seconds",
    "duration", "rate", "abort_on", "params", "readonly", "detect", "slo", "probe_intervals",
    "redis_lock_patterns", "redis_queue_patterns", "profile", "processes", "queue",
}  # fmt: skip


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def fail(msg: str) -> NoReturn:
    raise UsageError(msg)


# ---- parsing helpers -------------------------------------------------------------


def parse_duration(text: str, flag: str = "--duration") -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        fail(f"{flag} {text!r} is not a duration: use e.g. 90, 30s, 5m or 1h")
    v = float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m[2]]
    if v <= 0:
        fail(f"{flag} must be positive")
    return v


def parse_rate(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(/s|/m)?\s*", str(text))
    if not m or float(m[1]) <= 0:
        fail(f"--rate {text!r} is not a rate: use e.g. 200/s")
    return float(m[1]) / (60.0 if m[2] == "/m" else 1.0)


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        fail(f"--steps {text!r} is not a list of worker counts: use e.g. 1,2,4,8")
    if not steps or any(s < 0 for s in steps):
        fail(f"--steps {text!r}: give non-negative worker counts, e.g. 1,2,4,8")
    return steps


def parse_params(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            fail(f"-p {item!r} is not key=value (e.g. -p mode=unsafe)")
        out[k.strip()] = v
    return out


def parse_slo(text: str) -> dict[str, float]:
    """`p95=300ms,p99=1s,errors=0.5%` -> {"p95_ms": 300, "p99_ms": 1000, "error_pct": 0.5}."""
    out: dict[str, float] = {}
    for part in str(text).split(","):
        key, sep, val = part.strip().partition("=")
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|%)?\s*", val)
        if not sep or not m or key not in ("p95", "p99", "errors"):
            fail(f"--slo {text!r}: use e.g. p95=500ms,p99=1s,errors=0.1%")
        num, unit = float(m[1]), m[2]
        if key == "errors":
            if unit not in ("%", None):
                fail(f"--slo {text!r}: errors take a percentage, e.g. errors=0.1%")
            out["error_pct"] = num
        else:
            if unit == "%":
                fail(f"--slo {text!r}: {key} takes ms or s, e.g. {key}=500ms")
            out[f"{key}_ms"] = num * {"s": 1000.0, "us": 0.001, "µs": 0.001}.get(unit or "", 1.0)
    return out


def positive_int(flag: str, v: Any, minimum: int = 1) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError):
        fail(f"{flag} {v!r} is not a whole number: give e.g. {max(minimum, 8)}")
    if n < minimum:
        fail(f"{flag} must be at least {minimum}")
    return n


def load_profile(path: str | None, name: str | None) -> dict[str, Any]:
    """loadtop.toml: top-level keys are defaults; [profile.NAME] overrides."""
    p = Path(path) if path else Path("loadtop.toml")
    if not p.exists():
        if path:
            fail(f"--config {path} does not exist: give the path of a loadtop.toml")
        if name:
            fail(f"--profile {name}: no loadtop.toml in {Path.cwd()}")
        return {}
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        fail(f"{p}: invalid TOML ({e}): fix the file")
    except OSError as e:
        fail(f"{p} cannot be read ({e.strerror})")
    profiles = data.pop("profile", {})
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        fail(
            f"{p}: unknown key {sorted(unknown)[0]!r} (valid: {', '.join(sorted(PROFILE_KEYS - {'profile'}))})"
        )
    if name:
        if name not in profiles:
            have = ", ".join(sorted(profiles)) or "none"
            fail(f"{p}: no [profile.{name}]: add it or choose one of the profiles (have: {have})")
        prof = profiles[name]
        unknown = set(prof) - PROFILE_KEYS
        if unknown:
            fail(f"{p}: [profile.{name}] has unknown key {sorted(unknown)[0]!r}: remove it"
                 f" (valid: {', '.join(sorted(PROFILE_KEYS - {'profile'}))})")  # fmt: skip
        data.update(prof)
    return data


# ---- the RunConfig --------------------------------------------------------------


def build_run_config(
    args: Any,
    *,
    watch: bool = False,
    profile: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> RunConfig:
    """`args` (an argparse namespace, or any object with the flags as
    attributes) over the LOADTOP_* variables in `env` (default: os.environ)
    over `profile` (default: loadtop.toml, from --config / --profile).
    `watch`: no scenario, and a target is required."""
    from app.session.runner import RunConfig

    prof = (
        load_profile(getattr(args, "config", None), getattr(args, "profile", None))
        if profile is None
        else dict(profile)
    )
    environ = os.environ if env is None else env

    def _pick(args: Any, prof: Mapping[str, Any], key: str, default: Any = None) -> Any:
        v = getattr(args, key, None)
        if v is not None:
            return v
        var = ENV.get(key)
        if var and environ.get(var):
            return environ[var]
        return prof.get(key, default)

    pg = _pick(args, prof, "pg")
    redis_url = _pick(args, prof, "redis")
    http = _pick(args, prof, "http")
    try:
        pg = check_pg_dsn(pg) if pg else None
        pg_monitor = _pick(args, prof, "pg_monitor")
        pg_monitor = check_pg_dsn(pg_monitor) if pg_monitor else None
        redis_url = check_redis_url(redis_url) if redis_url else None
        http = check_http_url(http) if http else None
    except TargetError as e:
        fail(str(e))
    scenario = getattr(args, "scenario", None)
    specs = scenario if not watch and scenario else prof.get("scenario")
    if isinstance(specs, str):
        specs = [specs]
    if watch:
        specs = []
    elif not specs:
        fail("no scenario: give --scenario NAME (see `loadtop scenarios`)")
    try:
        mix = parse_mix(specs) if specs else []
    except ScenarioError as e:
        fail(str(e))
    params = {str(k): str(v) for k, v in (prof.get("params") or {}).items()}
    params.update(parse_params(getattr(args, "params", []) or []))
    max_c = positive_int("--max-concurrency", _pick(args, prof, "max_concurrency", 256))
    steps_raw = _pick(args, prof, "steps")
    steps = (
        parse_steps(",".join(map(str, steps_raw)) if isinstance(steps_raw, list) else steps_raw)
        if steps_raw
        else []
    )
    rate_raw = _pick(args, prof, "rate")
    rate = parse_rate(str(rate_raw)) if rate_raw else None
    conc_default = min(64, max_c) if rate else (steps[0] if steps else 1)
    conc = positive_int("--concurrency", _pick(args, prof, "concurrency", conc_default), 0)
    dur_raw = _pick(args, prof, "duration")
    duration = parse_duration(str(dur_raw)) if dur_raw else None
    step_s = parse_duration(str(_pick(args, prof, "step_seconds", "30s")), "--step-seconds")
    interval = parse_duration(str(getattr(args, "interval", None) or "1s"), "--interval")
    if interval < 0.1 or interval > 60:
        fail("--interval must be between 100ms and 60s")
    aborts = getattr(args, "abort_on", None) or prof.get("abort_on") or []
    if isinstance(aborts, str):
        aborts = [aborts]
    try:
        thresholds = parse_thresholds(list(aborts))
    except ThresholdError as e:
        fail(str(e))
    if rate and steps:
        fail("--rate and --steps do not mix: a plan steps workers; use one or the other")
    procs = positive_int("--processes", _pick(args, prof, "processes", 1))
    if procs > 64 or procs > max_c:
        fail(f"--processes {procs} is too many: at most 64 and at most --max-concurrency ({max_c})")
    if procs > 1:
        try:  # before any embedded server starts
            check_processes([cls for cls, _ in mix])
        except ScenarioError as e:
            fail(str(e))
    headless = bool(getattr(args, "headless", False))
    if duration is None and not steps and headless and not watch:
        duration = 60.0
    ro_flag = getattr(args, "readonly", None)
    readonly = bool(ro_flag if ro_flag is not None else prof.get("readonly", False))
    writing = [cls.name for cls, _ in mix if getattr(cls, "writes", True)]
    if readonly and writing and not watch:
        # before any embedded server starts: one line, exit 2
        fail(f"scenario {writing[0]!r} writes to its target and --readonly is set:"
             " drop --readonly or choose a read-only scenario (e.g. pg-select)")  # fmt: skip
    detect = prof.get("detect")
    slo = parse_slo(args.slo) if getattr(args, "slo", None) else prof.get("slo")
    if detect is not None and not isinstance(detect, dict):
        fail("loadtop.toml: [detect] must be a table")
    if detect is not None:
        from app.detect import build_detectors

        try:
            build_detectors(detect)
        except ValueError as e:
            fail(f"loadtop.toml [detect]: {e}")
    if getattr(args, "detect", None):
        from app.detect import detect_flags

        try:
            detect = detect_flags(args.detect, detect)
        except ValueError as e:
            fail(str(e))
    from app.probes.pg_queues import QueueConfigError, parse_sql_queues

    try:
        sql_queues = parse_sql_queues(prof.get("queue"))  # [[queue.sql]]
    except QueueConfigError as e:
        fail(str(e))
    engine = EngineConfig(
        concurrency=min(conc, max_c), max_concurrency=max_c, rate=rate, plan=steps,
        step_seconds=step_s, duration=duration, interval=interval, seed=args.seed if hasattr(args, "seed") else 0,
        thresholds=thresholds, end_with_plan=headless,
    )  # fmt: skip
    cfg = RunConfig(
        scenarios=mix, pg_dsn=pg, pg_monitor_dsn=pg_monitor, redis_url=redis_url, http_url=http,
        k8s_namespace=_pick(args, prof, "k8s_namespace"),
        k8s_selector=_pick(args, prof, "k8s_selector"),
        k8s_context=_pick(args, prof, "k8s_context"),
        prometheus_url=_pick(args, prof, "prometheus"), params=params, engine=engine,
        record=getattr(args, "record", None), export=getattr(args, "export", None),
        readonly=readonly, probes=not getattr(args, "no_probes", False),
        probe_intervals=prof.get("probe_intervals"), redis_lock_patterns=prof.get("redis_lock_patterns"),
        redis_queue_patterns=prof.get("redis_queue_patterns"), detect=detect, slo=slo,
        processes=procs, pg_sql_queues=sql_queues,
    )  # fmt: skip
    if watch and not (cfg.pg_dsn or cfg.redis_url or cfg.k8s_namespace or cfg.prometheus_url):
        fail("watch needs a target: give --pg, --redis, --k8s-namespace or --prometheus")
    return cfg
