"""Helpers for the issue-12 tests: a watch driven tick by tick (the probes polled
and the DetectorSet evaluated at a fixed cadence, ticks built as the engine
builds them), pgbench runs with custom scripts, and ground truth read from the
server by the test. (No tests here.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.detect import build_detectors
from app.probes.base import Probe, ProbeSet
from app.tick import Anomaly, Tick

PGBENCH = shutil.which("pgbench") or (
    "/usr/bin/pgbench" if os.path.exists("/usr/bin/pgbench") else None
)

TIMINGS: dict[str, Any] = {}  # case -> figures, printed at the end of a test run


def with_user(dsn: str, user: str) -> str:
    u = urlsplit(dsn)
    netloc = f"{user}@{u.hostname or '127.0.0.1'}:{u.port or 5432}"
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


class Watch:
    """Probes polled once per tick, detectors evaluated on the tick, as in a
    `loadtop watch` with no load: ticks[i].anomalies is what the console shows."""

    def __init__(
        self, probes: Iterable[Probe], *, interval: float = 1.0, detect: Mapping | None = None
    ) -> None:
        self.ps = ProbeSet(probes)
        self.det = build_detectors(dict(detect or {}))
        self.interval = interval
        self.ticks: list[Tick] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.time()

    @property
    def next(self) -> int:
        """The index of the next tick: an event that happens now is first seen there."""
        return len(self.ticks)

    async def tick(self) -> Tick:
        readings = await self.ps.poll_once()
        i = len(self.ticks)
        t = time.time()
        base = Tick(
            index=i, t=t, elapsed=t - self._t0, interval=self.interval, mode="workers",
            target_concurrency=0, concurrency=0, readings=dict(readings),
        )  # fmt: skip
        active, cleared = self.det.evaluate(base)
        tk = dataclasses.replace(base, anomalies=active, cleared=cleared)
        self.ticks.append(tk)
        return tk

    async def run(self, n: int) -> None:
        """n more ticks at the cadence (the caller waits for them)."""
        for _ in range(n):
            t0 = time.monotonic()
            await self.tick()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - t0)))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while True:
            await self.tick()
            nxt += self.interval
            await asyncio.sleep(max(0.0, nxt - loop.time()))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def wait_ticks(self, n: int, timeout: float = 60) -> None:
        """Until `n` ticks exist."""
        end = time.monotonic() + timeout
        while len(self.ticks) < n:
            assert time.monotonic() < end, f"only {len(self.ticks)} ticks"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for p in self.ps.probes:
            with contextlib.suppress(Exception):
                await p.close()

    # ---- reading the ticks --------------------------------------------------------
    def first(self, kind: str, since: int = 0) -> tuple[int | None, Anomaly | None]:
        for tk in self.ticks[since:]:
            for a in tk.anomalies:
                if a.kind == kind:
                    return tk.index, a
        return None, None

    def latest(self, kind: str) -> Anomaly | None:
        for tk in reversed(self.ticks):
            for a in tk.anomalies:
                if a.kind == kind:
                    return a
        return None

    def kinds(self, start: int = 0, end: int | None = None) -> set[str]:
        return {a.kind for tk in self.ticks[start:end] for a in tk.anomalies}

    def report(self) -> str:
        """The session report (Markdown) of this watch's ticks."""
        from app.session.recording import Recording
        from app.session.report import render_markdown

        header = {"type": "header", "version": 1, "run_id": "w12", "started": self._t0,
                  "targets": {}, "scenarios": [], "load": {"mode": "workers"}}  # fmt: skip
        rec = Recording(
            header=header, ticks=list(self.ticks), end={"type": "end", "reason": "test"}
        )
        return render_markdown(rec)

    def cleared(self, kind: str) -> int | None:
        for tk in self.ticks:
            for a in tk.cleared:
                if a.kind == kind:
                    return tk.index
        return None

    def readings(self, start: int = 0, end: int | None = None) -> list[Mapping[str, Any]]:
        out = []
        for tk in self.ticks[start:end]:
            r = tk.readings.get("postgres")
            if r is not None and r.ok:
                out.append(r.data)
        return out


def record(case: str, **figures: Any) -> None:
    TIMINGS[case] = figures
    print(f"\n[issue-12] {case}: {figures}")


# ---- pgbench -------------------------------------------------------------------------


def need_pgbench() -> str:
    if PGBENCH is None:
        pytest.skip("pgbench is not installed (the PostgreSQL client package ships it)")
    return PGBENCH


async def pgbench(
    dsn: str,
    script: str,
    tmp: Path,
    *,
    clients: int,
    seconds: int,
    app: str,
    extra: Iterable[str] = (),
) -> dict[str, Any]:
    """Run pgbench with a custom script; returns its figures (transactions,
    failures, retries) and the raw output."""
    exe = need_pgbench()
    f = tmp / f"{app}.sql"
    f.write_text(script)
    u = urlsplit(dsn)
    env = {
        **os.environ,
        "PGAPPNAME": app,
        "PGHOST": u.hostname or "127.0.0.1",
        "PGPORT": str(u.port or 5432),
        "PGUSER": u.username or "postgres",
        "PGDATABASE": (u.path or "/").lstrip("/") or "postgres",
    }
    if u.password:
        env["PGPASSWORD"] = u.password
    args = [exe, "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(f), *extra]
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except TimeoutError:
        proc.kill()
        raise
    text = out.decode(errors="replace")

    def num(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    return {
        "rc": proc.returncode,
        "processed": num(r"number of transactions actually processed: (\d+)"),
        "failed": num(r"number of failed transactions: (\d+)"),
        "retried": num(r"number of transactions retried: (\d+)"),
        "retries": num(r"total number of retries: (\d+)"),
        "deadlock_failures": num(r"number of deadlock failures: (\d+)"),
        "serialization_failures": num(r"number of serialization failures: (\d+)"),
        "output": text,
    }


# ---- ground truth ----------------------------------------------------------------------


async def db_counters(admin: asyncpg.Connection) -> dict[str, int]:
    """pg_stat_database of the test's own database, read by the test."""
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    row = await admin.fetchrow(
        "SELECT xact_commit::int8 c, xact_rollback::int8 r, deadlocks::int8 d, "
        "conflicts::int8 x FROM pg_stat_database WHERE datname = current_database()"
    )
    return {
        "commits": row["c"],
        "rollbacks": row["r"],
        "deadlocks": row["d"],
        "conflicts": row["x"],
    }


async def lock_waits(admin: asyncpg.Connection, app: str) -> dict[int, list[int]]:
    """pid -> pg_blocking_pids for the sessions of `app` waiting on a lock."""
    rows = await admin.fetch(
        "SELECT pid, pg_blocking_pids(pid) b FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND application_name LIKE $1",
        app,
    )
    return {r["pid"]: sorted(r["b"]) for r in rows}


async def active_share(admin: asyncpg.Connection, app: str) -> tuple[int, int]:
    """(waiting on a lock, active) among the sessions of `app`."""
    row = await admin.fetchrow(
        "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') w, "
        "count(*) FILTER (WHERE state = 'active') a FROM pg_stat_activity "
        "WHERE application_name = $1",
        app,
    )
    return row["w"], row["a"]


def with_verify(ds: Any, tk: Tick, results: Mapping[str, Iterable[str]]) -> Tick:
    """`tk` carrying these verify() results, whichever way this build feeds
    them to the detectors: in the Tick (`Tick.invariants`), or through
    `DetectorSet.note_invariants` before the tick is evaluated."""
    if "invariants" in {f.name for f in dataclasses.fields(Tick)}:
        return dataclasses.replace(tk, invariants={k: tuple(v) for k, v in results.items()})
    for k, v in results.items():
        ds.note_invariants(k, list(v))
    return tk
