"""Is the console smooth under load, and does it cost the load anything?

    uv run python benchmarks/ui_smoothness.py [--load paced|flat|both] [--seconds 12]

Against an embedded PostgreSQL (or --pg DSN), two loads:

- paced (issue 4's measuring point, about 5,000 ops/s): `SELECT pg_sleep(2 ms)`
  from 12 workers, so throughput is bound by the server's latency and any CPU
  the console takes from the engine shows as slower turnarounds;
- flat: `pg-select` (the cheapest operation) from 4 workers, the generator
  flat out with the CPU saturated (about 30,000 ops/s here): the worst case.

For each:

1. headless: `loadtop run --headless`'s path (Session.run on the main loop,
   with the one-line-per-tick printer): ops/s over the steady part;
2. console: the same session on its own thread (as `loadtop run` does) with
   the Textual app at 120x40 (Textual's headless driver: everything is laid
   out and rendered, only the terminal write is skipped):
   - frame gaps: a 30 Hz heartbeat on the app's loop; a gap is the time
     between two beats, so a late beat is a late frame (p50/p99/max);
   - render cost per tick (the TicksArrived handler, all panes);
   - key press to concurrency applied: a `+` (then `-`) key event into the
     app's queue, until the engine's target has changed, 20 times;
   - ops/s over the steady part, and its ratio to headless.

Targets (issue 4, measured at 5,000 ops/s): p99 frame gap <= 150 ms, key to
applied <= 200 ms, console/headless throughput >= 0.97.

Measured here (2 cores, embedded PostgreSQL 18.6 on the same box), 2026-11-22:
- paced, ~5,200 ops/s: console/headless median 0.972 (0.988, 0.972, 0.960);
  frame gap p50 33 ms, p99 38 ms; key -> applied p50 2.7 ms, p99 5.9 ms;
  render 8.3 ms per tick; the UI thread 4.5% of a core. Targets met.
- flat, ~30,000 ops/s with the CPU saturated: 0.951 (0.970, 0.940, 0.951);
  frame gap p99 74 ms; key -> applied p99 4.7 ms. Past the target's load the
  console's GIL share shows; --processes N moves the workers off it where
  there are cores to spare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.engine import EngineConfig
from app.scenario import Context, Scenario, builtin_scenarios
from app.session.runner import RunConfig, Session


class PacedSelect(Scenario):
    """A read the server holds for `sleep_ms`: throughput is concurrency / latency."""

    name = "paced-select"
    needs = ("postgres",)
    writes = False
    sleep_s = 0.002

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.fetchval("SELECT pg_sleep($1)", self.sleep_s)


LOADS: dict[str, tuple[type[Scenario], int]] = {}  # name -> (scenario, workers), set in main


def config(dsn: str, load: str, seconds: float) -> RunConfig:
    scenario, concurrency = LOADS[load]
    return RunConfig(
        scenarios=[(scenario, 1.0)],
        pg_dsn=dsn,
        engine=EngineConfig(
            concurrency=concurrency, duration=seconds, end_with_plan=False, max_concurrency=256
        ),
    )


def steady_ops(session: Session, skip: int = 2, until: int | None = None) -> float:
    ticks = [t for t in session.ticks if t.interval > 0.5][skip:]
    if until is not None:
        ticks = ticks[: until - skip]
    if not ticks:
        return 0.0
    return sum(t.completed for t in ticks) / sum(t.interval for t in ticks)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def run_headless(dsn: str, load: str, seconds: float) -> float:
    import io

    from app.frontends.headless import headless_printer
    from app.session.runner import run_sync

    cfg = config(dsn, load, seconds)
    session = Session(cfg, printer=headless_printer(cfg))
    with contextlib.redirect_stdout(io.StringIO()):
        run_sync(session.run())
    return steady_ops(session)


args_debug = "--debug" in sys.argv


async def run_console(dsn: str, load: str, seconds: float) -> dict[str, Any]:
    from app.ui.main import TicksArrived, make_live_app

    cfg = config(dsn, load, seconds + 60)  # the key phase runs after the steady phase
    session = Session(cfg)
    app = make_live_app(session)
    await asyncio.to_thread(session.start_thread)
    assert session.error is None, session.error
    beats: list[float] = []
    renders: list[float] = []
    orig = app._drain

    def timed_drain() -> None:
        t0 = time.perf_counter()
        orig()
        renders.append(time.perf_counter() - t0)

    app._drain = timed_drain  # type: ignore[method-assign]
    _ = TicksArrived
    out: dict[str, Any] = {}
    async with app.run_test(size=(120, 40)) as pilot:
        # phase 1: throughput, the console as it is (no measuring heartbeat)
        t_start = time.monotonic()
        cpu0 = time.thread_time()
        while time.monotonic() - t_start < seconds:
            await asyncio.sleep(0.1)
        out["ui_cpu"] = (time.thread_time() - cpu0) / (time.monotonic() - t_start)
        n_ticks = len(session.ticks)
        out["ops"] = steady_ops(session)
        # phase 2: frame gaps, with a 30 Hz heartbeat on the app's loop
        app.set_interval(1 / 30, lambda: beats.append(time.perf_counter()))
        t_start = time.monotonic()
        while time.monotonic() - t_start < seconds / 2:
            await asyncio.sleep(0.1)
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(beats)]
        if "--debug" in sys.argv:
            t0 = beats[0]
            print(
                "big gaps at",
                [
                    (round(a - t0, 2), round(g))
                    for a, g in zip(beats, gaps, strict=False)
                    if g > 150
                ],
            )
        out["gap_p50"], out["gap_p99"], out["gap_max"] = pct(gaps, 50), pct(gaps, 99), max(gaps)
        out["beats"] = len(beats)
        out["render_ms"] = [r * 1000 for r in renders]
        out["ticks"] = n_ticks
        eng = session.engine
        assert eng is not None
        lat = []
        for i in range(20):
            key, want = ("plus", eng.target + 1) if i % 2 == 0 else ("minus", eng.target - 1)
            t0 = time.perf_counter()
            # as a terminal delivers it: a key event into the app's queue (Pilot's
            # press() also waits until every widget is idle, which a live console
            # never quite is)
            app.simulate_key(key)
            while eng.target != want and time.perf_counter() - t0 < 5:
                await asyncio.sleep(0.0005)
            lat.append((time.perf_counter() - t0) * 1000)
            if args_debug:
                print("key", i, key, round(lat[-1], 1), file=sys.stderr)
            await pilot.pause(0.15)
        out["key_ms"] = lat
    session.stop("benchmark over")
    await asyncio.to_thread(session.wait, 60)
    return out


def measure(dsn: str, load: str, seconds: float, rounds: int) -> None:
    scenario, c = LOADS[load]
    print(f"\n== {load}: {scenario.name}, {c} workers, {seconds:.0f} s per run "
          f"(first 2 ticks skipped) ==")  # fmt: skip
    print("runs alternate headless / console, so machine noise hits both alike")
    heads, cons = [], []
    for i in range(rounds):
        heads.append(run_headless(dsn, load, seconds))
        print(f"  headless {i + 1}: {heads[-1]:8.0f} ops/s")
        cons.append(asyncio.run(run_console(dsn, load, seconds)))
        print(f"  console  {i + 1}: {cons[-1]['ops']:8.0f} ops/s")
    heads.append(run_headless(dsn, load, seconds))
    print(f"  headless {rounds + 1}: {heads[-1]:8.0f} ops/s")
    # each console run against the mean of the headless runs around it
    ratios = [con["ops"] / ((heads[i] + heads[i + 1]) / 2) for i, con in enumerate(cons)]
    print(
        f"throughput:      console/headless median {statistics.median(ratios):.3f}"
        f"  (runs: {', '.join(f'{r:.3f}' for r in ratios)}; target >= 0.97)"
    )
    gaps99 = [con["gap_p99"] for con in cons]
    print(
        f"frame gap:       p50 {statistics.median(con['gap_p50'] for con in cons):.0f} ms"
        f"  p99 {statistics.median(gaps99):.0f} ms (worst run {max(gaps99):.0f})"
        f"  max {max(con['gap_max'] for con in cons):.0f} ms"
        "  (30 Hz heartbeat; target p99 <= 150 ms)"
    )
    cpu = statistics.median(con["ui_cpu"] for con in cons)
    print(f"UI thread CPU:   {100 * cpu:.1f}% of a core (Textual and the panes, phase 1)")
    r = [x for con in cons for x in con["render_ms"]]
    print(f"render per tick: p50 {statistics.median(r):.1f} ms  max {max(r):.1f} ms")
    k = [x for con in cons for x in con["key_ms"]]
    print(
        f"key -> applied:  p50 {statistics.median(k):.1f} ms  p99 {pct(k, 99):.1f} ms"
        f"  max {max(k):.1f} ms  (target <= 200 ms)"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", help="a PostgreSQL DSN (default: an embedded server)")
    ap.add_argument("--load", choices=("paced", "flat", "both"), default="both")
    ap.add_argument("--paced-workers", type=int, default=12)
    ap.add_argument("--flat-workers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--debug", action="store_true", help="print where the long frame gaps were")
    args = ap.parse_args()
    LOADS["paced"] = (PacedSelect, args.paced_workers)
    LOADS["flat"] = (builtin_scenarios()["pg-select"], args.flat_workers)
    with contextlib.ExitStack() as stack:
        dsn = args.pg
        if not dsn:
            from app.embedded import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres()).dsn
        for load in ("paced", "flat") if args.load == "both" else (args.load,):
            measure(dsn, load, args.seconds, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
