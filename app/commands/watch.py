"""`loadtop watch`: probes and detectors only, no load, in the console or
headless (the WatchSession is in app.session.watch)."""

from __future__ import annotations

import argparse

from app.commands.base import add_targets, mark_run_started, say_err
from app.commands.share import add_team_flags, team_outputs
from app.session.config import build_run_config, forget_secret_environment


class Watch:
    name = "watch"
    help = "probes only, no load: watch a target someone else loads"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_targets(parser)
        parser.add_argument("--headless", action="store_true")
        parser.add_argument("--duration", "-d", metavar="T")
        parser.add_argument("--record", metavar="F.jsonl")
        parser.add_argument("--export", metavar="F.md", help="write the Markdown report at the end")
        parser.add_argument("--interval", metavar="T", help="tick length (default 1s)")
        add_team_flags(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Until --duration, Ctrl-C, SIGTERM or SIGHUP. The exit code is the
        watch's verdict (0 PASS, 1 FAIL: a critical or failing anomaly was
        raised), 2 for bad input."""
        cfg = build_run_config(args, watch=True)  # checks --record / --export too
        forget_secret_environment()
        mark_run_started()
        from app.session.watch import WatchSession

        with team_outputs(cfg, say_err) as attach:
            if not args.headless:
                from app.commands.run import run_console

                session = WatchSession(cfg)
                attach(session)
                return run_console(session)
            from app.frontends.headless import headless_printer, run_headless

            session = WatchSession(cfg, printer=headless_printer(cfg))
            attach(session)
            return run_headless(session)
