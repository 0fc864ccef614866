"""Regenerate docs/report-chart.svg: the report's chart of a real ramp.

    uv run python docs/make_report_chart.py [--pg DSN] [--steps 1,4,16,32] [--step-seconds 5]

Runs `loadtop run --headless -s hot-counter` (every worker increments one
row, so the row lock is the bottleneck and latency climbs with concurrency)
with a ramp plan against --pg, or an embedded PostgreSQL when none is given,
records it, then writes the report with `loadtop report -o` and keeps its SVG.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", help="PostgreSQL DSN (default: an embedded server)")
    ap.add_argument("--steps", default="1,4,16,32")
    ap.add_argument("--step-seconds", default="5")
    ap.add_argument("--out", default=str(ROOT / "docs" / "report-chart.svg"))
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.pg
        if not dsn:
            from app.embedded import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres()).dsn
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        rec, md = tmp / "ramp.jsonl", tmp / "ramp.md"
        cli = [sys.executable, "-m", "app.cli"]
        subprocess.run(
            [*cli, "run", "--headless", "-s", "hot-counter", "--pg", dsn, "--steps", args.steps,
             "--step-seconds", args.step_seconds, "--record", str(rec)],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=300,
        )  # fmt: skip
        subprocess.run([*cli, "report", str(rec), "-o", str(md)], check=True, cwd=ROOT, timeout=120)
        shutil.copyfile(md.with_suffix(".svg"), args.out)
        print(md.read_text().split("## Run")[0])
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
