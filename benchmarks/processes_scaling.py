"""Does `--processes N` buy throughput when the generator's core is the limit?

    uv run python benchmarks/processes_scaling.py [--seconds 6] [--rounds 3]

Two loads, each headless at 1 and at N processes, runs interleaved so machine
noise hits both alike:

1. cpu-work: a scenario that spends ~200 µs of CPU per operation in Python and
   touches no target, so the generator is all there is: the ideal ratio is the
   number of free cores (N processes on N cores: N).
2. pg-select against an embedded PostgreSQL on the same machine: here the
   server needs the cores too, so extra generator processes only help when
   the machine has cores to spare. On a 2-core box expect no gain; the figure
   is printed so nobody takes --processes for a free lunch.

Prints ops/s per run and the medians' ratio processes=N / processes=1.

Measured here (2 cores), 2026-11-22: cpu-work 22,700 -> 44,700 ops/s, 1.97x
with 2 processes; pg-select with the server on the same box 0.79x (the
server and the two generator processes fight over the two cores).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.engine import EngineConfig
from app.scenario import Context, Scenario, builtin_scenarios
from app.session.runner import RunConfig, Session, run_sync


class CpuWork(Scenario):
    """~200 µs of hashing per operation: pure generator-side CPU."""

    name = "cpu-work"
    writes = False
    processes_ok = True
    blob = os.urandom(64 * 1024)

    async def run(self, ctx: Context) -> None:
        hashlib.sha256(self.blob).digest()


def ops_per_s(scenario: type[Scenario], procs: int, workers: int, seconds: float,
              dsn: str | None) -> float:  # fmt: skip
    cfg = RunConfig(
        scenarios=[(scenario, 1.0)], pg_dsn=dsn, probes=False, processes=procs,
        engine=EngineConfig(concurrency=workers, duration=seconds, max_concurrency=64),
    )  # fmt: skip
    session = Session(cfg)
    with contextlib.redirect_stdout(io.StringIO()):
        run_sync(session.run())
    ticks = [t for t in session.ticks if not t.is_drain][2:]  # skip the ramp-up
    return sum(t.completed for t in ticks) / sum(t.interval for t in ticks)


def measure(label: str, scenario: type[Scenario], n: int, workers: int, seconds: float,
            rounds: int, dsn: str | None) -> None:  # fmt: skip
    print(f"\n== {label}: {workers} workers, {seconds:.0f} s per run ==")
    one, many = [], []
    for i in range(rounds):
        one.append(ops_per_s(scenario, 1, workers, seconds, dsn))
        many.append(ops_per_s(scenario, n, workers, seconds, dsn))
        print(f"  round {i + 1}: processes=1 {one[-1]:9.0f} ops/s   processes={n} {many[-1]:9.0f}")
    ratio = statistics.median(many) / statistics.median(one)
    print(f"  processes={n} / processes=1: {ratio:.2f} (medians)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", "-n", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg", help="a PostgreSQL DSN (default: an embedded server)")
    args = ap.parse_args()
    n = max(2, args.processes)
    print(f"{os.cpu_count()} cores; comparing 1 and {n} worker processes")
    measure("cpu-work (no target)", CpuWork, n, 8, args.seconds, args.rounds, None)
    with contextlib.ExitStack() as stack:
        dsn = args.pg
        if not dsn:
            from app.embedded import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres()).dsn
        pg_select = builtin_scenarios()["pg-select"]
        measure("pg-select (server on this machine)", pg_select, n, 8, args.seconds,
                args.rounds, dsn)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
