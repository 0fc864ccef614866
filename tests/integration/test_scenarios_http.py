"""The HTTP scenarios against local HTTP servers started in the test (aiohttp
on 127.0.0.1, and the demo service's Starlette app on uvicorn), driven through
the real session and engine: statuses and transport errors are counted by
class, body checks fail as "body check", and http-reserve's no-oversell
invariant holds against the demo service and catches a service that oversells."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web

from app.embedded import free_port
from app.engine.engine import EngineConfig
from app.scenario import Scenario, ScenarioError
from app.session.runner import Outcome, RunConfig, Session
from scenarios.http import HttpRequest, HttpReserve, json_path, parse_expect, parse_headers
from tests.helpers import totals

pytestmark = pytest.mark.integration


# ---- a local endpoint ------------------------------------------------------------------


SEEN = web.AppKey("seen", dict)


def make_app() -> web.Application:
    seen: dict[str, Any] = {"headers": 0}

    async def ok(_req: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "items": [{"id": 1, "name": "widget"}]})

    async def echo(req: web.Request) -> web.Response:
        if req.headers.get("X-Loadtop") == "yes":
            seen["headers"] += 1
        body = await req.json()
        return web.json_response(
            {"received": {"body": body, "ctype": req.content_type}}, status=201
        )

    async def status(req: web.Request) -> web.Response:
        code = int(req.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def slow(req: web.Request) -> web.Response:
        await asyncio.sleep(int(req.query.get("ms", "20")) / 1000)
        return web.Response(text="done")

    app = web.Application()
    app[SEEN] = seen
    app.router.add_get("/", ok)
    app.router.add_get("/ok", ok)
    app.router.add_post("/echo", echo)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/slow", slow)
    return app


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, web.Application]]:
    app = make_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


async def run(
    cls: type[Scenario],
    http_url: str,
    params: dict[str, str] | None = None,
    *,
    pg_dsn: str | None = None,
    concurrency: int = 8,
    duration: float = 1.5,
) -> tuple[Session, Outcome, Any]:
    cfg = RunConfig(
        scenarios=[(cls, 1.0)],
        http_url=http_url,
        pg_dsn=pg_dsn,
        params=dict(params or {}),
        engine=EngineConfig(concurrency=concurrency, duration=duration),
        probes=False,
        run_id=uuid.uuid4().hex[:8],
    )
    session = Session(cfg)
    outcome = await session.run()
    assert session.ticks
    return session, outcome, session.instances[0][0]


# ---- parsing ----------------------------------------------------------------------------


def test_parsers() -> None:
    assert parse_expect("http", "200, 201") == (frozenset({200, 201}), frozenset())
    assert parse_expect("http", "2xx,404") == (frozenset({404}), frozenset({2}))
    with pytest.raises(ScenarioError, match="expect"):
        parse_expect("http", "ok")
    assert parse_headers("http", "A: 1|B: x:y") == {"A": "1", "B": "x:y"}
    assert parse_headers("http", '{"A": 1}') == {"A": "1"}
    with pytest.raises(ScenarioError, match="Name: value"):
        parse_headers("http", "nocolon")
    assert json_path({"a": [{"b": 2}]}, "a.0.b") == (True, 2)
    assert json_path({"a": []}, "a.0") == (False, None)


def test_only_safe_methods_run_readonly() -> None:
    assert HttpRequest({}).writes is False
    assert HttpRequest({"method": "head"}).writes is False
    assert HttpRequest({"method": "post"}).writes is True
    cfg = RunConfig(scenarios=[(HttpRequest, 1.0)], http_url="http://127.0.0.1:9/",
                    params={"method": "DELETE"}, readonly=True)  # fmt: skip
    with pytest.raises(ScenarioError, match="--readonly"):
        Session(cfg)._check_needs()


# ---- http -------------------------------------------------------------------------------


async def test_get_ok(server: tuple[str, web.Application]) -> None:
    url, _ = server
    session, outcome, _ = await run(
        HttpRequest, url, {"path": "/ok", "json_key": "items.0.name", "json_value": "widget"}
    )
    assert outcome.exit_code == 0 and outcome.invariants == {}
    ok, failed, errors = totals(session)
    assert ok > 100 and failed == 0, errors


async def test_post_json_with_headers(server: tuple[str, web.Application]) -> None:
    url, app = server
    session, _outcome, _ = await run(
        HttpRequest, url,
        {"method": "post", "path": "/echo", "headers": "X-Loadtop: yes", "body": '{"x": 7}',
         "expect": "200,201", "json_key": "received.body.x", "json_value": "7",
         "contains": "application/json"},
    )  # fmt: skip
    ok, failed, errors = totals(session)
    assert ok > 100 and failed == 0, errors
    assert app[SEEN]["headers"] >= ok


@pytest.mark.parametrize(
    ("path", "expect", "error_class"),
    [("/status/500", "2xx", "http 5xx"), ("/status/503", "200", "http 5xx"),
     ("/status/429", "2xx", "http 429"), ("/status/404", "200", "http 4xx"),
     ("/ok", "201", "http 2xx")],
)  # fmt: skip
async def test_unexpected_status_counted_by_class(
    server: tuple[str, web.Application], path: str, expect: str, error_class: str
) -> None:
    url, _ = server
    session, _, _ = await run(HttpRequest, url, {"path": path, "expect": expect}, duration=1.0)
    ok, failed, errors = totals(session)
    assert ok == 0 and failed > 10 and set(errors) == {error_class}, errors


async def test_expected_error_status_is_success(server: tuple[str, web.Application]) -> None:
    url, _ = server
    session, _, _ = await run(
        HttpRequest, url, {"path": "/status/404", "expect": "404"}, duration=1.0
    )
    ok, failed, _ = totals(session)
    assert ok > 10 and failed == 0


@pytest.mark.parametrize(
    "params", [{"contains": "nothing-like-this"}, {"json_key": "items.5"},
               {"json_key": "status", "json_value": "down"}],
)  # fmt: skip
async def test_body_check(server: tuple[str, web.Application], params: dict[str, str]) -> None:
    url, _ = server
    session, _, _ = await run(HttpRequest, url, {"path": "/ok", **params}, duration=1.0)
    ok, _failed, errors = totals(session)
    assert ok == 0 and set(errors) == {"body check"}, errors


async def test_timeout_and_refused_are_transport_errors(
    server: tuple[str, web.Application],
) -> None:
    url, _ = server
    session, _, _ = await run(
        HttpRequest, url, {"path": "/slow?ms=400", "timeout_s": "0.05"}, duration=1.0
    )
    assert set(totals(session)[2]) == {"timeout"}
    closed = f"http://127.0.0.1:{free_port()}/"
    session, _, _ = await run(HttpRequest, url, {"path": closed}, duration=1.0, concurrency=2)
    ok, _failed, errors = totals(session)
    assert ok == 0 and set(errors) == {"connection refused"}, errors


async def test_http2_path_through_httpx(server: tuple[str, web.Application]) -> None:
    url, _ = server  # an HTTP/1.1 server: httpx negotiates down, the path still works
    session, _outcome, inst = await run(
        HttpRequest, url, {"path": "/ok", "http2": "1", "json_key": "status"}, duration=1.0
    )
    ok, failed, errors = totals(session)
    assert ok > 20 and failed == 0, errors
    assert inst.httpx is None  # closed in teardown


async def test_latency_follows_the_endpoint(server: tuple[str, web.Application]) -> None:
    url, _ = server
    session, _, _ = await run(HttpRequest, url, {"path": "/slow?ms=20"}, concurrency=16)
    ok, _, _ = totals(session)
    full = [w for t in session.ticks[:-1] for w in t.scenarios]
    p50 = sorted(w.hist.get_value_at_percentile(50) for w in full)[len(full) // 2]
    assert 20_000 <= p50 < 60_000  # µs: the endpoint's 20 ms plus a little
    assert ok > 0.5 * 16 / 0.020 * 1.5 * 0.5  # at least half of Little's law ideal


# ---- http-reserve -----------------------------------------------------------------------


def with_db(dsn: str, db: str) -> str:
    u = urlsplit(dsn)
    return urlunsplit((u.scheme, u.netloc, f"/{db}", u.query, u.fragment))


@pytest.fixture
async def shop_db(pg_dsn: str) -> AsyncIterator[str]:
    """A database of its own, so setting stock never touches anyone else's demo shop."""
    name = f"loadtop_http_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_db(pg_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                       access_log=False)
    )  # fmt: skip
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def overselling_app(dsn: str) -> Any:
    """The demo API with the classic bug: read the stock, then write it back
    without the row lock (a lost update), so two buyers get the last units."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from app.demo_service import SCHEMA

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state["pg"] = await asyncpg.create_pool(dsn, min_size=2, max_size=20)
        yield
        await state["pg"].close()

    async def index(_req: Request) -> JSONResponse:
        return JSONResponse({"service": "overselling shop"})

    async def reserve(req: Request) -> JSONResponse:
        data = json.loads(await req.body())
        pid, k = int(data["product"]), int(data["k"])
        q = await state["pg"].fetchval(f"SELECT quantity FROM {SCHEMA}.products WHERE id = $1", pid)
        if q < k:
            return JSONResponse({"error": "out of stock"}, status_code=409)
        await asyncio.sleep(0.002)
        await state["pg"].execute(
            f"UPDATE {SCHEMA}.products SET quantity = $2, reserved = reserved + $3 WHERE id = $1",
            pid, q - k, k,
        )  # fmt: skip
        return JSONResponse({"product": pid, "left": q - k})

    return Starlette(
        routes=[Route("/", index), Route("/reserve", reserve, methods=["POST"])],
        lifespan=lifespan,
    )


async def test_http_reserve_against_the_demo_service(shop_db: str, redis_url: str) -> None:
    from app.demo_service import build_app

    async with serve(build_app(shop_db, redis_url, pool_size=10)) as url:
        session, outcome, inst = await run(
            HttpReserve, url, {"products": "1,2", "stock": "150", "max_k": "3"},
            pg_dsn=shop_db, duration=2.0,
        )  # fmt: skip
    assert outcome.invariants == {} and outcome.exit_code == 0
    _ok, failed, errors = totals(session)
    assert failed == 0, errors
    s = inst.stats()
    assert s["sold_out"] > 0, s  # the service sold out and refused (409), correctly
    assert 300 - 2 * 2 <= s["units"] <= 300, s  # everything sold, at most a remainder < k
    conn = await asyncpg.connect(shop_db)
    try:
        rows = await conn.fetch(
            "SELECT quantity, reserved FROM loadtop_demo_shop.products WHERE id IN (1, 2)"
        )
    finally:
        await conn.close()
    assert sum(r["reserved"] for r in rows) == s["units"]
    assert all(r["quantity"] >= 0 for r in rows)


async def test_http_reserve_says_where_the_table_is_missing(
    shop_db: str, server: tuple[str, web.Application]
) -> None:
    url, _ = server
    with pytest.raises(ScenarioError, match=r"loadtop_demo_shop.*is not in --pg"):
        await run(HttpReserve, url, pg_dsn=shop_db)


async def test_http_reserve_catches_an_overselling_service(shop_db: str, redis_url: str) -> None:
    from app.demo_service import build_app

    # the real service creates the schema and the products; then the buggy one serves
    async with serve(build_app(shop_db, redis_url, pool_size=4)):
        pass
    async with serve(overselling_app(shop_db)) as url:
        _, outcome, _ = await run(
            HttpReserve, url, {"products": "1", "stock": "100000"}, pg_dsn=shop_db, duration=2.0
        )
    found = [v for vs in outcome.invariants.values() for v in vs]
    assert outcome.exit_code == 1
    assert any("oversold by" in v for v in found), found
