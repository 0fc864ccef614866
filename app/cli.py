"""The `loadtop` command: parse, dispatch to a command (app.commands), and
turn bad input into one line on stderr.

Exit codes (EXIT_CODES_HELP, also in --help): the run's verdict, from
app.session.report.verdict: 0 PASS; 1 FAIL or INCOMPLETE; 2 bad input (one
line on stderr that says what to fix, no traceback).
No traceback reaches the screen: an unexpected exception is one line (exit 2
before a run starts, 1 once it has), its traceback goes to a log file whose
path the line names.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from app import __version__
from app.commands import COMMANDS
from app.commands import base as _base
from app.commands.base import UsageError, fail, say_err, silence_stdout, stdout_gone
from app.engine.thresholds import ThresholdError
from app.scenario import ScenarioError
from app.session.recording import RecordingError
from app.targets import Redactor, TargetError, redact


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `loadtop {self.prog.split()[-1]} --help`)"
             if " " in self.prog else f"{message} (see `loadtop --help`)")  # fmt: skip


EXIT_CODES_HELP = """exit codes (the report's verdict):
  0  PASS: complete; every threshold, SLO and verify() held; cleanup complete
  1  FAIL: one of them broke, no operation succeeded, a final verify() could
     not run, cleanup left something (the commands to remove it are printed),
     or a failing anomaly was raised; INCOMPLETE: the run ended in an error
  2  bad input (one line on stderr says what to fix)
`loadtop report` exits 0 once the report is written, whatever its verdict."""


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    ap = _Parser(prog="loadtop", description="A live console for concurrency stress tests.",
                 epilog=EXIT_CODES_HELP, formatter_class=raw)  # fmt: skip
    ap.add_argument("--version", action="version", version=f"loadtop {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        epilog = EXIT_CODES_HELP if command.name in ("run", "watch", "demo") else None
        command.add_arguments(
            sub.add_parser(command.name, help=command.help, epilog=epilog, formatter_class=raw)
        )
    return ap


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


def _value_options(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(options that take one value, every option string), over all commands."""
    takes: set[str] = set()
    every: set[str] = set()
    for p in [parser, *_subparsers(parser)]:
        for a in p._actions:
            every.update(a.option_strings)
            if a.option_strings and a.nargs is None:
                takes.update(a.option_strings)
    return takes, every


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [
        sp
        for a in parser._actions
        if isinstance(a, argparse._SubParsersAction)
        for sp in a.choices.values()
    ]


def attach_dash_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--concurrency -3`, `-d -5s`: argparse takes a value starting with '-'
    for an option and says "expected one argument". Attach it to its option
    (`--concurrency=-3`, `-d-5s`) so the schema refuses it with its own line."""
    takes, every = _value_options(parser)
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out += argv[i:]
            break
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (
            tok in takes
            and nxt
            and nxt.startswith("-")
            and nxt != "--"
            and nxt.split("=")[0] not in every
        ):
            out.append(f"{tok}={nxt}" if tok.startswith("--") else f"{tok}{nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def crash_log(exc: BaseException, argv: Sequence[str]) -> str:
    """Write the traceback, masked, to a private log file; return its path."""
    text = "".join(traceback.format_exception(exc))
    masks = Redactor.for_targets([a.partition("=")[2] or a for a in argv if "://" in a])
    text = masks(f"loadtop {' '.join(argv)}\n\n{text}")
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for d in (Path(state) / "loadtop", Path(tempfile.gettempdir())):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = d / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
            return str(path)
        except OSError:
            continue
    return "(no log file could be written)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_logging()
    _base.RUN_STARTED = False
    try:
        parser = build_parser()
        args = parser.parse_args(attach_dash_values(argv, parser))
        if args.cmd is None:
            parser.print_help()
            return 2
        command = next(c for c in COMMANDS if c.name == args.cmd)
        return command.run(args)
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
        if stdout_gone(e):  # `loadtop ... | head`: the reader left; not an error of ours
            silence_stdout()
            return 0 if not _base.RUN_STARTED else 1
        path = crash_log(e, argv)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        say_err(
            redact(f"internal error: {type(e).__name__}{': ' + first if first else ''}")
            + f" (traceback in {path}; please report it)"
        )
        return 1 if _base.RUN_STARTED else 2


if __name__ == "__main__":
    sys.exit(main())
