"""How long loadtop takes to start and stop many workers, and whether the rate
scheduler keeps time at any rate (issue 13: `--rate 2000000/s` froze the loop,
`--max-concurrency 10000` did not finish shutting down).

For each case: a run of `--duration` seconds, with the first tick's time (the
loop was free to tick), the stop's time, the drain (stop -> every worker gone)
and the total. Cases:

1. a no-target scenario (one `await asyncio.sleep(0)` per operation) with 10,000
   workers: spawning and stopping cost alone;
2. the same at --rate 2,000,000/s with 64 workers: scheduled, dropped, done;
3. `pg-select` with 10,000 workers against an embedded PostgreSQL
   (max_connections 100): the connection storm (skip with --no-pg).

    uv run python benchmarks/start_stop_bounds.py [--workers 10000] [--no-pg]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from app.engine.engine import EngineConfig
from app.engine.pool import WorkerPool
from app.scenario import Context, Scenario, load_scenarios
from app.session.runner import RunConfig, Session


class Noop(Scenario):
    name = "noop"
    needs = ()

    async def run(self, ctx: Context) -> None:
        await asyncio.sleep(0)


async def measure(label: str, cfg: RunConfig) -> None:
    session = Session(cfg)
    marks: dict[str, float] = {}
    drain = WorkerPool.drain

    async def timed_drain(self: WorkerPool) -> None:
        marks["stop"] = time.monotonic()
        await drain(self)
        marks["drained"] = time.monotonic()

    WorkerPool.drain = timed_drain  # type: ignore[method-assign]
    t0 = time.monotonic()
    try:
        out = await session.run()
    finally:
        WorkerPool.drain = drain  # type: ignore[method-assign]
    total = time.monotonic() - t0
    ticks = session.ticks
    first = ticks[0].elapsed if ticks else float("nan")
    scheduled = sum(s.scheduled for t in ticks for s in t.scenarios)
    dropped = sum(s.dropped for t in ticks for s in t.scenarios)
    ok = sum(t.ok for t in ticks)
    e = cfg.engine
    print(
        f"{label}: duration {e.duration:g} s, interval {e.interval:g} s -> first tick at"
        f" {first:.2f} s, {len(ticks)} ticks, stop at {marks.get('stop', t0) - t0:.2f} s,"
        f" drain {marks.get('drained', 0) - marks.get('stop', 0):.2f} s, total {total:.2f} s;"
        f" {ok:,} ok"
        + (f", {scheduled:,} scheduled, {dropped:,} dropped" if e.rate else "")
        + f"; verdict {out.verdict}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    n, d = args.workers, args.duration

    def engine(**kw: Any) -> EngineConfig:
        kw.setdefault("concurrency", n)
        kw.setdefault("max_concurrency", max(n, kw["concurrency"]))
        return EngineConfig(duration=d, interval=0.5, **kw)

    asyncio.run(measure(f"{n:,} no-target workers",
                        RunConfig(scenarios=[(Noop, 1.0)], probes=False, engine=engine())))  # fmt: skip
    asyncio.run(measure("rate 2,000,000/s, 64 workers",
                        RunConfig(scenarios=[(Noop, 1.0)], probes=False,
                                  engine=engine(concurrency=64, rate=2_000_000.0))))  # fmt: skip
    if not args.no_pg:
        from app.embedded import EmbeddedPostgres

        [cls] = load_scenarios("pg-select")
        with EmbeddedPostgres() as pg:
            asyncio.run(measure(f"{n:,} pg-select workers, embedded PostgreSQL",
                                RunConfig(scenarios=[(cls, 1.0)], pg_dsn=pg.dsn, probes=False,
                                          engine=engine())))  # fmt: skip


if __name__ == "__main__":
    main()
