"""`loadtop demo`: embedded PostgreSQL and Valkey, the demo HTTP service, and
a session over a default scenario mix, in the console (or headless), so a
newcomer sees every pane alive within seconds. Quitting (or SIGTERM / SIGHUP)
stops the load, runs teardown, stops the service and the embedded servers, and
leaves no process behind.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from app.session.config import build_run_config

if TYPE_CHECKING:
    from app.scenario import Scenario
    from app.session.runner import RunConfig

DEMO_SCENARIOS = ("stock-reservation", "redis-lock", "redis-queue")
HTTP_SCENARIOS = ("http-reserve", "http")  # the first one present is used
DEMO_PLAN = [4, 8, 16, 32]
DEMO_STEP_SECONDS = 15.0
# what the console's fault menu pre-fills: the demo service's own connections and table
DEMO_FAULT_HINTS = {"pg_app": "demo-shop", "redis_name": "demo-shop",
                    "pg_table": "loadtop_demo_shop.products", "pg_row": "1"}  # fmt: skip


class Demo:
    name = "demo"
    help = "embedded Postgres + Redis + demo service, in the console"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--headless", action="store_true")
        parser.add_argument("--duration", "-d", metavar="T")
        parser.add_argument("--record", metavar="F.jsonl")
        parser.add_argument("--export", metavar="F.md")
        parser.add_argument("--allow-faults", action="store_true", default=None,
                            help="the f menu and --fault may hit the demo's servers and service")  # fmt: skip
        parser.add_argument("--fault", action="append", metavar="SPEC",
                            help="e.g. 'at=40s,kind=pod-kill' (repeatable; needs --allow-faults)")  # fmt: skip
        from app.commands.share import add_team_flags

        add_team_flags(parser)

    def run(self, args: argparse.Namespace) -> int:
        return run_demo(args)


def demo_mix() -> list[tuple[type[Scenario], float]]:
    """stock-reservation plus the Redis and HTTP scenarios this build has."""
    from app.scenario import builtin_scenarios

    found = builtin_scenarios()
    names = [n for n in DEMO_SCENARIOS if n in found]
    http = next((n for n in HTTP_SCENARIOS if n in found), None)
    if http is not None:
        names.append(http)
    return [(found[n], 1.0) for n in names]


def demo_config(
    pg_dsn: str | None,
    redis_url: str | None,
    http_url: str | None,
    *,
    headless: bool = False,
    duration: float | str | None = None,
    record: str | None = None,
    export: str | None = None,
    local_pids: dict[str, Any] | None = None,
    allow_faults: bool | None = None,
    faults: list[str] | None = None,
    metrics: str | None = None,
    web: str | None = None,
    web_token: str | None = None,
) -> RunConfig:
    """The demo's RunConfig, validated by `build_run_config` like any run's:
    the demo's plan and parameters are its profile; no loadtop.toml and no
    LOADTOP_* variable applies."""
    mix = demo_mix()
    needs = {n for cls, _ in mix for n in cls.needs}
    options = SimpleNamespace(
        pg=pg_dsn,
        redis=redis_url,
        http=http_url if "http" in needs else None,
        headless=headless,
        duration=None if duration is None else str(duration),
        record=record,
        export=export,
        allow_faults=True if allow_faults is None else allow_faults,  # all its own servers
        fault=faults,
        metrics=metrics,
        web=web,
        web_token=web_token,
    )
    profile = {
        "scenario": [cls.name for cls, _ in mix],
        "steps": list(DEMO_PLAN),
        "step_seconds": str(DEMO_STEP_SECONDS),
        "max_concurrency": 256,
        "params": {"products": "5"},
        "probe_intervals": {"pods": 2.0},
        "redis_queue_patterns": ["loadtop_*:queue:*"],
    }
    cfg = build_run_config(options, profile=profile, env={})
    cfg.local_pids = local_pids
    cfg.embedded = ["postgres", "redis"]
    return cfg


def _say(msg: str) -> None:
    print(f"loadtop: {msg}", file=sys.stderr, flush=True)


def _pg_pid(pg: Any) -> str | None:
    with contextlib.suppress(OSError, ValueError, IndexError, AssertionError):
        return (pg.pgdata / "postmaster.pid").read_text().split()[0]
    return None


def _redis_pid(r: Any) -> str | None:
    proc = getattr(getattr(r, "server", None), "_process", None)
    pid = getattr(proc, "pid", None)
    return str(pid) if pid else None


def demo_processes(pg: Any, redis: Any) -> dict[str, Any]:
    """The pods pane's "pods" for the demo: label -> pid (or a name to find)."""
    from app.demo_service import SERVICE_NAME

    out: dict[str, Any] = {}
    if (pid := _pg_pid(pg)) is not None:
        out["postgres"] = int(pid)
    if (pid := _redis_pid(redis)) is not None:
        out["valkey"] = int(pid)
    out["demo-service"] = SERVICE_NAME
    return out


def _warm_imports() -> None:
    """Import what the session imports on its first connect, while the servers start."""
    import aiohttp  # noqa: F401
    import asyncpg  # noqa: F401
    import redis.asyncio  # noqa: F401

    import app.detect
    import app.probes.postgres
    import app.probes.redis  # noqa: F401


def run_demo(args: Any) -> int:
    """`loadtop demo [--headless] [--duration T] [--record F] [--export F]`."""
    from app.demo_service import DemoService
    from app.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis
    from app.session.runner import Session

    headless = bool(getattr(args, "headless", False))
    # bad input fails here, before any server starts; the targets come below
    cfg = demo_config(
        None,
        None,
        None,
        headless=headless,
        duration=getattr(args, "duration", None),
        record=getattr(args, "record", None),
        export=getattr(args, "export", None),
        allow_faults=getattr(args, "allow_faults", None),
        faults=getattr(args, "fault", None),
        metrics=getattr(args, "metrics", None),
        web=getattr(args, "web", None),
        web_token=getattr(args, "web_token", None),
    )
    from app.commands.base import mark_run_started
    from app.commands.share import team_outputs

    mark_run_started()
    with contextlib.ExitStack() as stack:
        attach = stack.enter_context(team_outputs(cfg, _say))
        _say("starting embedded PostgreSQL, Valkey and the demo service…")
        # side by side, to be on screen within seconds: the servers (their ports
        # are chosen up front), the service (it waits for them), and the load
        # clients' imports (~0.8 s of the start otherwise)
        try:
            pg, redis = EmbeddedPostgres(), EmbeddedRedis()
        except EmbeddedError as e:
            _say(str(e))
            return 2
        service = DemoService(pg.dsn, redis.url)
        service.spawn()  # from this thread, which outlives it (see spawn())
        with ThreadPoolExecutor(4) as pool:
            pg_f = pool.submit(pg.__enter__)
            redis_f = pool.submit(redis.__enter__)
            service_f = pool.submit(service.wait_ready)
            pool.submit(_warm_imports)
            for f in (pg_f, redis_f):
                if f.exception() is not None:
                    service.close()  # it would wait for a server that is not coming
        for f, server in ((pg_f, pg), (redis_f, redis)):
            if f.exception() is None:
                stack.callback(server.close)
        stack.callback(service.close)
        for f in (pg_f, redis_f):
            if isinstance(f.exception(), EmbeddedError):
                _say(str(f.exception()))
                return 2
        if isinstance(service_f.exception(), RuntimeError):
            _say(str(service_f.exception()))
            return 2
        for done in (pg_f, redis_f, service_f):
            exc = done.exception()
            if exc is not None:
                raise exc
        _say(f"demo service on {service.url} (POST /reserve, GET /stock/{{id}})")
        cfg.pg_dsn, cfg.redis_url = pg.dsn, redis.url
        if "http" in {n for cls, _ in cfg.scenarios for n in cls.needs}:
            cfg.http_url = service.url
        cfg.local_pids = demo_processes(pg, redis)
        service.supervise()  # a killed service comes back, as under a Deployment
        cfg.fault_processes = {"demo-service": lambda: service.pid}
        cfg.fault_hints = DEMO_FAULT_HINTS
        if headless:
            from app.frontends.headless import headless_printer, run_headless

            session = Session(cfg, printer=headless_printer(cfg))
            attach(session)
            return run_headless(session)
        from app.commands.run import run_console

        session = Session(cfg)
        attach(session)
        return run_console(session, cleanup=stack.close)
    return 0
