"""A procrastinate app for the Postgres-queue tests: its tasks, and a worker
process (`python -m tests.pgq_procrastinate_app DSN SCHEMA QUEUE`) that the
test starts and then kills, the way an SRE's worker pod dies."""

from __future__ import annotations

import asyncio
import sys

import procrastinate

WORK_S = 0.15  # each `work` job takes this long


def make_app(dsn: str, schema: str, queue: str) -> procrastinate.App:
    """procrastinate installed in its own schema (search_path), as users do."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=dsn, kwargs={"options": f"-c search_path={schema}"}
        )
    )

    @app.task(name="work", queue=queue)
    async def work(n: int) -> None:
        await asyncio.sleep(WORK_S)

    @app.task(name="boom", queue=queue)
    async def boom(n: int) -> None:
        raise RuntimeError(f"job {n} fails on purpose")

    return app


async def _worker(dsn: str, schema: str, queue: str) -> None:
    app = make_app(dsn, schema, queue)
    async with app.open_async():
        await app.run_worker_async(queues=[queue], concurrency=2, wait=True)


if __name__ == "__main__":
    asyncio.run(_worker(*sys.argv[1:4]))
