"""`loadtop run`: drive scenarios against targets (embedded PostgreSQL /
Valkey for what no target was given), in the console or headless."""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from app.commands.base import (
    add_targets,
    fail,
    mark_run_started,
    say_err,
    silence_stdout,
    stdout_gone,
)
from app.commands.share import add_team_flags, team_outputs
from app.session.config import (
    MAX_DURATION_TEXT,
    MAX_RATE,
    MAX_WORKERS,
    build_run_config,
    forget_secret_environment,
)

if TYPE_CHECKING:
    from app.session.runner import RunConfig


class Run:
    name = "run"
    help = "drive scenarios against targets"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_targets(parser)
        add_load(parser)
        out = parser.add_argument_group("output")
        out.add_argument("--headless", action="store_true", help="no console: one line per tick")
        out.add_argument("--record", metavar="F.jsonl", help="record every tick (JSONL)")
        out.add_argument("--export", metavar="F.md", help="write the Markdown report at the end")
        add_team_flags(parser)

    def run(self, args: argparse.Namespace) -> int:
        cfg = build_run_config(args)  # checks --record / --export too
        forget_secret_environment()
        mark_run_started()
        saved = interrupt_on_signals()
        try:
            with team_outputs(cfg, say_err) as attach, embedded_targets(cfg, say_err):
                from app.session.runner import Session

                if args.headless:
                    from app.frontends.headless import headless_printer, run_headless

                    session = Session(cfg, printer=headless_printer(cfg))
                    attach(session)
                    return run_headless(session)
                session = Session(cfg)
                attach(session)
                return run_console(session)
        finally:
            for sig, handler in saved.items():
                with contextlib.suppress(ValueError, OSError, TypeError):
                    signal.signal(sig, handler)


def run_console(session: Any, cleanup: Callable[[], None] | None = None) -> int:
    """The console over `session`; returns the session's exit code. A terminal
    that went away (SIGHUP of a dropped SSH session: every write then fails
    with EIO) does not turn a clean teardown into a traceback and exit 1: the
    messages that can no longer be shown are dropped, the code is the run's."""
    from app.ui.main import run_session_console

    try:
        code = run_session_console(session, say=say_err, cleanup=cleanup)
        outcome = getattr(session, "outcome", None)
        if outcome is not None and outcome.why and outcome.exit_code != 2:
            # the verdict, as in the report; its code also after an error mid-run
            # (INCOMPLETE, 1), which the console alone would call bad input (2);
            # bad input stays the console's one line
            say_err(f"{outcome.verdict}: {outcome.why}")
            return int(outcome.exit_code)
        return code
    except OSError as e:
        outcome = getattr(session, "outcome", None)
        if not stdout_gone(e) or outcome is None:
            raise
        silence_stdout(stderr=True)
        return int(outcome.exit_code)


def add_load(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--scenario", "-s", action="append", metavar="S[=W]",
                   help="built-in name, path.py or path.py:Class; repeat with =weight for a mix")  # fmt: skip
    g.add_argument("--concurrency", "-c", metavar="N",
                   help=f"workers at start (default 1; at most {MAX_WORKERS})")  # fmt: skip
    g.add_argument("--steps", metavar="N,N,...", help="a ramp plan, e.g. 1,2,4,8")
    g.add_argument("--step-seconds", metavar="T", help="time per plan step (default 30s)")
    g.add_argument("--rate", metavar="R/s",
                   help=f"open model: a fixed arrival rate (at most {MAX_RATE:g}/s)")  # fmt: skip
    g.add_argument("--duration", "-d", metavar="T",
                   help=f"e.g. 60s, 5m (default: the plan, or 60s; at most {MAX_DURATION_TEXT})")  # fmt: skip
    g.add_argument("--max-concurrency", metavar="N",
                   help=f"hard cap on workers (default 256; at most {MAX_WORKERS})")  # fmt: skip
    g.add_argument("--abort-on", action="append", metavar="EXPR",
                   help="stop the load when it holds 3 ticks: p95>500ms, errors>1%%, ops<100/s,"
                   " recovery>30s (a fault's recovery)")  # fmt: skip
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--processes", metavar="N",
                   help="run the workers in N processes when one core is not enough (default 1)")  # fmt: skip
    g.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="a scenario parameter (`loadtop scenarios` lists each one's)")  # fmt: skip
    g.add_argument("--interval", metavar="T", help="tick length (default 1s)")
    f = p.add_argument_group("faults (chaos under load)")
    f.add_argument("--fault", action="append", metavar="SPEC",
                   help="inject a fault at a time: 'at=30s,kind=pod-kill',"
                   " 'at=60s,kind=redis-pause,ms=5000' (repeatable; needs --allow-faults)")  # fmt: skip
    f.add_argument("--allow-faults", action="store_true", default=None,
                   help="let --fault and the console's f menu hit the targets for real")  # fmt: skip
    f.add_argument("--http-via-proxy", action="store_true", default=None,
                   help="send the HTTP load through a loopback proxy (http-latency/-drop/-503)")  # fmt: skip


@contextlib.contextmanager
def embedded_targets(cfg: RunConfig, say: Callable[[str], None]) -> Iterator[None]:
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


def interrupt_on_signals() -> dict[int, Any]:
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
