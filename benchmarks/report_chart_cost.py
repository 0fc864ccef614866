"""What the report's chart costs on a long session: an 8-hour recording
(28,800 one-second ticks, two scenarios, realistic latency histograms) fed to
the chart in one pass, as a streamed report feeds it.

Prints the time per tick and in all (percentiles from each tick's
histograms, bucketing), the Python memory the chart's state holds at the end
and at its peak (tracemalloc, ticks made one at a time and dropped), the
SVG's size and how long it and the text chart take to render.

    uv run python benchmarks/report_chart_cost.py [--hours 8]
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.session.chart import ChartBuilder
from app.session.chart_render import render_svg, render_text
from app.tick import ControlEvent, ScenarioWindow, Tick, new_histogram


def ticks(n: int, seed: int = 7) -> Iterator[Tick]:
    rnd = random.Random(seed)
    t0 = 1_780_000_000.0
    conc = 1
    for i in range(1, n + 1):
        events = ()
        if i % 1800 == 0:  # a step every half hour
            events = (ControlEvent(t0 + i, "concurrency", "plan", conc, conc * 2),)
            conc = min(conc * 2, 256)
        wins = []
        for k, name in enumerate(("checkout", "browse")):
            h = new_histogram()
            for _ in range(40):  # 40 distinct values a tick, each counted many times
                us = int(rnd.lognormvariate(math.log(800 * (1 + k) * (1 + conc / 32)), 0.6))
                h.record_value(max(1, min(us, 59_000_000)), 25)
            wins.append(ScenarioWindow(name, conc, conc, 1000, 1000, 0, {}, h))
        yield Tick(i, t0 + i, float(i), 1.0, "workers", conc, conc,
                   scenarios=tuple(wins), events=events)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=8.0)
    args = ap.parse_args()
    n = int(args.hours * 3600)
    # the synthetic ticks' own cost, to subtract
    t = time.perf_counter()
    for _ in ticks(n):
        pass
    make = time.perf_counter() - t
    cb = ChartBuilder()
    t = time.perf_counter()
    for tk in ticks(n):
        cb.add(tk)
    chart = time.perf_counter() - t - make
    data = cb.data()
    # memory, in a second pass: what the chart's state holds once the last tick
    # is dropped, and the peak (one tick and its histograms alive at a time)
    del tk, cb
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cb = ChartBuilder()
    for tk in ticks(n):
        cb.add(tk)
    del tk
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"ticks: {n:,} ({args.hours:g} h, 2 scenarios)")
    print(f"chart pass: {chart:.1f} s ({1e6 * chart / n:.0f} µs/tick, making the ticks excluded)")
    print(
        f"points: {len(data.xs)} of {data.ticks_per_point} ticks each; markers {len(data.markers)}"
    )
    print(f"memory: {(held - base) / 1024:.0f} KiB held by the chart's state,"
          f" {(peak - base) / 1024:.0f} KiB peak (with the synthetic ticks, made one at a time)")  # fmt: skip
    t = time.perf_counter()
    svg = render_svg(data, title="benchmark")
    s1 = time.perf_counter() - t
    t = time.perf_counter()
    render_text(data)
    s2 = time.perf_counter() - t
    print(f"svg: {len(svg) / 1024:.0f} KiB in {1000 * s1:.0f} ms; text chart {1000 * s2:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
