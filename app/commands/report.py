"""`loadtop report F.jsonl [-o F.md] [--json] [--redetect [--detect K.O=V ...]]`:
the report of a recording, optionally with its anomalies found again."""

from __future__ import annotations

import argparse
import sys

from app.commands.base import fail
from app.session.config import same_file
from app.session.recording import RecordingError, read_recording


class Report:
    name = "report"
    help = "the Markdown (or JSON) report of a recording"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("recording", metavar="F.jsonl")
        parser.add_argument("-o", "--output", metavar="F.md")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--redetect", action="store_true",
                            help="run the detectors again over the recording (with --detect changes)")  # fmt: skip
        parser.add_argument("--detect", action="append", default=[], metavar="KIND.OPTION=VALUE",
                            help="with --redetect: change a detector option (or disabled=KIND,...)")  # fmt: skip

    def run(self, args: argparse.Namespace) -> int:
        from app.session.export import render_report, write_report

        if not args.recording.strip():
            fail("the recording is empty text: give the path of a .jsonl recording")
        if args.output is not None and not args.output.strip():
            fail("-o is empty: give a file name, or leave it out to print the report")
        if args.output and same_file(args.output, args.recording):
            fail(f"-o {args.output} is the recording itself: the report would overwrite it;"
                 " give another file name")  # fmt: skip
        try:
            rec = read_recording(args.recording)
        except RecordingError as e:
            fail(str(e))
        if args.detect and not args.redetect:
            fail("--detect needs --redetect: `loadtop report --redetect F.jsonl --detect K.O=V`")
        if args.redetect:
            from app.session.pipeline import redetect_recording

            try:
                rec = redetect_recording(rec, args.detect)
            except ValueError as e:
                fail(str(e))
        try:  # the report streams the recording: a bad line shows up while rendering
            if args.output:
                try:
                    write_report(rec, args.output, json=args.json)
                except OSError as e:
                    fail(f"-o {args.output} cannot be written ({e.strerror}): choose another path")
                print(f"wrote {args.output}", file=sys.stderr)
            else:
                text = render_report(rec, json=args.json)
                sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
        except RecordingError as e:
            fail(str(e))
        return 0
