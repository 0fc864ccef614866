"""The headless front end: one line per tick on stdout, then the outcome.

The console (app.ui.main.run_session_console) is the other front end over the
same Session; a command picks one. Neither the session nor the engine knows
which one is listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from app import fmt
from app.detect.news import AnomalyNews
from app.frontends.streams import silence_stdout, stdout_gone
from app.probes.summary import format_reading_line
from app.session.runner import Outcome, RunConfig, Session, print_outcome, run_sync
from app.targets import Redactor
from app.tick import Tick


def headless_printer(cfg: RunConfig) -> Callable[[Tick], None]:
    """One line per tick on stdout, every line masked."""
    scrub = _redactor(cfg)

    news = AnomalyNews()  # raised, escalated or materially changed: a line each

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
        if tick.readings:
            with contextlib.suppress(Exception):
                parts.append(format_reading_line(tick.readings))
        for a in tick.anomalies:
            if (msg := news.news(a)) is not None:
                parts.append(msg)
        for a in tick.cleared:
            news.cleared(a)
            parts.append(f"✓ cleared {a.kind}")
        for e in tick.events:
            if e.kind not in ("start",):
                parts.append(f"> {e.kind}{' ' + e.note if e.note else ''}")
        print(scrub("  ".join(parts)), flush=True)

    return line


def _redactor(cfg: RunConfig) -> Redactor:
    urls = (cfg.pg_dsn, cfg.pg_monitor_dsn, cfg.redis_url, cfg.http_url, cfg.prometheus_url)
    return Redactor.for_targets(urls, cfg.params)


def run_headless(session: Session) -> int:
    """Run `session` to its end on this thread (Ctrl-C, SIGTERM and SIGHUP stop
    it), print the outcome; returns the session's exit code. When stdout's
    reader goes away (`loadtop ... | head`), the run stops as on SIGTERM:
    teardown and cleanup run, the rest of the output goes to /dev/null."""
    if session.printer is not None:
        session.printer = _until_stdout_closes(session, session.printer)
    try:
        outcome = run_sync(_with_sigpipe(session))
    finally:  # the loop's handler removed leaves SIG_DFL: a closed pipe would then kill us
        with contextlib.suppress(ValueError, OSError, AttributeError):
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        print_outcome(session, outcome)
    except OSError as e:
        if not stdout_gone(e):
            raise
        silence_stdout()
    return int(outcome.exit_code)


async def _with_sigpipe(session: Session) -> Outcome:
    """The session, with SIGPIPE (sent, or a write to a pipe whose reader left)
    stopping it like SIGTERM instead of being ignored."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
        loop.add_signal_handler(signal.SIGPIPE, session.stop, "signal SIGPIPE")
    return await session.run(install_signals=True)


def _until_stdout_closes(
    session: Session, printer: Callable[[Tick], None]
) -> Callable[[Tick], None]:
    closed = False

    def guarded(tick: Tick) -> None:
        nonlocal closed
        if closed:
            return
        try:
            printer(tick)
        except OSError as e:
            if not stdout_gone(e):
                raise
            closed = True
            silence_stdout()
            session.stop("stdout closed")

    return guarded
