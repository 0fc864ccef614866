"""Shared fixtures: real PostgreSQL and real Redis.

By default the session starts an embedded PostgreSQL 18 and an embedded Valkey
(the same code `loadtop run` uses). With LOADTOP_TEST_PG_DSN /
LOADTOP_TEST_REDIS_URL set, the same tests run against those servers instead.
Tests that must stop and start a server (fault tests) use `own_pg` / `own_redis`,
which are always embedded, because nobody else's server may be restarted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from app.embedded import EmbeddedPostgres, EmbeddedRedis


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    dsn = os.environ.get("LOADTOP_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    with EmbeddedPostgres() as pg:
        yield pg.dsn


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("LOADTOP_TEST_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as r:
        yield r.url


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A private embedded PostgreSQL the test may stop, restart or reconfigure."""
    with EmbeddedPostgres() as pg:
        yield pg


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A private embedded Valkey the test may stop and restart."""
    with EmbeddedRedis() as r:
        yield r


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


INTEGRATION_FIXTURES = {"pg_dsn", "redis_url", "own_pg", "own_redis"}
ENV_FIXTURES = {"pg_dsn", "redis_url"}  # switched by LOADTOP_TEST_PG_DSN / _REDIS_URL


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that talk to a real server are `integration`. Those whose server
    the environment can switch (they use `pg_dsn` / `redis_url`, directly or
    through another fixture) are also `env_servers`: CI runs them a second time
    against the machine's PostgreSQL and Redis; a test on its own embedded
    server, or on none, would only repeat itself."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if INTEGRATION_FIXTURES & names:
            item.add_marker(pytest.mark.integration)
        if ENV_FIXTURES & names:
            item.add_marker(pytest.mark.env_servers)
