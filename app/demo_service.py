"""The demo's HTTP service: the stock-reservation store as a JSON API.

Starlette on uvicorn, over PostgreSQL (asyncpg) and Redis, so `loadtop demo`
has an HTTP target whose latency comes from real row locks and a real cache.

    GET  /             -> {"service": "loadtop-demo-shop", ...}
    GET  /health       -> {"ok": true} (503 when Postgres or Redis is down)
    GET  /stock/{id}   -> {"product": id, "quantity": q, "reserved": r, "cached": bool}
                          (cached in Redis for 1 s)
    POST /reserve      {"product": id, "k": units} -> 200 {"product", "left"}
                          | 409 {"error": "out of stock"} | 404 | 400
    POST /restock      {"product": id, "units": n} -> 200 {"product", "quantity"}

Run it as `python -m app.demo_service --pg DSN --redis URL --port N`;
`DemoService` starts it as a child process that dies with its parent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

SCHEMA = "loadtop_demo_shop"
PRODUCTS = 20
STOCK = 1_000_000_000
SERVICE_NAME = "loadtop-demo-service"


def build_app(pg_dsn: str, redis_url: str, *, pool_size: int = 40) -> Any:
    """The Starlette app (a factory so tests can mount it in-process)."""
    import asyncpg
    import redis.asyncio as aioredis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    state: dict[str, Any] = {}

    async def connect(deadline: float) -> Any:
        """`loadtop demo` starts the service alongside the servers, to be on
        screen sooner: wait for PostgreSQL to listen and accept."""
        import asyncio

        while True:
            try:
                return await asyncpg.create_pool(
                    pg_dsn,
                    min_size=2,
                    max_size=pool_size,
                    server_settings={"application_name": "demo-shop"},
                )
            except (OSError, asyncpg.CannotConnectNowError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        pool = await connect(time.monotonic() + 30)
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.products ("
                " id int PRIMARY KEY, quantity bigint NOT NULL, reserved bigint NOT NULL DEFAULT 0)"
            )
            await conn.execute(
                f"INSERT INTO {SCHEMA}.products (id, quantity)"
                f" SELECT g, {STOCK} FROM generate_series(1, {PRODUCTS}) g"
                " ON CONFLICT (id) DO NOTHING"
            )
        state["pg"] = pool
        state["redis"] = aioredis.from_url(redis_url, client_name="demo-shop")
        try:
            yield
        finally:
            await state["redis"].aclose()
            await pool.close()

    async def index(_req: Request) -> JSONResponse:
        return JSONResponse(
            {"service": "loadtop-demo-shop", "endpoints": ["/health", "/stock/{id}", "/reserve"]}
        )

    async def health(_req: Request) -> JSONResponse:
        try:
            await state["pg"].fetchval("SELECT 1")
            await state["redis"].ping()
        except Exception as e:
            return JSONResponse({"ok": False, "error": type(e).__name__}, status_code=503)
        return JSONResponse({"ok": True})

    async def stock(req: Request) -> JSONResponse:
        try:
            pid = int(req.path_params["id"])
        except ValueError:
            return JSONResponse({"error": "product id must be a number"}, status_code=400)
        key = f"demo:stock:{pid}"
        cached = await state["redis"].get(key)
        if cached is not None:
            return JSONResponse({**json.loads(cached), "cached": True})
        row = await state["pg"].fetchrow(
            f"SELECT quantity, reserved FROM {SCHEMA}.products WHERE id = $1", pid
        )
        if row is None:
            return JSONResponse({"error": f"no product {pid}"}, status_code=404)
        body = {"product": pid, "quantity": row["quantity"], "reserved": row["reserved"]}
        await state["redis"].set(key, json.dumps(body), px=1000)
        return JSONResponse({**body, "cached": False})

    async def _body(req: Request) -> dict[str, Any] | None:
        try:
            data = await req.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def reserve(req: Request) -> JSONResponse:
        data = await _body(req)
        try:
            pid = int(data["product"])  # type: ignore[index]
            k = int(data.get("k", 1))  # type: ignore[union-attr]
        except (TypeError, KeyError, ValueError):
            return JSONResponse({"error": 'give {"product": id, "k": units}'}, status_code=400)
        if k <= 0:
            return JSONResponse({"error": "k must be positive"}, status_code=400)
        async with state["pg"].acquire() as conn, conn.transaction():
            q = await conn.fetchval(
                f"SELECT quantity FROM {SCHEMA}.products WHERE id = $1 FOR UPDATE", pid
            )
            if q is None:
                return JSONResponse({"error": f"no product {pid}"}, status_code=404)
            if q < k:
                return JSONResponse({"error": "out of stock", "left": q}, status_code=409)
            await conn.execute(
                f"UPDATE {SCHEMA}.products SET quantity = quantity - $2,"
                " reserved = reserved + $2 WHERE id = $1",
                pid,
                k,
            )
        await state["redis"].incrby(f"demo:reserved:{pid}", k)
        return JSONResponse({"product": pid, "left": q - k})

    async def restock(req: Request) -> JSONResponse:
        data = await _body(req)
        try:
            pid = int(data["product"])  # type: ignore[index]
            units = int(data["units"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return JSONResponse({"error": 'give {"product": id, "units": n}'}, status_code=400)
        q = await state["pg"].fetchval(
            f"UPDATE {SCHEMA}.products SET quantity = quantity + $2 WHERE id = $1"
            " RETURNING quantity",
            pid,
            units,
        )
        if q is None:
            return JSONResponse({"error": f"no product {pid}"}, status_code=404)
        return JSONResponse({"product": pid, "quantity": q})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/stock/{id}", stock),
            Route("/reserve", reserve, methods=["POST"]),
            Route("/restock", restock, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class DemoService:
    """The demo service as a child process on 127.0.0.1:`port`; it dies with
    its parent, and `close()` stops it (SIGTERM, then SIGKILL)."""

    def __init__(self, pg_dsn: str, redis_url: str, *, port: int | None = None) -> None:
        from app.embedded import free_port

        self.pg_dsn = pg_dsn
        self.redis_url = redis_url
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None

    def supervise(self, backoff: float = 0.2) -> None:
        """Restart the service when it dies (a pod-kill fault), as a Deployment
        would: a thread that respawns it (PR_SET_PDEATHSIG is per thread, so the
        thread that forks a new one lives as long as the service) until close()."""

        def loop() -> None:
            while not self._closing.wait(backoff):
                p = self.proc
                if p is not None and p.poll() is not None and not self._closing.is_set():
                    self.restarts += 1
                    self.spawn()

        self._supervisor = threading.Thread(target=loop, name="demo-supervisor", daemon=True)
        self._supervisor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> DemoService:
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process. Call it from the thread that outlives the service:
        PR_SET_PDEATHSIG fires when the *thread* that forked it exits."""
        cmd = [sys.executable, "-m", "app.demo_service", "--pg", self.pg_dsn,
               "--redis", self.redis_url, "--port", str(self.port), "--name", SERVICE_NAME]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def wait_ready(self, timeout: float = 30.0) -> DemoService:
        """Until /health answers (any thread may wait)."""
        proc = self.proc
        assert proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # also when close() ran meanwhile
                err = (proc.stderr.read() if proc.stderr else b"").decode()[-600:]
                raise RuntimeError(f"the demo service exited: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=1) as r,
            ):
                if r.status == 200:
                    return self
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"the demo service did not answer on {self.url} within {timeout:.0f} s")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def close(self) -> None:
        self._closing.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(5)
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def __enter__(self) -> DemoService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.demo_service")
    ap.add_argument("--pg", required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default=SERVICE_NAME)  # visible in ps, for the pods pane
    ap.add_argument("--pool-size", type=int, default=40)
    args = ap.parse_args(argv)
    import uvicorn

    app = build_app(args.pg, args.redis, pool_size=args.pool_size)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
