"""Leave nothing: remove every schema and key a run created on its targets.

Everything a run creates lives under its prefix, `loadtop_<run>_`: Postgres
schemas `loadtop_<run>_<scenario>` and Redis keys `loadtop_<run>_<scenario>:…`.
After teardown the session removes the prefix whatever teardown did; a
target that cannot be reached is tried again on a fresh connection, with
backoff, for up to `retry_s`. What is still there is returned as leftovers,
each with the commands that remove it (passwords never printed), so the
report and the last line can tell the user exactly what to run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from app.engine.clients import close_quietly
from app.engine.errors import classify


async def remove_prefixes(
    pattern: str,
    *,
    pg_dsn: str | None,
    redis_url: str | None,
    pg_settings: Mapping[str, str],
    retry_s: float,
    schemas: Sequence[str],
    redactor: Callable[[str], str],
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Remove `pattern`'s schemas from `pg_dsn` and its keys from `redis_url`
    (a target given as None is skipped); returns what is left (target, what,
    error, the commands that remove it). `schemas`: the ones this run created,
    named in a leftover."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_s
    todo: dict[str, Callable[[], Any]] = {}
    if pg_dsn:
        todo["postgres"] = lambda: _drop_schemas(pg_dsn, pattern, pg_settings)
    if redis_url:
        todo["redis"] = lambda: _unlink_keys(redis_url, pattern)
    errors: dict[str, str] = {}
    delay, tries = 0.25, 0
    while todo:
        tries += 1
        for target, attempt in list(todo.items()):
            try:
                remaining = max(deadline - loop.time(), 5.0)
                await asyncio.wait_for(attempt(), remaining)
                todo.pop(target)
                if tries > 1:
                    say(f"cleanup of {target} done on attempt {tries}")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                errors[target] = redactor(f"{classify(e)}: {str(e)[:160]}")
        if not todo or loop.time() + delay > deadline:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    why = f"tried {tries} times over {retry_s:g} s"
    left = [
        leftover(t, pattern, f"{errors.get(t, '?')}; {why}", schemas=schemas,
                 pg_dsn=redactor(pg_dsn or ""), redis_url=redis_url or "")
        for t in todo
    ]  # fmt: skip
    for x in left:
        say(f"cleanup of {x['target']} failed: left {x['what']}"
            f" ({x['error']}); remove with: {' && '.join(x['commands'])}")  # fmt: skip
    return left


async def _drop_schemas(dsn: str, pattern: str, settings: Mapping[str, str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        dsn, timeout=5, server_settings={"application_name": "loadtop:cleanup", **settings}
    )
    try:
        names = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            pattern.replace("_", r"\_") + "%",
        )
        for row in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row[0]}" CASCADE')
    finally:
        await close_quietly(conn)


async def _unlink_keys(url: str, pattern: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=10, client_name="loadtop:cleanup"
    )
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"{pattern}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 5)


def leftover(
    target: str,
    pattern: str,
    error: str,
    *,
    schemas: Sequence[str] = (),
    pg_dsn: str = "",
    redis_url: str = "",
) -> dict[str, Any]:
    """What a failed cleanup left on `target`, and the commands that remove it.
    `pg_dsn` must come redacted; a Redis password goes through REDISCLI_AUTH."""
    if target == "postgres":
        names = list(schemas) or [f"{pattern}..."]
        return {
            "target": "postgres",
            "what": ", ".join(f"schema {n}" for n in names),
            "schemas": names,
            "error": error,
            "commands": [
                f"psql '{pg_dsn}' -c 'DROP SCHEMA IF EXISTS \"{n}\" CASCADE;'" for n in names
            ],
        }
    cli = redis_cli_args(redis_url)
    auth = "export REDISCLI_AUTH='<password>'; " if urlsplit(redis_url).password else ""
    return {
        "target": "redis",
        "what": f"keys matching {pattern}*",
        "pattern": f"{pattern}*",
        "error": error,
        "commands": [
            f"{auth}redis-cli {cli} --scan --pattern '{pattern}*' | xargs -r redis-cli {cli} del"
        ],
    }


def redis_cli_args(url: str) -> str:
    """redis-cli's options for `url`, without its password (redis-cli reads
    REDISCLI_AUTH for that)."""
    p = urlsplit(url)
    if p.scheme == "unix":
        args = f"-s {p.path}"
    else:
        args = f"-h {p.hostname or '127.0.0.1'} -p {p.port or 6379}"
        if p.scheme == "rediss":
            args += " --tls"
    db = (p.path or "/").strip("/")
    if p.scheme != "unix" and db.isdigit() and db != "0":
        args += f" -n {db}"
    if p.username and p.username not in ("", "default"):
        args += f" --user {p.username}"
    return args
