"""The load's clients: open, close, and say in one line why a target refused.

The session and every worker process (--processes) open their clients here,
so a worker process never imports the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from app.engine.errors import classify
from app.targets import TargetError


@dataclass
class Clients:
    """Shared clients for the run; the session creates and closes them."""

    pg_dsn: str | None = None
    pg: Any = None  # asyncpg.Pool
    redis: Any = None  # redis.asyncio.Redis
    http: Any = None  # aiohttp.ClientSession
    http_url: str | None = None
    admin_conn_factory: Callable[[], Any] | None = None
    pg_settings: dict[str, str] = field(default_factory=dict)  # e.g. read-only sessions
    redis_url: str | None = None


async def _noop_reset(conn: Any) -> None:
    """Pool reset on release: no round trip unless a transaction was left
    open (asyncpg's default reset costs a round trip per borrow)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def describe_pg_error(e: BaseException, dsn: str) -> str:
    """Why the load could not connect to PostgreSQL at `dsn`, and what to fix."""
    p = urlsplit(dsn)
    where = f"{p.hostname or 'localhost'}:{p.port or 5432}"
    user = p.username or "postgres"
    db = (p.path or "/").lstrip("/") or user
    name = type(e).__name__
    code = getattr(e, "sqlstate", None)
    if code == "28P01" or name == "InvalidPasswordError":
        return f"PostgreSQL at {where} rejected the password for user {user!r}: fix the DSN"
    if code == "28000" or name == "InvalidAuthorizationSpecificationError":
        return f"PostgreSQL at {where} does not allow user {user!r} to connect: check pg_hba.conf / the role"
    if code == "3D000" or name == "InvalidCatalogNameError":
        return f"database {db!r} does not exist on PostgreSQL at {where}: create it or fix the DSN"
    if code == "53300":
        return f"PostgreSQL at {where} has no free connection slot (too many connections)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve PostgreSQL host {p.hostname!r}: fix the host in --pg"
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return f"PostgreSQL at {where} did not answer within 10 s: check host, port and firewall"
    if isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower():
        return f"cannot connect to PostgreSQL at {where} (connection refused): is it running on that port?"
    if isinstance(e, OSError | ConnectionError):
        return (
            f"cannot connect to PostgreSQL at {where} ({e.__class__.__name__}):"
            " is a PostgreSQL server listening on that port? check --pg"
        )
    return f"PostgreSQL at {where}: {classify(e)}: {str(e)[:200]}"


def describe_redis_error(e: BaseException, url: str) -> str:
    """Why the load could not connect to Redis at `url`, and what to fix."""
    p = urlsplit(url)
    where = f"{p.hostname or 'localhost'}:{p.port or 6379}"
    text = str(e)
    low = text.lower()
    if "auth" in low or "password" in low or "NOAUTH" in text or "WRONGPASS" in text:
        return f"Redis at {where} rejected the credentials: fix the password in --redis"
    if "refused" in low or "connect call failed" in low:
        return (
            f"cannot connect to Redis at {where} (connection refused): is it running on that port?"
        )
    if "timeout" in low or isinstance(e, asyncio.TimeoutError | TimeoutError):
        return f"Redis at {where} did not answer in time: check host, port and firewall"
    if "protocol" in low or "invalid" in low or "reset" in low or "closed" in low:
        return f"the server at {where} does not speak the Redis protocol: check --redis"
    return f"Redis at {where}: {classify(e)}: {text[:200]}"


async def connect_clients(
    clients: Clients, needs: set[str], redact: Callable[[str], str], size: int
) -> None:
    """Open the load's clients for the targets the scenarios need (the
    targets are `clients.pg_dsn`, `.redis_url`, `.http_url`), each sized to
    `size` workers; a target that does not answer is a TargetError that says
    what to check. The session and every worker process open theirs here."""
    if clients.pg_dsn and "postgres" in needs:
        import asyncpg

        try:
            clients.pg = await asyncpg.create_pool(
                clients.pg_dsn, min_size=1, max_size=max(2, size),
                max_inactive_connection_lifetime=10, reset=_noop_reset, timeout=10,
                server_settings={"application_name": "loadtop:pool", **clients.pg_settings},
            )  # fmt: skip
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:  # fmt: skip
            raise TargetError(redact(describe_pg_error(e, clients.pg_dsn))) from None
    if clients.redis_url and "redis" in needs:
        import redis.asyncio as aioredis

        pool = aioredis.BlockingConnectionPool.from_url(
            clients.redis_url, max_connections=size + 8, timeout=10,
            socket_connect_timeout=5, socket_timeout=30, client_name="loadtop:load",
        )  # fmt: skip
        client = aioredis.Redis(connection_pool=pool)
        try:
            await asyncio.wait_for(client.ping(), 10)
        except Exception as e:
            await client.aclose()
            raise TargetError(redact(describe_redis_error(e, clients.redis_url))) from None
        clients.redis = client
    if clients.http_url and "http" in needs:
        import aiohttp

        url = clients.http_url
        connector = aiohttp.TCPConnector(
            limit=size, limit_per_host=size,
            ttl_dns_cache=300,
        )  # fmt: skip
        session = aiohttp.ClientSession(
            base_url=url if urlsplit(url).path in ("", "/") else None,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=30, connect=5),
        )
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                await r.read()
        except Exception as e:
            await session.close()
            raise TargetError(
                redact(
                    f"cannot reach the HTTP target {url}: {classify(e)}"
                    " — is the service up and the URL right?"
                )  # fmt: skip
            ) from None
        clients.http = session


async def close_quietly(conn: Any, timeout: float = 2.0) -> None:
    """Close an asyncpg connection or pool, or terminate it when the close does not
    finish in `timeout` or fails (a dead server, a cancelled task)."""
    try:
        await asyncio.wait_for(conn.close(), timeout)
    except BaseException:
        conn.terminate()


async def close_clients(c: Clients) -> None:
    """Close what connect_clients opened, each close bounded."""
    if c.pg is not None:
        await close_quietly(c.pg, 5)
        c.pg = None
    if c.redis is not None:
        # bounded: redis-py's disconnect awaits wait_closed(), which can hang
        # on a half-closed socket (redis/redis-py#3941)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.redis.aclose(), 5)
        # a client built on an explicit pool leaves the pool's sockets open
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.redis.connection_pool.disconnect(), 5)
        c.redis = None
    if c.http is not None:
        with contextlib.suppress(Exception):
            await c.http.close()
        c.http = None
