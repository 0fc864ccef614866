"""What loadtop's HTTP load path costs, in one run, on 127.0.0.1 only:

1. Little's law: 64 workers against an endpoint that takes 20 ms per request
   can make at most 64 / 0.020 = 3,200 requests/s. loadtop's `http` scenario
   (aiohttp) should reach >= 95% of that. Below it: the ideal recomputed from
   the latency actually measured (N / mean latency), which separates "the
   endpoint answered slower than 20 ms" from "the generator queued", and a
   bare aiohttp loop against the same endpoint, for the box's own ceiling.
2. Against wrk on a fast endpoint (no delay), 64 connections: loadtop's
   requests/s over wrk's, and a bare aiohttp loop (64 tasks, one session) as
   the Python ceiling.

The endpoint is a minimal asyncio HTTP/1.1 server in a child process (this
file with `--serve`), so it neither shares the generator's event loop nor
eats much of a 2-core box's CPU.

    uv run python benchmarks/http_generator_cost.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# ---- the endpoint (child process) ------------------------------------------------------


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def serve(port: int, delay_ms: int) -> None:
    """A minimal HTTP/1.1 keep-alive endpoint on an asyncio protocol: GET /slow
    answers after `delay_ms`, anything else at once. Its own cost is a few
    tens of µs per request, so on a 2-core box it does not compete with the
    generator for CPU the way a framework server would."""
    import uvloop

    delay = delay_ms / 1000.0

    class Endpoint(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                head, self.buf = self.buf[:i], self.buf[i + 4 :]
                if head.startswith(b"GET /slow"):
                    loop.call_later(delay, self.respond)
                else:
                    self.respond()

        def respond(self) -> None:
            if not self.t.is_closing():
                self.t.write(RESPONSE)

    async def main() -> None:
        server = await loop.create_server(Endpoint, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())


def start_server(delay_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    from app.embedded import free_port

    port = free_port()
    cmd = [sys.executable, __file__, "--serve", str(port), "--delay-ms", str(delay_ms)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{url}/fast", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the benchmark endpoint did not start")


# ---- generators --------------------------------------------------------------------------


async def loadtop(url: str, path: str, workers: int, seconds: float) -> dict[str, float]:
    from app.engine.engine import EngineConfig
    from app.session.runner import RunConfig, Session
    from scenarios.http import HttpRequest

    session = Session(
        RunConfig(
            scenarios=[(HttpRequest, 1.0)],
            http_url=url,
            params={"path": path},
            engine=EngineConfig(concurrency=workers, max_concurrency=workers, duration=seconds + 1),
            probes=False,
        )
    )
    marks: list[tuple[float, float]] = []  # (cpu, wall) at each tick's close
    session.subscribe(lambda _t: marks.append((time.process_time(), time.perf_counter())))
    await session.run()
    steady = session.ticks[1:-1]  # not the first (connections opening), nor the partial last
    ok = sum(w.ok for t in steady for w in t.scenarios)
    failed = sum(w.failed for t in steady for w in t.scenarios)
    wall = sum(t.interval for t in steady)
    hist = None
    for t in steady:
        for w in t.scenarios:
            if hist is None:
                hist = type(w.hist)(1, 60_000_000, 3)
            hist.add(w.hist)
    assert hist is not None
    cpu = marks[len(steady)][0] - marks[0][0]
    return {
        "rps": ok / wall,
        "cpu_us": cpu / ok * 1e6,
        "gen_cpu": max(t.generator.cpu_pct for t in steady),
        "failed": failed,
        "mean_ms": hist.get_mean_value() / 1000.0,
        "p50_ms": hist.get_value_at_percentile(50) / 1000.0,
        "p99_ms": hist.get_value_at_percentile(99) / 1000.0,
    }


async def bare_aiohttp(url: str, workers: int, seconds: float) -> tuple[float, float]:
    import aiohttp

    count = 0
    stop = False
    conn = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def task() -> None:
            nonlocal count
            while not stop:
                async with s.get(url) as r:
                    await r.read()
                count += 1

        tasks = [asyncio.create_task(task()) for _ in range(workers)]
        await asyncio.sleep(1.0)
        n0, t0, c0 = count, time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        n, el, cpu = count - n0, time.perf_counter() - t0, time.process_time() - c0
        stop = True
        await asyncio.gather(*tasks)
    return n / el, cpu / n * 1e6


def wrk(url: str, connections: int, seconds: float) -> float | None:
    exe = shutil.which("wrk")
    if exe is None:
        print("wrk: not installed (apt-get install -y wrk); skipped")
        return None
    out = subprocess.run(
        [exe, "-t1", f"-c{connections}", f"-d{max(int(seconds), 1)}s", url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--delay-ms", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.delay_ms)
        return 0

    import uvloop

    proc, url = start_server(args.delay_ms)
    try:
        n, d = args.workers, args.delay_ms
        ideal = n / (d / 1000.0)
        print(f"endpoint {url} (a minimal asyncio server in a child process), {n} workers")
        slow = uvloop.run(loadtop(url, "/slow", n, args.seconds))
        print(f"\n1. {d} ms endpoint, Little's law ideal {ideal:,.0f} req/s")
        print(f"loadtop http          : {slow['rps']:>8,.0f} req/s = {slow['rps'] / ideal:.1%} of ideal"
              f" (target >= 95%), {slow['failed']:.0f} failed")  # fmt: skip
        print(f"generator             : {slow['cpu_us']:.0f} µs CPU per request,"
              f" up to {slow['gen_cpu']:.0f}% CPU (100% = one core)")  # fmt: skip
        print(f"latency measured      : mean {slow['mean_ms']:.1f} ms, p50 {slow['p50_ms']:.1f} ms,"
              f" p99 {slow['p99_ms']:.1f} ms -> N/mean = {n / (slow['mean_ms'] / 1000):,.0f} req/s")  # fmt: skip
        bare_slow, bare_slow_cpu = uvloop.run(bare_aiohttp(f"{url}/slow", n, args.seconds))
        print(f"bare aiohttp loop     : {bare_slow:>8,.0f} req/s = {bare_slow / ideal:.1%} of ideal,"
              f" {bare_slow_cpu:.0f} µs CPU/request (the same box, endpoint and timer)")  # fmt: skip
        w_slow = wrk(f"{url}/slow", n, args.seconds)
        if w_slow:
            print(f"wrk -t1 -c{n}          : {w_slow:>8,.0f} req/s = {w_slow / ideal:.1%} of ideal"
                  " (what the endpoint itself allows)")  # fmt: skip

        print("\n2. fast endpoint (no delay)")
        w = wrk(f"{url}/fast", n, args.seconds)
        fast = uvloop.run(loadtop(url, "/fast", n, args.seconds))
        bare, bare_cpu = uvloop.run(bare_aiohttp(f"{url}/fast", n, args.seconds))
        if w:
            print(f"wrk -t1 -c{n}          : {w:>8,.0f} req/s")
        print(f"bare aiohttp loop     : {bare:>8,.0f} req/s, {bare_cpu:.0f} µs CPU/request")
        print(f"loadtop http          : {fast['rps']:>8,.0f} req/s, {fast['cpu_us']:.0f} µs CPU/request"
              f" (p50 {fast['p50_ms']:.1f} ms)")  # fmt: skip
        if w:
            print(f"loadtop / wrk         : {fast['rps'] / w:.2f}")
        print(f"loadtop / bare aiohttp: {fast['rps'] / bare:.2f}")
        return 0 if slow["rps"] >= 0.95 * ideal else 1
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
