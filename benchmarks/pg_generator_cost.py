"""What does loadtop's engine cost? Against one embedded PostgreSQL, in one run,
at 1, 8, 32 and 64 clients:

  pgbench        -f 'SELECT 1' -M prepared (C, the native peer)
  bare loop      asyncpg + uvloop, each task keeps its connection, no bookkeeping:
                 the best a Python client does
  loadtop        `pg-select` through the real Session (histograms, ticks, recording)

Prints ops/s for each and the ratios. Target: loadtop >= 0.9 of the bare loop.
On a 2-core box the client, the server and pgbench share the cores and runs
swing from one to the next, so each level runs `--rounds` interleaved rounds
(bare and loadtop alternate which goes first) and reports medians, plus the
client's CPU time per operation, which depends far less on the neighbours.

    uv run python benchmarks/pg_generator_cost.py [--seconds 5] [--clients 1,8,32,64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import uvloop

from app.embedded import EmbeddedPostgres
from app.engine.engine import EngineConfig
from app.scenario import load_scenarios
from app.session.runner import RunConfig, Session


def pgbench(pg: EmbeddedPostgres, clients: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("SELECT 1;\n")
        script = f.name
    os.chmod(script, 0o644)
    try:
        out = subprocess.run(
            [str(pg.pgbench_path()), "-n", "-M", "prepared", "-f", script, "-c", str(clients),
             "-j", str(min(clients, 2)), "-T", str(int(seconds)), "-h", "127.0.0.1",
             "-p", str(pg.port), "-U", "postgres", "postgres"],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    assert m, out
    return float(m[1])


async def bare_loop(dsn: str, clients: int, seconds: float) -> tuple[float, float]:
    conns = [await asyncpg.connect(dsn) for _ in range(clients)]
    count = 0
    stop = time.perf_counter() + seconds

    async def worker(c: asyncpg.Connection) -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await c.fetchval("SELECT 1")
            count += 1

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    for c in conns:
        await c.close()
    return count / elapsed, cpu * 1e6 / max(count, 1)


async def loadtop(dsn: str, clients: int, seconds: float, record: str) -> tuple[float, float]:
    cfg = RunConfig(
        scenarios=[(load_scenarios("pg-select")[0], 1.0)], pg_dsn=dsn, probes=False,
        engine=EngineConfig(concurrency=clients, duration=seconds + 1, max_concurrency=clients),
        record=record,
    )  # fmt: skip
    session = Session(cfg)
    cpu: dict[int, float] = {}
    # client CPU time when each tick closes: the run's CPU between two closes is its ticks' cost
    session.subscribe(lambda t: cpu.__setitem__(t.index, time.process_time()))
    await session.run()
    # tick 0 includes connection set-up; the last tick is the drain window
    ticks = [t for t in session.ticks[1:] if t.interval > 0.9]
    ops = sum(t.ok for t in ticks)
    cpu_s = cpu[ticks[-1].index] - cpu[ticks[0].index - 1]
    return ops / sum(t.interval for t in ticks), cpu_s * 1e6 / max(ops, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    rows = []
    with (
        EmbeddedPostgres(settings={"max_connections": 300}) as pg,
        tempfile.TemporaryDirectory() as tmp,
    ):
        print(f"embedded PostgreSQL on 127.0.0.1:{pg.port}; {args.seconds:g} s per measurement,"
              f" {args.rounds} interleaved rounds per level")  # fmt: skip
        for n in levels:
            pb = statistics.median(pgbench(pg, n, args.seconds) for _ in range(args.rounds))
            bare, lt = [], []
            for i in range(args.rounds):
                order = ("bare", "loadtop") if i % 2 == 0 else ("loadtop", "bare")
                for who in order:
                    if who == "bare":
                        bare.append(uvloop.run(bare_loop(pg.dsn, n, args.seconds)))
                    else:
                        lt.append(uvloop.run(loadtop(pg.dsn, n, args.seconds, f"{tmp}/r{n}{i}")))
            b_ops = statistics.median(x for x, _ in bare)
            l_ops = statistics.median(x for x, _ in lt)
            b_cpu = statistics.median(c for _, c in bare)
            l_cpu = statistics.median(c for _, c in lt)
            rows.append((n, pb, b_ops, l_ops, b_cpu, l_cpu))
            print(f"  {n:>3} clients: pgbench {pb:9.0f}  bare {b_ops:9.0f} ({b_cpu:.0f} µs CPU/op)"
                  f"  loadtop {l_ops:9.0f} ({l_cpu:.0f} µs CPU/op)", flush=True)  # fmt: skip
    print()
    print("| clients | pgbench ops/s | bare asyncpg ops/s | loadtop ops/s | loadtop/bare |"
          " bare/pgbench | loadtop/pgbench | CPU µs/op bare | CPU µs/op loadtop | bare/loadtop CPU |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, pb, bare, lt, bc, lc in rows:
        print(f"| {n} | {pb:,.0f} | {bare:,.0f} | {lt:,.0f} | {lt / bare:.2f} | {bare / pb:.2f} |"
              f" {lt / pb:.2f} | {bc:.1f} | {lc:.1f} | {bc / lc:.2f} |")  # fmt: skip
    worst = min(lt / bare for _, _, bare, lt, _, _ in rows)
    worst_cpu = min(bc / lc for *_, bc, lc in rows)
    print(f"\nworst loadtop/bare throughput ratio: {worst:.2f}; worst CPU-per-op ratio:"
          f" {worst_cpu:.2f} (target >= 0.90)")  # fmt: skip


if __name__ == "__main__":
    main()
