"""What every command shares: the `Command` protocol, the one-line error
output, and the target options `run` and `watch` both take."""

from __future__ import annotations

import argparse
import sys
from typing import Protocol

from app.frontends.streams import silence_stdout, stdout_gone
from app.session.config import UsageError, fail

__all__ = [
    "Command",
    "UsageError",
    "add_targets",
    "fail",
    "mark_run_started",
    "say_err",
    "silence_stdout",
    "stdout_gone",
]


class Command(Protocol):
    """One `loadtop` subcommand. `cli` adds a subparser named `name` with
    `help`, lets the command add its arguments, and calls `run` with the
    parsed arguments; `run` returns the exit code (the run's verdict: 0 PASS,
    1 FAIL or INCOMPLETE, 2 bad input) or raises `UsageError` for bad input."""

    name: str
    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# set once a command starts a run (servers, load): an unexpected exception is
# then exit 1 (a run that failed), before it exit 2 (input not understood)
RUN_STARTED = False


def mark_run_started() -> None:
    global RUN_STARTED
    RUN_STARTED = True


def say_err(msg: str) -> None:
    """One line on stderr; a closed or hung-up stderr is not an error."""
    try:
        print(f"loadtop: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def add_targets(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("--redis-lock-pattern", dest="redis_lock_patterns", action="append",
                   metavar="P", help="a key pattern the Redis probe reads as locks (repeatable;"
                   " also redis_lock_patterns in loadtop.toml)")  # fmt: skip
    g.add_argument("--redis-queue-pattern", dest="redis_queue_patterns", action="append",
                   metavar="P", help="a key pattern the Redis probe reads as queues (repeatable;"
                   " also redis_queue_patterns in loadtop.toml)")  # fmt: skip
    d = p.add_argument_group("detection")
    d.add_argument("--detect", action="append", default=[], metavar="KIND.OPTION=VALUE",
                   help="tune a detector (latency-spike.k=6, long-transaction.max_xact_s=60)"
                   " or disabled=KIND,KIND; also [detect] in loadtop.toml")  # fmt: skip
    d.add_argument("--slo", metavar="p95=500ms,p99=1s,errors=0.1%,dropped=1%",
                   help="the SLO the report's verdict and the slo-breach detector use"
                   " (dropped: a --rate run's intended starts with no free worker)")  # fmt: skip
