"""Is the console smooth under load, and does it cost the load anything?

    uv run python benchmarks/ui_smoothness.py [--concurrency 4] [--seconds 12]

Against an embedded PostgreSQL (or --pg DSN), with `pg-select` (the cheapest
operation, so the generator runs flat out at thousands of ops/s):

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

Targets (issue 4): p99 frame gap <= 150 ms, key to applied <= 200 ms,
console/headless throughput >= 0.97.
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
from app.scenario import builtin_scenarios
from app.session.runner import RunConfig, Session


def config(dsn: str, concurrency: int, seconds: float) -> RunConfig:
    return RunConfig(
        scenarios=[(builtin_scenarios()["pg-select"], 1.0)],
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


def run_headless(dsn: str, concurrency: int, seconds: float) -> float:
    import io

    from app.cli import headless_printer
    from app.session.runner import run_sync

    cfg = config(dsn, concurrency, seconds)
    session = Session(cfg, printer=headless_printer(cfg))
    with contextlib.redirect_stdout(io.StringIO()):
        run_sync(session.run())
    return steady_ops(session)


args_debug = "--debug" in sys.argv


def run_thread(dsn: str, concurrency: int, seconds: float) -> float:
    """The console's engine arrangement (own thread and loop), without an app."""
    session = Session(config(dsn, concurrency, seconds))
    session.start_thread()
    session.wait(seconds + 60)
    return steady_ops(session)


async def run_console(dsn: str, concurrency: int, seconds: float) -> dict[str, Any]:
    from app.ui.main import TicksArrived, make_live_app

    cfg = config(dsn, concurrency, seconds + 60)  # the key phase runs after the steady phase
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", help="a PostgreSQL DSN (default: an embedded server)")
    ap.add_argument("--concurrency", "-c", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--debug", action="store_true", help="print where the long frame gaps were")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.pg
        if not dsn:
            from app.embedded import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres()).dsn
        c, s = args.concurrency, args.seconds
        print(f"pg-select, {c} workers, {s:.0f} s per run (first 2 ticks skipped)")
        print("runs alternate headless / console, so machine noise hits both alike")
        heads, cons = [], []
        for i in range(args.rounds):
            heads.append(run_headless(dsn, c, s))
            print(f"  headless {i + 1}: {heads[-1]:8.0f} ops/s")
            cons.append(asyncio.run(run_console(dsn, c, s)))
            print(f"  console  {i + 1}: {cons[-1]['ops']:8.0f} ops/s")
        heads.append(run_headless(dsn, c, s))
        print(f"  headless {args.rounds + 1}: {heads[-1]:8.0f} ops/s")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
