"""The `loadtop` command: parse, dispatch to a command (app.commands), and
turn bad input into one line on stderr.

Exit codes: 0 ran and every threshold held; 1 a threshold or an invariant
failed; 2 bad input (one line on stderr that says what to fix, no traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from app.commands import COMMANDS
from app.commands.base import UsageError, fail, say_err
from app.engine.thresholds import ThresholdError
from app.scenario import ScenarioError
from app.session.recording import RecordingError
from app.targets import TargetError, redact


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `loadtop {self.prog.split()[-1]} --help`)"
             if " " in self.prog else f"{message} (see `loadtop --help`)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="loadtop", description="A live console for concurrency stress tests.")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_logging()
    try:
        args = build_parser().parse_args(argv)
        if args.cmd is None:
            build_parser().print_help()
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
        raise


if __name__ == "__main__":
    sys.exit(main())
