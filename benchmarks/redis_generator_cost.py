"""What loadtop's Redis load path costs, against the best plain Python does and
against redis-benchmark, in one run, at 50 clients, on an embedded Valkey:

1. redis-benchmark (C): `-c 50 -n N -t set,get -d 3`, its SET and GET rates
   averaged (each is one command per request, as below);
2. a bare redis-py loop: uvloop, hiredis, 50 tasks each with its own
   connection, GET or SET (50/50) on random keys, 3-byte values;
3. loadtop's `redis-getset` scenario, headless through the Session API, 50
   workers (each worker keeps its own connection: `-p conn=own`, the default),
   and the same with a pool borrow per command (`-p conn=pool`).

Target: loadtop >= 0.9 of the bare loop. Everything talks to 127.0.0.1 only
and is bounded (`--seconds` per Python run, `--requests` for redis-benchmark).

    uv run python benchmarks/redis_generator_cost.py [--seconds 5] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEYS = 10_000
VALUE = b"xxx"


def redis_benchmark(host: str, port: int, clients: int, requests: int) -> float | None:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        print("redis-benchmark: not installed (apt-get install -y redis-tools); skipped")
        return None
    out = subprocess.run(
        [exe, "-h", host, "-p", str(port), "-c", str(clients), "-n", str(requests),
         "-t", "set,get", "-d", "3", "-r", str(KEYS), "--csv", "-q"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    rates = {}
    for row in csv.reader(io.StringIO(out)):
        if len(row) >= 2 and row[0] in ("SET", "GET"):
            rates[row[0]] = float(row[1])
    for name, rate in rates.items():
        print(f"redis-benchmark {name:>3}: {rate:>10,.0f} ops/s")
    return sum(rates.values()) / len(rates) if rates else None


async def bare_loop(url: str, clients: int, seconds: float) -> tuple[float, float]:
    """ops/s and client CPU µs per op over the steady part of the run."""
    import redis.asyncio as aioredis

    keys = [f"bench:bare:{i}" for i in range(KEYS)]
    count = 0
    stop = False

    async def task(seed: int) -> None:
        nonlocal count
        r = aioredis.Redis.from_url(url, single_connection_client=True)
        rng = random.Random(seed)
        try:
            while not stop:
                x = rng.random()
                key = keys[int(x * 1_000_003) % KEYS]
                if x < 0.5:
                    await r.set(key, VALUE)
                else:
                    await r.get(key)
                count += 1
        finally:
            await r.aclose()

    tasks = [asyncio.create_task(task(i)) for i in range(clients)]
    await asyncio.sleep(1.0)  # connect and warm up, then count
    n0, c0, t0 = count, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    n, cpu, elapsed = count - n0, time.process_time() - c0, time.perf_counter() - t0
    stop = True
    await asyncio.gather(*tasks)
    r = aioredis.Redis.from_url(url)
    batch = [k async for k in r.scan_iter(match="bench:bare:*", count=1000)]
    for i in range(0, len(batch), 500):
        await r.unlink(*batch[i : i + 500])
    await r.aclose()
    return n / elapsed, cpu / n * 1e6


async def loadtop_run(url: str, clients: int, seconds: float, conn: str) -> tuple[float, float]:
    """ops/s and client CPU µs per op over the steady ticks (not the first,
    when workers connect, nor the partial last one)."""
    from app.engine.engine import EngineConfig
    from app.session.runner import RunConfig, Session
    from scenarios.redis import RedisGetSet

    session = Session(
        RunConfig(
            scenarios=[(RedisGetSet, 1.0)],
            redis_url=url,
            params={"conn": conn, "keys": str(KEYS), "value_size": str(len(VALUE))},
            engine=EngineConfig(concurrency=clients, duration=seconds + 1.0),
            probes=False,
        )
    )
    marks: list[tuple[int, float, float]] = []  # (tick, cpu, wall) at each tick's close
    session.subscribe(lambda t: marks.append((t.index, time.process_time(), time.perf_counter())))
    await session.run()
    steady = [t for t in session.ticks[1:-1]]
    ok = sum(w.ok for t in steady for w in t.scenarios)
    (_, c0, w0), (_, c1, w1) = marks[0], marks[len(steady)]
    return ok / (w1 - w0), (c1 - c0) / ok * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--requests", type=int, default=200_000, help="redis-benchmark -n")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redis", help="use this server instead of an embedded Valkey")
    args = ap.parse_args()

    import uvloop

    from app.embedded import EmbeddedRedis

    server = None
    url = args.redis
    if url is None:
        server = EmbeddedRedis().start()
        url = server.url
    try:
        p = urlsplit(url)
        host, port = p.hostname or "127.0.0.1", p.port or 6379
        print(f"target {host}:{port} ({'embedded Valkey' if server else 'given'}),"
              f" {args.clients} clients, 3-byte values, {KEYS} keys, 50% SET")  # fmt: skip
        rb = redis_benchmark(host, port, args.clients, args.requests)
        # the box is shared: interleave the runs, alternate their order, take medians
        runs: dict[str, list[tuple[float, float]]] = {"bare": [], "own": [], "pool": []}
        for i in range(args.rounds):
            order = ["bare", "own", "pool"] if i % 2 == 0 else ["pool", "own", "bare"]
            for name in order:
                if name == "bare":
                    res = uvloop.run(bare_loop(url, args.clients, args.seconds))
                else:
                    res = uvloop.run(loadtop_run(url, args.clients, args.seconds, name))
                runs[name].append(res)
                print(f"  round {i + 1} {name:<4}: {res[0]:>8,.0f} ops/s  {res[1]:>5.0f} µs CPU/op",
                      flush=True)  # fmt: skip
        med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
               for k, v in runs.items()}  # fmt: skip
        ratios = [o[0] / b[0] for o, b in zip(runs["own"], runs["bare"], strict=True)]
        cpu_ratio = med["bare"][1] / med["own"][1]
        print()
        print(f"medians of {args.rounds} rounds, {args.seconds:g} s each:")
        print(
            f"bare redis-py loop   : {med['bare'][0]:>8,.0f} ops/s  {med['bare'][1]:>5.0f} µs CPU/op"
            "  (uvloop, hiredis, a connection per task)"
        )
        print(
            f"loadtop redis-getset : {med['own'][0]:>8,.0f} ops/s  {med['own'][1]:>5.0f} µs CPU/op"
            "  (-p conn=own: a connection per worker)"
        )
        print(
            f"loadtop redis-getset : {med['pool'][0]:>8,.0f} ops/s  {med['pool'][1]:>5.0f} µs CPU/op"
            "  (-p conn=pool: a pool borrow per command)"
        )
        print()
        print(
            f"loadtop / bare, ops/s    : {statistics.median(ratios):.2f} (per round:"
            f" {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.90)"
        )
        print(f"loadtop / bare, CPU per op: {cpu_ratio:.2f} (bare µs/op over loadtop µs/op)")
        if rb:
            print(f"bare loop / redis-benchmark: {med['bare'][0] / rb:.2f}")
            print(f"loadtop / redis-benchmark  : {med['own'][0] / rb:.2f}")
        return 0 if statistics.median(ratios) >= 0.9 else 1
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    sys.exit(main())
