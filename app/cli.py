"""The `loadtop` command.

Exit codes: 0 ran and every threshold held; 1 a threshold or an invariant
failed; 2 bad input (one line on stderr that says what to fix, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from app import fmt
from app.engine.engine import EngineConfig
from app.engine.thresholds import ThresholdError, parse_thresholds
from app.scenario import ScenarioError, builtin_scenarios, check_processes, parse_mix
from app.session.recording import RecordingError, check_output_path, read_recording
from app.targets import (
    Redactor,
    TargetError,
    check_http_url,
    check_pg_dsn,
    check_redis_url,
    redact,
)
from app.tick import Tick

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
    "redis_lock_patterns", "redis_queue_patterns", "profile", "processes",
}  # fmt: skip


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def fail(msg: str) -> NoReturn:
    raise UsageError(msg)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `loadtop {self.prog.split()[-1]} --help`)"
             if " " in self.prog else f"{message} (see `loadtop --help`)")  # fmt: skip


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


# ---- the parser ------------------------------------------------------------------


def _add_targets(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("targets (also from LOADTOP_* variables and loadtop.toml)")
    g.add_argument("--pg", metavar="DSN", help="PostgreSQL DSN (default: an embedded server)")
    g.add_argument("--pg-monitor", metavar="DSN", help="DSN for the probe (e.g. a pg_monitor role)")
    g.add_argument("--redis", metavar="URL", help="Redis URL (default: an embedded Valkey)")
    g.add_argument("--http", metavar="URL", help="base URL of the HTTP service under test")
    g.add_argument("--k8s-namespace", metavar="NS")
    g.add_argument("--k8s-selector", metavar="LABELS")
    g.add_argument("--k8s-context", metavar="CTX")
    g.add_argument("--prometheus", metavar="URL")
    g.add_argument("--config", metavar="FILE", help="a loadtop.toml (default ./loadtop.toml)")
    g.add_argument("--profile", metavar="NAME", help="a [profile.NAME] in loadtop.toml")
    g.add_argument("--readonly", action="store_true", default=None,
                   help="never write: no writing scenarios, no backend cancel/terminate")  # fmt: skip
    g.add_argument("--no-probes", action="store_true", help="do not poll the targets")
    d = p.add_argument_group("detection")
    d.add_argument("--detect", action="append", default=[], metavar="KIND.OPTION=VALUE",
                   help="tune a detector (latency-spike.k=6, long-transaction.max_xact_s=60)"
                   " or disabled=KIND,KIND; also [detect] in loadtop.toml")  # fmt: skip
    d.add_argument("--slo", metavar="p95=500ms,p99=1s,errors=0.1%",
                   help="the SLO the report's verdict and the slo-breach detector use")  # fmt: skip


def _add_load(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--scenario", "-s", action="append", metavar="S[=W]",
                   help="built-in name, path.py or path.py:Class; repeat with =weight for a mix")  # fmt: skip
    g.add_argument("--concurrency", "-c", metavar="N", help="workers at start (default 1)")
    g.add_argument("--steps", metavar="N,N,...", help="a ramp plan, e.g. 1,2,4,8")
    g.add_argument("--step-seconds", metavar="T", help="time per plan step (default 30s)")
    g.add_argument("--rate", metavar="R/s", help="open model: a fixed arrival rate")
    g.add_argument("--duration", "-d", metavar="T", help="e.g. 60s, 5m (default: the plan, or 60s)")
    g.add_argument("--max-concurrency", metavar="N", help="hard cap on workers (default 256)")
    g.add_argument("--abort-on", action="append", metavar="EXPR",
                   help="stop the load when it holds 3 ticks: p95>500ms, errors>1%%, ops<100/s")  # fmt: skip
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--processes", metavar="N",
                   help="run the workers in N processes when one core is not enough (default 1)")  # fmt: skip
    g.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="a scenario parameter")  # fmt: skip
    g.add_argument("--interval", metavar="T", help="tick length (default 1s)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="loadtop", description="A live console for concurrency stress tests.")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="embedded Postgres + Redis + demo service, in the console")
    demo.add_argument("--headless", action="store_true")
    demo.add_argument("--duration", "-d", metavar="T")
    demo.add_argument("--record", metavar="F.jsonl")
    demo.add_argument("--export", metavar="F.md")

    run = sub.add_parser("run", help="drive scenarios against targets")
    _add_targets(run)
    _add_load(run)
    out = run.add_argument_group("output")
    out.add_argument("--headless", action="store_true", help="no console: one line per tick")
    out.add_argument("--record", metavar="F.jsonl", help="record every tick (JSONL)")
    out.add_argument("--export", metavar="F.md", help="write the Markdown report at the end")

    watch = sub.add_parser("watch", help="probes only, no load: watch a target someone else loads")
    _add_targets(watch)
    watch.add_argument("--headless", action="store_true")
    watch.add_argument("--duration", "-d", metavar="T")
    watch.add_argument("--record", metavar="F.jsonl")
    watch.add_argument("--export", metavar="F.md", help="write the Markdown report at the end")
    watch.add_argument("--interval", metavar="T", help="tick length (default 1s)")

    rp = sub.add_parser("replay", help="the console over a recording")
    rp.add_argument("recording", metavar="F.jsonl")

    rep = sub.add_parser("report", help="the Markdown (or JSON) report of a recording")
    rep.add_argument("recording", metavar="F.jsonl")
    rep.add_argument("-o", "--output", metavar="F.md")
    rep.add_argument("--json", action="store_true")

    sub.add_parser("scenarios", help="list the built-in scenarios")
    return ap


# ---- commands --------------------------------------------------------------------


def cmd_scenarios() -> int:
    found = builtin_scenarios()
    width = max((len(n) for n in found), default=10)
    for name, cls in sorted(found.items()):
        needs = ",".join(cls.needs)
        print(f"{name:<{width}}  [{needs}]  {cls.description}")
        for k, v in cls.params_help.items():
            print(f"{'':<{width}}    -p {k}: {v}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from app.session.report import render_json, render_markdown

    try:
        rec = read_recording(args.recording)
    except RecordingError as e:
        fail(str(e))
    text = render_json(rec) if args.json else render_markdown(rec)
    text = Redactor()(text)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as e:
            fail(f"-o {args.output} cannot be written ({e.strerror}): choose another path")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
    return 0


def _pick(args: argparse.Namespace, prof: dict[str, Any], key: str, default: Any = None) -> Any:
    v = getattr(args, key, None)
    if v is not None:
        return v
    env = ENV.get(key)
    if env and os.environ.get(env):
        return os.environ[env]
    return prof.get(key, default)


def build_run_config(args: argparse.Namespace, *, watch: bool = False) -> Any:
    from app.session.runner import RunConfig

    prof = load_profile(args.config, args.profile)
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
    specs = args.scenario if not watch and args.scenario else prof.get("scenario")
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
    readonly = bool(args.readonly if args.readonly is not None else prof.get("readonly", False))
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
        try:
            from app.detect import build_detectors

            build_detectors(detect)
        except ImportError:
            pass
        except ValueError as e:
            fail(f"loadtop.toml [detect]: {e}")
    if getattr(args, "detect", None):
        from app.detect import detect_flags

        try:
            detect = detect_flags(args.detect, detect)
        except ValueError as e:
            fail(str(e))
    engine = EngineConfig(
        concurrency=min(conc, max_c), max_concurrency=max_c, rate=rate, plan=steps,
        step_seconds=step_s, duration=duration, interval=interval, seed=args.seed if hasattr(args, "seed") else 0,
        thresholds=thresholds, end_with_plan=headless,
    )  # fmt: skip
    return RunConfig(
        scenarios=mix, pg_dsn=pg, pg_monitor_dsn=pg_monitor, redis_url=redis_url, http_url=http,
        k8s_namespace=_pick(args, prof, "k8s_namespace"),
        k8s_selector=_pick(args, prof, "k8s_selector"),
        k8s_context=_pick(args, prof, "k8s_context"),
        prometheus_url=_pick(args, prof, "prometheus"), params=params, engine=engine,
        record=getattr(args, "record", None), export=getattr(args, "export", None),
        readonly=readonly, probes=not getattr(args, "no_probes", False),
        probe_intervals=prof.get("probe_intervals"), redis_lock_patterns=prof.get("redis_lock_patterns"),
        redis_queue_patterns=prof.get("redis_queue_patterns"), detect=detect, slo=slo,
        processes=procs,
    )  # fmt: skip


@contextlib.contextmanager
def embedded_targets(cfg: Any, say: Any) -> Iterator[None]:
    """Start embedded PostgreSQL / Valkey for what the scenarios need and no
    target was given; stop them on exit, Ctrl-C or error."""
    from app.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis

    needs = {n for cls, _ in cfg.scenarios for n in cls.needs}
    with contextlib.ExitStack() as stack:
        try:
            if "postgres" in needs and not cfg.pg_dsn:
                pg = stack.enter_context(EmbeddedPostgres())
                cfg.pg_dsn = pg.dsn
                cfg.embedded.append("postgres")
                say(f"embedded PostgreSQL listening on 127.0.0.1:{pg.port}")
            if "redis" in needs and not cfg.redis_url:
                r = stack.enter_context(EmbeddedRedis())
                cfg.redis_url = r.url
                cfg.embedded.append("redis")
                say(f"embedded Valkey listening on 127.0.0.1:{r.port}")
        except EmbeddedError as e:
            fail(str(e))
        try:
            yield
        finally:
            # stopping the servers must not be cut short by a second signal
            _ignore_signals()


def _interrupt_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP act like Ctrl-C until the session installs its own
    handlers (and after it removed them): embedded servers being started are
    then cleaned up rather than left behind by a default exit. Returns the
    handlers to restore (main() may run in-process, e.g. in tests)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    saved: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            saved[sig] = signal.getsignal(sig)
            if sig != signal.SIGINT:
                signal.signal(sig, interrupt)
    return saved


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_IGN)


def headless_printer(cfg: Any) -> Any:
    try:
        from app.probes.summary import format_reading_line
    except ImportError:
        format_reading_line = None  # type: ignore[assignment]

    scrub = _redactor(cfg)

    shown: set[str] = set()

    def line(tick: Tick) -> None:
        lat = tick.latency()
        errs = tick.errors()
        err_s = ""
        if errs:
            top = sorted(errs.items(), key=lambda kv: -kv[1])[:2]
            err_s = " [" + ", ".join(f"{k} {v}" for k, v in top) + "]"
        mode = f"{tick.rate:g}/s" if tick.mode == "rate" and tick.rate else ""
        lag = max((s.lag_ms for s in tick.scenarios), default=0.0)
        drop = sum(s.dropped for s in tick.scenarios)
        open_s = f" lag {fmt.ms(lag)} drop {drop}" if tick.mode == "rate" else ""
        parts = [
            f"{tick.elapsed:6.1f}s",
            f"c={tick.concurrency}/{tick.target_concurrency}{' ' + mode if mode else ''}"
            + (" paused" if tick.paused else ""),
            f"{fmt.rate(tick.ops_per_s):>6} ops/s",
            f"p50 {fmt.ms(lat.p50)} p95 {fmt.ms(lat.p95)} p99 {fmt.ms(lat.p99)}",
            f"err {100 * tick.error_ratio:.2f}%{err_s}{open_s}",
        ]
        if counts := tick.counters():
            parts.append("# " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if tick.is_drain and tick.scenarios:  # not a second's figures: say what it is
            parts = [
                f"{tick.elapsed:6.1f}s",
                f"drain: {tick.completed} in-flight ops finished after the stop"
                + (f", slowest {fmt.ms(lat.max)}" if tick.completed else ""),
            ]
            if tick.failed:
                parts.append(f"err {tick.failed}{err_s}")
        if not tick.scenarios:  # `loadtop watch`: no load, readings only
            parts = [f"{tick.elapsed:6.1f}s", "watch"]
            for name, r in sorted(tick.readings.items()):
                if not r.ok:
                    parts.append(f"{name} DOWN: {r.error}")
        if format_reading_line is not None and tick.readings:
            with contextlib.suppress(Exception):
                parts.append(format_reading_line(tick.readings))
        for a in tick.anomalies:
            if a.key not in shown:  # raised in this tick (it may have started earlier)
                shown.add(a.key)
                parts.append(f"! {a.kind}: {a.summary}")
        for a in tick.cleared:
            shown.discard(a.key)
            parts.append(f"✓ cleared {a.kind}")
        for e in tick.events:
            if e.kind not in ("start",):
                parts.append(f"> {e.kind}{' ' + e.note if e.note else ''}")
        print(scrub("  ".join(parts)), flush=True)

    return line


def _redactor(cfg: Any) -> Redactor:
    urls = (cfg.pg_dsn, cfg.pg_monitor_dsn, cfg.redis_url, cfg.http_url, cfg.prometheus_url)
    return Redactor.for_targets(urls, cfg.params)


def say_err(msg: str) -> None:
    print(f"loadtop: {msg}", file=sys.stderr, flush=True)


def run_headless(cfg: Any) -> int:
    from app.session.runner import Session, print_outcome, run_sync

    session = Session(cfg, printer=headless_printer(cfg))
    outcome = run_sync(session.run(install_signals=True))
    print_outcome(session, outcome)
    return outcome.exit_code


def cmd_run(args: argparse.Namespace, *, watch: bool = False) -> int:
    cfg = build_run_config(args, watch=watch)
    # an output that cannot be written is bad input at start, not a lost session
    for flag, path in (("--record", cfg.record), ("--export", cfg.export)):
        if path:
            check_output_path(path, flag)
    if watch:
        return cmd_watch(cfg, args)
    saved = _interrupt_on_signals()
    try:
        with embedded_targets(cfg, say_err):
            if args.headless:
                return run_headless(cfg)
            try:
                from app.ui.main import run_console
            except ImportError:
                fail("the console is not available in this build: use --headless")
            return run_console(cfg)
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)


def cmd_watch(cfg: Any, args: argparse.Namespace) -> int:
    if not (cfg.pg_dsn or cfg.redis_url or cfg.k8s_namespace or cfg.prometheus_url):
        fail("watch needs a target: give --pg, --redis, --k8s-namespace or --prometheus")
    try:
        from app.session.watch import watch
    except ImportError:
        fail("watch is not available in this build")
    return watch(cfg, headless=bool(args.headless), printer=headless_printer(cfg))


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        rec = read_recording(args.recording)
    except RecordingError as e:
        fail(str(e))
    try:
        from app.ui.main import run_replay
    except ImportError:
        fail("the console is not available in this build: use `loadtop report`")
    return run_replay(rec)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from app.ui.demo import run_demo
    except ImportError:
        fail("the demo is not available in this build")
    return run_demo(args)


class _OneLine(logging.Formatter):
    """Library warnings (asyncpg's pool, a failing probe) as one redacted line
    on stderr: never a traceback on the operator's screen."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().strip().splitlines()
        text = msg[0] if msg else record.name
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            text += f" ({type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})"
        return f"loadtop: {redact(text)}"


class _Stderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:  # sys.stderr at the time of the record (tests swap it)
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            pass


def _quiet_logging() -> None:
    root = logging.getLogger()
    if any(isinstance(h, _Stderr) for h in root.handlers):
        return
    h = _Stderr(logging.WARNING)
    h.setFormatter(_OneLine())
    root.addHandler(h)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_logging()
    try:
        args = build_parser().parse_args(argv)
        if args.cmd is None:
            build_parser().print_help()
            return 2
        if args.cmd == "scenarios":
            return cmd_scenarios()
        if args.cmd == "report":
            return cmd_report(args)
        if args.cmd == "replay":
            return cmd_replay(args)
        if args.cmd == "demo":
            return cmd_demo(args)
        return cmd_run(args, watch=args.cmd == "watch")
    except UsageError as e:
        say_err(redact(str(e)))
        return 2
    except (TargetError, ScenarioError, RecordingError, ThresholdError) as e:
        say_err(redact(str(e)))
        return 2
    except KeyboardInterrupt:
        say_err("interrupted")
        return 130
    except Exception as e:
        from app.session.runner import SetupError

        if isinstance(e, SetupError):
            say_err(redact(str(e)))
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
