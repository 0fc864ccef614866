"""`loadtop replay F.jsonl`: the console over a recording; with `--follow`,
over a recording still being written (read-only, from the live end)."""

from __future__ import annotations

import argparse

from app.commands.base import fail
from app.session.recording import RecordingError, read_recording


class Replay:
    name = "replay"
    help = "the console over a recording (--follow: one still being written)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("recording", metavar="F.jsonl")
        parser.add_argument("--follow", "-f", action="store_true",
                            help="follow a recording still being written, from its live end")  # fmt: skip
        # the web view's viewer count, for the follow header (set by --web)
        parser.add_argument("--viewers-file", help=argparse.SUPPRESS)

    def run(self, args: argparse.Namespace) -> int:
        if not args.recording.strip():
            fail("the recording is empty text: give the path of a .jsonl recording")
        if args.follow:
            from pathlib import Path

            from app.ui.follow import run_follow

            where = Path(args.recording).parent
            if not where.is_dir():
                fail(f"--follow {args.recording}: directory {where} does not exist: check the path")

            try:
                return run_follow(args.recording, viewers_file=args.viewers_file)
            except RecordingError as e:
                fail(str(e))
        try:
            rec = read_recording(args.recording, index_file=True)
        except RecordingError as e:
            fail(str(e))
        from app.ui.main import run_replay

        return run_replay(rec)
