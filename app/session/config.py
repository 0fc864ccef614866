"""One validated RunConfig: command-line flags, LOADTOP_* variables and
loadtop.toml all go through `build_run_config`, the one place that turns
operator input into a `RunConfig`, checked by one schema (`SCHEMA`) before
anything starts: types, ranges, allowed values, unknown keys (with a
did-you-mean) and empty strings.

Bad input raises `UsageError`: one line that says what to fix (exit code 2).

Long by design: every input key, its type, range, bound and message sits in
one table here, so there is one place to read and one place to change.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from app.engine.engine import EngineConfig
from app.engine.thresholds import ThresholdError, parse_thresholds
from app.scenario import ScenarioError, check_params, check_processes, parse_mix
from app.targets import TargetError, check_http_url, check_pg_dsn, check_redis_url, printable

if TYPE_CHECKING:
    from app.session.runner import RunConfig

# upper bounds where a value could exhaust the machine (stated in the messages)
MAX_WORKERS = 10_000  # --concurrency, --max-concurrency, --steps
MAX_RATE = 100_000.0  # --rate, per second
MAX_DURATION = 7 * 86_400.0  # --duration, --step-seconds: a week
# The tick's floor. Below 1 s a tick no longer reads as a second on screen, but
# 10 ms lets a benchmark compress an hour into 36 s honestly: what a session
# keeps grows per tick. Probes and verify() keep their own cadence in seconds.
MIN_INTERVAL = 0.01
MAX_PROCESSES = 64


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def fail(msg: str) -> NoReturn:
    raise UsageError(msg)


# ---- parsing helpers (one per kind of value; flags and loadtop.toml share them) ----


def _fmt_duration(v: float) -> str:
    for unit, n in (("d", 86_400), ("h", 3600), ("m", 60)):
        if v >= n and v % n == 0:
            return f"{v / n:g}{unit}"
    return f"{v:g}s"


MAX_DURATION_TEXT = _fmt_duration(MAX_DURATION)  # "7d", for --help


def parse_duration(text: Any, flag: str = "--duration", maximum: float = MAX_DURATION) -> float:
    """`90`, `30s`, `250ms`, `5m`, `1h`, `2d` (or a number of seconds in loadtop.toml)."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text))
    if not m:
        fail(f"{flag} {text!r} is not a duration: use e.g. 90, 30s, 5m or 1h")
    v = float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, None: 1}[m[2]]
    if v <= 0:
        fail(f"{flag} must be positive: give e.g. 30s")
    if v > maximum:
        fail(f"{flag} {str(text).strip()} is too long: give at most {_fmt_duration(maximum)}")
    return v


def parse_rate(text: Any) -> float:
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(/s|/m)?\s*", str(text))
    if not m or float(m[1]) <= 0:
        fail(f"--rate {text!r} is not a rate: use e.g. 200/s")
    rate = float(m[1]) / (60.0 if m[2] == "/m" else 1.0)
    if rate > MAX_RATE:
        fail(f"--rate {str(text).strip()} is too high: give at most {MAX_RATE:g}/s")
    return rate


def parse_steps(text: Any) -> list[int]:
    if isinstance(text, list):
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in text):
            fail(f"--steps {text!r} is not a list of worker counts: use e.g. [1, 2, 4, 8]")
        text = ",".join(map(str, text))
    try:
        steps = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        fail(f"--steps {text!r} is not a list of worker counts: use e.g. 1,2,4,8")
    if not steps or any(s < 0 for s in steps):
        fail(f"--steps {text!r}: give non-negative worker counts, e.g. 1,2,4,8")
    if max(steps) > MAX_WORKERS:
        fail(f"--steps {text!r}: a step of {max(steps)} workers is too many: at most {MAX_WORKERS}")
    return steps


def parse_params(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            fail(f"-p {item!r} is not key=value (e.g. -p mode=unsafe)")
        out[k.strip()] = v
    return out


SLO_KEYS = ("p95_ms", "p99_ms", "error_pct", "dropped_pct")


def parse_slo(text: Any) -> dict[str, float]:
    """`p95=300ms,p99=1s,errors=0.5%` -> {"p95_ms": 300, "p99_ms": 1000, "error_pct": 0.5};
    in loadtop.toml also a table of those keys."""
    if isinstance(text, Mapping):
        out_t: dict[str, float] = {}
        for k, v in text.items():
            if k not in SLO_KEYS:
                fail(f"loadtop.toml: [slo] has no key {k!r}{_near(k, SLO_KEYS)}: use {', '.join(SLO_KEYS)}")  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e9:
                fail(f"loadtop.toml: [slo] {k} = {v!r} must be a positive number, e.g. {k} = 500")
            out_t[k] = float(v)
        return out_t
    out: dict[str, float] = {}
    for part in str(text).split(","):
        key, sep, val = part.strip().partition("=")
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|%)?\s*", val)
        if not sep or not m or key not in ("p95", "p99", "errors", "dropped"):
            fail(f"--slo {text!r}: use e.g. p95=500ms,p99=1s,errors=0.1%,dropped=1%")
        num, unit = float(m[1]), m[2]
        if key in ("errors", "dropped"):
            if unit not in ("%", None):
                fail(f"--slo {text!r}: {key} takes a percentage, e.g. {key}=1%")
            out[f"{'error' if key == 'errors' else key}_pct"] = num
        else:
            if unit == "%":
                fail(f"--slo {text!r}: {key} takes ms or s, e.g. {key}=500ms")
            out[f"{key}_ms"] = num * {"s": 1000.0, "us": 0.001, "µs": 0.001}.get(unit or "", 1.0)
    return out


def parse_listen(flag: str) -> Callable[[Any], tuple[str, int]]:
    """`HOST:PORT` (`127.0.0.1:9108`, `[::1]:9108`, `0.0.0.0:8080`) or `PORT`
    (loopback) -> (host, port). Port 0: any free port (the one taken is printed)."""

    def parse(v: Any) -> tuple[str, int]:
        text = str(v).strip()
        example = f"e.g. {flag} 127.0.0.1:{9108 if flag == '--metrics' else 8080}"
        m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s]*)):(\d{1,5})|(\d{1,5})", text)
        if not m:
            fail(f"{flag} {text!r} is not HOST:PORT: give {example}")
        host = m[1] or m[2] or "127.0.0.1"
        port = int(m[3] or m[4])
        if port > 65535:
            fail(f"{flag} {text!r}: port {port} is out of range: give a port up to 65535")
        import ipaddress
        import socket

        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                host = socket.gethostbyname(host)
            except OSError:
                fail(f"{flag} {text!r}: {host!r} is not an address of this machine: give {example}")
        return host, port

    return parse


def _web_token(v: Any) -> str:
    text = str(v)
    if len(text) < 8 or not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", text):
        fail("--web-token must be at least 8 letters, digits or -._~+/= (no spaces):"
             " give e.g. a value from `openssl rand -hex 16`")  # fmt: skip
    return text


def positive_int(flag: str, v: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number from a flag's text or a TOML integer (a TOML float or
    boolean is not one: `max_concurrency = 1.5` is refused, not truncated)."""
    if isinstance(v, bool | float):
        fail(f"{flag} {v!r} is not a whole number: give e.g. {max(minimum, 8)}")
    try:
        n = int(str(v).strip()) if isinstance(v, str) else int(v)
    except (TypeError, ValueError):
        fail(f"{flag} {v!r} is not a whole number: give e.g. {max(minimum, 8)}")
    if n < minimum:
        fail(f"{flag} must be at least {minimum}")
    if maximum is not None and n > maximum:
        fail(f"{flag} {n} is too many: give at most {maximum}")
    return n


def _near(word: str, choices: Sequence[str]) -> str:
    near = difflib.get_close_matches(word, list(choices), 1, 0.6)
    return f" (did you mean {near[0]}?)" if near else ""


# ---- the schema: every key loadtop.toml takes, with its flag ---------------------

ITEM_NAMES = {str: "strings", int: "whole numbers"}
TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
              list: "a list", dict: "a table"}  # fmt: skip


@dataclass(frozen=True)
class Key:
    """One input: its flag (how messages name it), the TOML types it takes,
    a TOML example for the type message, and its parser (flag text and TOML
    value alike; raises UsageError). `env`: the LOADTOP_* variable."""

    flag: str
    types: tuple[type, ...]
    example: str
    parse: Callable[[Any], Any] | None = None
    env: str | None = None
    items: type | None = None  # for a list: the type of its items
    what: str = ""  # what it must be, when not the TOML types' names


def _target(check: Callable[[str], str]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        try:
            return check(v)
        except TargetError as e:
            fail(str(e))

    return parse


def _k8s(flag: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not printable(v) or "\t" in v:
            fail(f"{flag} {v!r} has a control character or a byte that is not UTF-8:"
                 " give a plain name")  # fmt: skip
        return str(v)

    return parse


def _prometheus(v: Any) -> str:
    try:
        return check_http_url(v, "--prometheus")
    except TargetError as e:
        fail(str(e))


def _bool(flag: str) -> Callable[[Any], bool]:
    def parse(v: Any) -> bool:
        if isinstance(v, bool):
            return v
        fail(f"loadtop.toml: {flag.lstrip('-').replace('-', '_')} = {v!r} must be true or false")

    return parse


def _probe_intervals(v: Mapping[str, Any]) -> dict[str, float]:
    from app.probes.base import DEFAULT_INTERVALS

    out = {}
    for k, s in v.items():
        if k not in DEFAULT_INTERVALS:
            fail(f"loadtop.toml: [probe_intervals] has no probe {k!r}{_near(k, list(DEFAULT_INTERVALS))}:"
                 f" use {', '.join(DEFAULT_INTERVALS)}")  # fmt: skip
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0.1 <= s <= 3600:
            fail(
                f"loadtop.toml: [probe_intervals] {k} = {s!r} must be seconds between 0.1 and 3600"
            )
        out[k] = float(s)
    return out


def _param_table(v: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, x in v.items():
        if isinstance(x, bool):
            out[str(k)] = "true" if x else "false"
        elif isinstance(x, str | int | float):
            out[str(k)] = str(x)
        else:
            fail(f'loadtop.toml: [params] {k} must be a string or a number, e.g. {k} = "unsafe"')
    return out


def _sql_queues(v: Mapping[str, Any]) -> list[Any]:
    from app.probes.pg_queues import QueueConfigError, parse_sql_queues

    try:
        return parse_sql_queues(v)
    except QueueConfigError as e:
        fail(str(e))


def _detect_table(v: Mapping[str, Any]) -> dict[str, Any]:
    from app.detect import build_detectors

    try:
        build_detectors(dict(v))
    except (ValueError, TypeError) as e:
        fail(f"loadtop.toml [detect]: {e}")
    return dict(v)


DUR = 'a duration ("5m") or a number of seconds'
SCHEMA: dict[str, Key] = {
    "pg": Key("--pg", (str,), 'pg = "postgresql://user@host/db"', _target(check_pg_dsn), "LOADTOP_PG_DSN"),
    "pg_monitor": Key("--pg-monitor", (str,), 'pg_monitor = "postgresql://monitor@host/db"',
                      _target(lambda v: check_pg_dsn(v, "--pg-monitor")), "LOADTOP_PG_MONITOR_DSN"),
    "redis": Key("--redis", (str,), 'redis = "redis://host:6379/0"', _target(check_redis_url),
                 "LOADTOP_REDIS_URL"),
    "http": Key("--http", (str,), 'http = "http://host:8080"', _target(check_http_url),
                "LOADTOP_HTTP_URL"),
    "prometheus": Key("--prometheus", (str,), 'prometheus = "http://prometheus:9090"', _prometheus,
                      "LOADTOP_PROMETHEUS_URL"),
    "k8s_namespace": Key("--k8s-namespace", (str,), 'k8s_namespace = "shop"', _k8s("--k8s-namespace"),
                         "LOADTOP_K8S_NAMESPACE"),
    "k8s_selector": Key("--k8s-selector", (str,), 'k8s_selector = "app=api"', _k8s("--k8s-selector"),
                        "LOADTOP_K8S_SELECTOR"),
    "k8s_context": Key("--k8s-context", (str,), 'k8s_context = "staging"', _k8s("--k8s-context"),
                       "LOADTOP_K8S_CONTEXT"),
    "scenario": Key("--scenario", (str, list), 'scenario = ["stock-reservation", "hot-counter=2"]',
                    items=str),
    "concurrency": Key("--concurrency", (int, str), "concurrency = 8",
                       lambda v: positive_int("--concurrency", v, 0, MAX_WORKERS), what="a whole number"),
    "max_concurrency": Key("--max-concurrency", (int, str), "max_concurrency = 256",
                           lambda v: positive_int("--max-concurrency", v, 1, MAX_WORKERS), what="a whole number"),
    "processes": Key("--processes", (int, str), "processes = 2",
                     lambda v: positive_int("--processes", v, 1), what="a whole number"),
    "steps": Key("--steps", (list, str), "steps = [1, 2, 4, 8]", parse_steps, items=int),
    "step_seconds": Key("--step-seconds", (int, float, str), 'step_seconds = "30s"',
                        lambda v: parse_duration(v, "--step-seconds"), what=DUR),
    "duration": Key("--duration", (int, float, str), 'duration = "5m"', parse_duration, what=DUR),
    "interval": Key("--interval", (int, float, str), 'interval = "1s"',
                    lambda v: parse_duration(v, "--interval", 60.0), what=DUR),
    "rate": Key("--rate", (int, float, str), 'rate = "200/s"', parse_rate,
                what='a rate ("200/s") or a number per second'),
    "abort_on": Key("--abort-on", (str, list), 'abort_on = ["p95>500ms", "errors>1%"]', items=str),
    "params": Key("-p", (dict,), '[params] mode = "unsafe"', _param_table),
    "readonly": Key("--readonly", (bool,), "readonly = true", _bool("--readonly")),
    "detect": Key("--detect", (dict,), "[detect.latency-spike] k = 6", _detect_table),
    "slo": Key("--slo", (dict, str), '[slo] p95_ms = 500', parse_slo),
    "probe_intervals": Key("probe_intervals", (dict,), "[probe_intervals] pods = 2",
                           _probe_intervals),
    "redis_lock_patterns": Key("--redis-lock-pattern", (list, str),
                               'redis_lock_patterns = ["*:lock:*"]', items=str),
    "redis_queue_patterns": Key("--redis-queue-pattern", (list, str),
                                'redis_queue_patterns = ["*:queue:*"]', items=str),
    "fault": Key("--fault", (str, list), 'fault = ["at=30s,kind=pod-kill"]', items=str),
    "allow_faults": Key("--allow-faults", (bool,), "allow_faults = true", _bool("--allow-faults")),
    "http_via_proxy": Key("--http-via-proxy", (bool,), "http_via_proxy = true",
                          _bool("--http-via-proxy")),
    "metrics": Key("--metrics", (str,), 'metrics = "127.0.0.1:9108"', parse_listen("--metrics"),
                   "LOADTOP_METRICS"),
    "web": Key("--web", (str,), 'web = "127.0.0.1:8080"', parse_listen("--web"), "LOADTOP_WEB"),
    "web_token": Key("--web-token", (str,), 'web_token = "..."', _web_token, "LOADTOP_WEB_TOKEN"),
    "queue": Key("[[queue.sql]]", (dict,), '[[queue.sql]] name = "emails" sql = "SELECT ..."',
                 _sql_queues),
}  # fmt: skip
ENV = {k: s.env for k, s in SCHEMA.items() if s.env}
PROFILE_KEYS = {*SCHEMA, "profile"}


def _check_table(where: str, data: Mapping[str, Any]) -> None:
    """The TOML side of the schema: known keys, each of a type it takes."""
    for k, v in data.items():
        spec = SCHEMA.get(k)
        if spec is None:
            fail(f"{where}: unknown key {k!r}{_near(k, sorted(SCHEMA))}:"
                 f" remove it (valid: {', '.join(sorted(SCHEMA))})")  # fmt: skip
        if (isinstance(v, bool) and bool not in spec.types) or not isinstance(v, spec.types):
            kinds = spec.what or " or ".join(TYPE_NAMES[t] for t in spec.types)
            fail(f"{where}: {k} = {_short(v)} must be {kinds}, e.g. {spec.example}")
        if isinstance(v, str) and not v.strip():
            fail(f"{where}: {k} is empty: give a value, e.g. {spec.example}, or remove the key")
        if isinstance(v, list):
            if not v:
                fail(f"{where}: {k} is an empty list: give e.g. {spec.example}, or remove the key")
            for x in v:
                if spec.items is not None and (
                    isinstance(x, bool) or not isinstance(x, spec.items)
                ):
                    fail(f"{where}: {k} = {_short(v)} must hold only {ITEM_NAMES[spec.items]},"
                         f" e.g. {spec.example}")  # fmt: skip


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def load_profile(path: str | None, name: str | None) -> dict[str, Any]:
    """loadtop.toml: top-level keys are defaults; [profile.NAME] overrides.
    Every key is checked against SCHEMA here: unknown keys and wrong types
    fail before any value is used."""
    if path is not None and not path.strip():
        fail("--config is empty: give the path of a loadtop.toml, or leave the flag out")
    if name is not None and not name.strip():
        fail("--profile is empty: give the name of a [profile.NAME], or leave the flag out")
    p = Path(path) if path else Path("loadtop.toml")
    if not p.exists():
        if path:
            fail(f"--config {path} does not exist: give the path of a loadtop.toml")
        if name:
            fail(f"--profile {name}: no loadtop.toml in {Path.cwd()}: add one or give --config")
        return {}
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        fail(f"{p}: invalid TOML ({e}): fix the file")
    except UnicodeDecodeError:
        fail(f"{p} is not UTF-8 text: save it as UTF-8")
    except OSError as e:
        fail(f"{p} cannot be read ({e.strerror}): check the path and its permissions")
    profiles = data.pop("profile", {})
    if not isinstance(profiles, dict) or not all(isinstance(x, dict) for x in profiles.values()):
        fail(f"{p}: profile must hold tables, e.g. [profile.staging]")
    _check_table(str(p), data)
    if name:
        if name not in profiles:
            have = ", ".join(sorted(profiles)) or "none"
            fail(f"{p}: no [profile.{name}]: add it or choose one of the profiles (have: {have})")
        prof = profiles[name]
        _check_table(f"{p} [profile.{name}]", prof)
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

    if profile is None:
        prof = load_profile(getattr(args, "config", None), getattr(args, "profile", None))
    else:
        prof = dict(profile)
        _check_table("profile", prof)
    environ = os.environ if env is None else env

    def raw(key: str) -> Any:
        """The value as given: the flag, else the LOADTOP_* variable (an empty
        one is unset), else loadtop.toml; None if none. An empty flag is an error."""
        spec = SCHEMA[key]
        v = getattr(args, key, None)
        if v is not None:
            if isinstance(v, str) and not v.strip():
                fail(f"{spec.flag} is empty: give a value or leave the flag out")
            return v
        if spec.env and environ.get(spec.env, "").strip():
            return environ[spec.env]
        return prof.get(key)

    def value(key: str, default: Any = None) -> Any:
        v = raw(key)
        if v is None:
            return default
        parse = SCHEMA[key].parse
        return parse(v) if parse is not None else v

    pg, pg_monitor = value("pg"), value("pg_monitor")
    redis_url, http = value("redis"), value("http")
    prometheus = value("prometheus")
    k8s = {k: value(k) for k in ("k8s_namespace", "k8s_selector", "k8s_context")}
    specs = raw("scenario")
    if isinstance(specs, str):
        specs = [specs]
    if watch:
        specs = []
    elif not specs:
        fail("no scenario: give --scenario NAME (see `loadtop scenarios`)")
    try:
        mix = parse_mix(list(specs)) if specs else []
    except ScenarioError as e:
        fail(str(e))
    params = dict(_param_table(prof.get("params") or {}))
    params.update(parse_params(getattr(args, "params", []) or []))
    if mix:
        try:
            check_params([cls for cls, _ in mix], params)
        except ScenarioError as e:
            fail(str(e))
    max_c = value("max_concurrency", 256)
    steps = value("steps", [])
    rate = value("rate")
    conc = value("concurrency")
    if conc is None:
        conc = min(64, max_c) if rate else (steps[0] if steps else 1)
    duration = value("duration")
    step_s = value("step_seconds", 30.0)
    interval = value("interval", 1.0)
    if interval < MIN_INTERVAL:
        fail(
            f"--interval {interval * 1000:g}ms is too short: give between 10ms and 60s"
            " (1s is the default)"
        )
    aborts = raw("abort_on") or []
    if isinstance(aborts, str):
        aborts = [aborts]
    try:
        thresholds = parse_thresholds(list(aborts))
    except ThresholdError as e:
        fail(str(e))
    if rate and steps:
        fail("--rate and --steps do not mix: a plan steps workers; use one or the other")
    procs = value("processes", 1)
    if procs > MAX_PROCESSES or procs > max_c:
        fail(f"--processes {procs} is too many: at most {MAX_PROCESSES} and at most"
             f" --max-concurrency ({max_c})")  # fmt: skip
    if procs > 1:
        try:  # before any embedded server starts
            check_processes([cls for cls, _ in mix])
        except ScenarioError as e:
            fail(str(e))
    headless = bool(getattr(args, "headless", False))
    if duration is None and not steps and headless and not watch:
        duration = 60.0
    readonly = value("readonly", False)
    writing = [cls.name for cls, _ in mix if _writes(cls, params)]
    if readonly and writing and not watch:
        # before any embedded server starts: one line, exit 2
        fail(f"scenario {writing[0]!r} writes to its target and --readonly is set:"
             " drop --readonly or choose a read-only scenario (e.g. pg-select)")  # fmt: skip
    faults, allow_faults, via_proxy = _faults(raw, value, readonly, http, watch)
    detect = _detect_table(prof["detect"]) if "detect" in prof else None
    slo = value("slo")
    if getattr(args, "detect", None):
        from app.detect import detect_flags

        try:
            detect = detect_flags(args.detect, detect)
        except ValueError as e:
            fail(str(e))
    record, export = _outputs(args)
    seed = getattr(args, "seed", 0) or 0
    sql_queues = value("queue", [])  # [[queue.sql]]
    engine = EngineConfig(
        concurrency=min(conc, max_c), max_concurrency=max_c, rate=rate, plan=steps,
        step_seconds=step_s, duration=duration, interval=interval, seed=seed,
        thresholds=thresholds, end_with_plan=headless,
    )  # fmt: skip
    cfg = RunConfig(
        scenarios=mix, pg_dsn=pg, pg_monitor_dsn=pg_monitor, redis_url=redis_url, http_url=http,
        k8s_namespace=k8s["k8s_namespace"], k8s_selector=k8s["k8s_selector"],
        k8s_context=k8s["k8s_context"], prometheus_url=prometheus, params=params, engine=engine,
        record=record, export=export, readonly=readonly,
        probes=not getattr(args, "no_probes", False), probe_intervals=value("probe_intervals"),
        redis_lock_patterns=_patterns(raw, "redis_lock_patterns"),
        redis_queue_patterns=_patterns(raw, "redis_queue_patterns"), detect=detect, slo=slo,
        processes=procs, pg_sql_queues=sql_queues, faults=faults, allow_faults=allow_faults,
        http_via_proxy=via_proxy,
    )  # fmt: skip
    cfg.metrics = value("metrics")
    cfg.web = value("web")
    cfg.web_token = value("web_token")
    if cfg.web_token and not cfg.web:
        fail("--web-token without --web: give --web HOST:PORT too, or leave the token out")
    if watch and not (
        cfg.pg_dsn or cfg.pg_monitor_dsn or cfg.redis_url or cfg.k8s_namespace or cfg.prometheus_url
    ):
        fail(
            "watch needs a target: give --pg, --pg-monitor, --redis, --k8s-namespace or --prometheus"
        )
    return cfg


def _faults(
    raw: Callable[[str], Any],
    value: Callable[..., Any],
    readonly: bool,
    http: str | None,
    watch: bool,
) -> tuple[list[Any], bool, bool]:
    """--fault specs (each parsed and checked now), --allow-faults, --http-via-proxy."""
    from app.faults import FaultError, parse_fault_spec

    specs = raw("fault") or []
    if isinstance(specs, str):
        specs = [specs]
    try:
        faults = [parse_fault_spec(s) for s in specs]
    except FaultError as e:
        fail(str(e))
    allow = bool(value("allow_faults", False))
    via_proxy = bool(value("http_via_proxy", False))
    if via_proxy and not http:
        fail("--http-via-proxy needs --http URL: the proxy goes in front of it")
    if via_proxy and http and not http.startswith("http://"):
        fail("--http-via-proxy needs an http:// URL: TLS is not proxied")
    if faults:
        if watch:
            fail("--fault is for runs under load: use `loadtop run` (watch drives no load)")
        if readonly:
            fail("--fault and --readonly do not mix: a fault writes to its target; drop one")
        if not allow:
            fail("--fault needs --allow-faults (or allow_faults = true in loadtop.toml):"
                 " faults hit the targets for real")  # fmt: skip
        for f in faults:
            if f.kind.startswith("http-") and not via_proxy:
                fail(f"--fault kind={f.kind} needs --http-via-proxy (and --http URL)")
            if f.at is not None and f.at > MAX_DURATION:
                fail(
                    f"--fault at={f.at:g}s is later than any run: give at most {MAX_DURATION_TEXT}"
                )
    return faults, allow and not readonly, via_proxy


def forget_secret_environment(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Once the config is built: drop the LOADTOP_* target variables that hold
    a password or token from this process's environment, so the processes it
    starts (worker processes, embedded servers) do not inherit them."""
    from app.targets import url_secrets

    for var in ENV.values():
        value = environ.get(var)
        if value and url_secrets(value):
            environ.pop(var, None)


def _writes(cls: type, params: Mapping[str, str]) -> bool:
    """Whether the scenario writes with these parameters (the http scenario
    decides per instance, from -p method)."""
    try:
        return bool(getattr(cls(params), "writes", True))
    except Exception:
        return bool(getattr(cls, "writes", True))


def _str_list(v: Any) -> list[str] | None:
    if v is None:
        return None
    return [v] if isinstance(v, str) else list(v)


def _patterns(raw: Callable[[str], Any], key: str) -> list[str] | None:
    """Redis key patterns: the repeatable flag (each value non-empty) over
    loadtop.toml's list; None if neither gives any."""
    v = _str_list(raw(key))
    if v is not None and any(not p.strip() for p in v):
        fail(f"{SCHEMA[key].flag} is empty: give a key pattern, e.g. '*:queue:*',"
             " or leave the flag out")  # fmt: skip
    return v


def _outputs(args: Any) -> tuple[str | None, str | None]:
    """--record / --export: files that can be written, checked now (an output
    that cannot be written is bad input at start, not a lost session), and not
    one file for both."""
    from app.session.recording import RecordingError, check_output_path

    paths = {}
    for flag, attr in (("--record", "record"), ("--export", "export")):
        path = getattr(args, attr, None)
        if path is not None and not str(path).strip():
            fail(f"{flag} is empty: give a file name, or leave the flag out")
        paths[flag] = None if path is None else str(path)
    rec, exp = paths["--record"], paths["--export"]
    if rec and exp and same_file(rec, exp):
        fail(f"--record and --export are the same file ({exp}): the report would overwrite"
             " the recording; give two names")  # fmt: skip
    for flag, path in paths.items():
        if path:
            try:
                check_output_path(path, flag)
            except RecordingError as e:
                fail(str(e))
    return rec, exp


def same_file(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)
