"""`loadtop replay F.jsonl`: the console over a recording."""

from __future__ import annotations

import argparse

from app.commands.base import fail
from app.session.recording import RecordingError, read_recording


class Replay:
    name = "replay"
    help = "the console over a recording"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("recording", metavar="F.jsonl")

    def run(self, args: argparse.Namespace) -> int:
        if not args.recording.strip():
            fail("the recording is empty text: give the path of a .jsonl recording")
        try:
            rec = read_recording(args.recording)
        except RecordingError as e:
            fail(str(e))
        from app.ui.main import run_replay

        return run_replay(rec)
