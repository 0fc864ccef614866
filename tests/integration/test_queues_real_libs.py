"""Issue 11 with the real libraries: each queue layout is driven by the
library's OWN producer and worker (rq, celery, arq, dramatiq, huey as Python
subprocesses; BullMQ through Node) against the test Redis. The probe must find
the queue with no configuration, measure consumption while the worker runs and
raise nothing then; after the worker is killed (SIGKILL) and more jobs arrive,
its depth, scheduled count and oldest age must equal ground truth read with
plain commands, and queue-stuck / consumers-gone must be raised within a few
ticks. Ticks are built the way the engine builds them: one probe poll and one
DetectorSet evaluation per second (`Watch`), so the timing is in ticks without
depending on the session code.

Set LOADTOP_QUEUE_TABLE=<file> to collect the figures of each run as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.detect import build_detectors
from app.probes.base import run_poll
from app.probes.redis import RedisProbe
from app.tick import Anomaly, Tick

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BULLMQ_DIR = ROOT / "tests" / "fixtures" / "bullmq"
QUEUE_KINDS = ("queue-stuck", "consumers-gone", "queue-backlog")


# ---- the engine's cadence, without the engine ---------------------------------------


@dataclass
class Watch:
    """One RedisProbe poll and one DetectorSet evaluation per tick (1 s)."""

    url: str
    interval: float = 1.0
    probe: RedisProbe = field(init=False)
    ticks: list[Tick] = field(default_factory=list)
    t0: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.probe = RedisProbe(self.url, interval=self.interval)
        self.dset = build_detectors({})

    async def tick(self) -> Tick:
        """Poll, then close the window one interval after the previous one (never
        catching up in a burst after a pause: every tick is a real second)."""
        i = len(self.ticks)
        self._due = max(getattr(self, "_due", self.t0) + self.interval, time.time() + 0.2)
        reading = await run_poll(self.probe)
        assert reading.ok, reading.error
        await asyncio.sleep(max(0.0, self._due - time.time()))
        tk = Tick(
            index=i,
            t=time.time(),
            elapsed=time.time() - self.t0,
            interval=self.interval,
            mode="workers",
            target_concurrency=0,
            concurrency=0,
            readings={"redis": reading},
        )
        active, cleared = self.dset.evaluate(tk)
        import dataclasses

        tk = dataclasses.replace(tk, anomalies=active, cleared=cleared)
        self.ticks.append(tk)
        return tk

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.ticks[-1].readings["redis"].data)

    def queue(self, layout: str, key: str) -> dict[str, Any] | None:
        for q in self.data.get("queues", ()):
            if q["layout"] == layout and q["key"] == key:
                return q
        return None

    def raised(self, kind: str, key: str, since: int = 0) -> tuple[int, Anomaly] | None:
        for tk in self.ticks[since:]:
            for a in tk.anomalies:
                if a.kind == kind and a.evidence.get("queue") == key:
                    return tk.index, a
        return None

    def anomalies_of(self, qname: str, since: int = 0, until: int | None = None) -> list[Anomaly]:
        return [
            a
            for tk in self.ticks[since:until]
            for a in tk.anomalies
            if a.subject.endswith(f":queue:{qname}")
        ]

    async def close(self) -> None:
        await self.probe.close()


# ---- workers and producers ----------------------------------------------------------


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL takes its children too
        )


def kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)


def first_enqueue(out: bytes) -> float:
    for line in out.decode().splitlines():
        if line.startswith("first="):
            return float(line.split("=", 1)[1])
    raise AssertionError(f"the producer did not say when it began: {out!r}")


def produce_py(lib: str, env: dict[str, str], n: int, delayed: int = 0) -> float:
    """Enqueue with the library's own API; returns when the first job was enqueued."""
    p = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.qtasks", lib, str(n), str(delayed)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        check=True,
        timeout=60,
        capture_output=True,
    )
    return first_enqueue(p.stdout)


def produce_bull(url: str, prefix: str, q: str, n: int, delayed: int = 0) -> float:
    p = subprocess.run(
        ["node", "run.mjs", "produce", url, prefix, q, str(n), str(delayed)],
        cwd=BULLMQ_DIR,
        check=True,
        timeout=60,
        capture_output=True,
    )
    return first_enqueue(p.stdout)


@dataclass
class Case:
    lib: str
    layout: str
    key: str  # the queue's key as the probe reports it
    name: str  # the queue's logical name (before de-duplication)
    worker: list[str]
    produce: Callable[[int, int], float]
    truth: Callable[[aioredis.Redis], Awaitable[tuple[int, int | None]]]  # depth, scheduled
    delayed: int = 0
    delayed_in_a: int = 0  # delayed jobs produced while the worker runs (huey's schedule)
    has_age: bool = True
    consumers_gone: bool = True  # expected from this layout's evidence
    env: dict[str, str] = field(default_factory=dict)
    cleanup: tuple[str, ...] = ()


async def llen(r: aioredis.Redis, *keys: str) -> int:
    return sum([await r.llen(k) for k in keys])


def make_case(lib: str, url: str, q: str) -> Case:
    env = {"QT_URL": url, "QT_QUEUE": q, "QT_SLEEP": "0.01"}

    def py(n: int, d: int) -> float:
        return produce_py(lib, env, n, d)

    if lib == "rq":

        async def truth(r: aioredis.Redis) -> tuple[int, int | None]:
            return await r.llen(f"rq:queue:{q}"), await r.zcard(f"rq:scheduled:{q}")

        return Case(lib, "rq", f"rq:queue:{q}", q,
                    [str(BIN / "rq"), "worker", "-u", url, q, "-w", "rq.worker.SimpleWorker"],
                    py, truth, delayed=3, env=env,
                    cleanup=(f"rq:*{q}*", "rq:job:*", "rq:results:*", "rq:execution*",
                             "rq:worker*"))  # fmt: skip
    if lib == "celery":

        async def truth(r: aioredis.Redis) -> tuple[int, int | None]:
            return await llen(r, q, *(f"{q}\x06\x16{p}" for p in "369")), None

        return Case(lib, "celery", q, q,
                    [str(BIN / "celery"), "-A", "tests.fixtures.qtasks:celery_app", "worker",
                     "-Q", q, "--pool", "solo", "-l", "warning", "-E"],
                    py, truth, has_age=False, env=env,
                    cleanup=(f"*{q}*", "_kombu.binding.*", "*.reply.celery.pidbox",
                             "celery-task-meta-*", "unacked*", "_kombu.binding_deadlines"))  # fmt: skip
    if lib == "dramatiq":

        async def truth(r: aioredis.Redis) -> tuple[int, int | None]:
            return await r.llen(f"dramatiq:{q}"), await r.llen(f"dramatiq:{q}.DQ")

        return Case(lib, "dramatiq", f"dramatiq:{q}", q,
                    [str(BIN / "dramatiq"), "tests.fixtures.qtasks", "--processes", "1",
                     "--threads", "2", "--queues", q],
                    py, truth, delayed=3, env=env,
                    cleanup=(f"dramatiq:*{q}*", "dramatiq:__heartbeats__"))  # fmt: skip
    if lib == "huey":

        async def truth(r: aioredis.Redis) -> tuple[int, int | None]:
            return await r.llen(f"huey.redis.{q}"), await r.zcard(f"huey.schedule.{q}")

        return Case(lib, "huey", f"huey.redis.{q}", q,
                    [str(BIN / "huey_consumer"), "tests.fixtures.qtasks.huey", "-w", "2"],
                    py, truth, has_age=False, env=env, cleanup=(f"huey.*.{q}",),
                    delayed_in_a=3)  # fmt: skip
    if lib == "arq":
        key = f"arq:queue:{q}"

        async def truth(r: aioredis.Redis) -> tuple[int, int | None]:
            now_ms = time.time() * 1000
            return await r.zcount(key, "-inf", now_ms), await r.zcount(key, f"({now_ms}", "+inf")

        return Case(lib, "arq", key, key, [str(BIN / "arq"), "tests.fixtures.qtasks.ArqSettings"],
                    py, truth, delayed=3, env=env,
                    cleanup=(f"{key}*", "arq:job:*", "arq:result:*", "arq:retry:*",
                             "arq:in-progress:*"))  # fmt: skip
    if lib == "bullmq":
        prefix = "{bull}"
        base = f"{prefix}:{q}"

        async def truth(r: aioredis.Redis) -> tuple[int, int | None]:
            due = await r.zcount(f"{base}:delayed", 0, int(time.time() * 1000) * 0x1000 + 0xFFF)
            depth = await llen(r, f"{base}:wait", f"{base}:paused")
            depth += await r.zcard(f"{base}:prioritized") + due
            return depth, await r.zcard(f"{base}:delayed") - due

        def bull(n: int, d: int) -> float:
            return produce_bull(url, prefix, q, n, d)

        return Case(lib, "bullmq", base, q,
                    ["node", str(BULLMQ_DIR / "run.mjs"), "work", url, prefix, q, "5"],
                    bull, truth, delayed=3, cleanup=(f"{base}:*",))  # fmt: skip
    raise AssertionError(lib)


def record(row: dict[str, Any]) -> None:
    path = os.environ.get("LOADTOP_QUEUE_TABLE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


async def wipe(r: aioredis.Redis, *patterns: str) -> None:
    for p in patterns:
        keys = [k async for k in r.scan_iter(match=p, count=1000)]
        for i in range(0, len(keys), 500):
            await r.delete(*keys[i : i + 500])


LIBS = ["rq", "celery", "arq", "dramatiq", "huey", "bullmq"]


@pytest.mark.parametrize("lib", LIBS)
async def test_real_library_queue(lib: str, redis_url: str, tmp_path: Path) -> None:
    if lib == "bullmq" and (
        shutil.which("node") is None or not (BULLMQ_DIR / "node_modules" / "bullmq").exists()
    ):
        pytest.skip("BullMQ needs node and `npm ci` in tests/fixtures/bullmq")
    q = f"qt{uuid.uuid4().hex[:8]}"
    case = make_case(lib, redis_url, q)
    r = aioredis.Redis.from_url(redis_url)
    w = Watch(redis_url)
    worker = spawn(case.worker, case.env, tmp_path / "worker.log")
    row: dict[str, Any] = {"lib": lib}
    try:
        # -- the worker is up once it has consumed a first job
        await asyncio.to_thread(case.produce, 1, 0)
        for _ in range(20):
            await asyncio.sleep(0.5)
            if (await case.truth(r))[0] == 0:
                break
        else:
            log = (tmp_path / "worker.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"{lib} worker did not start: {log}")
        # -- phase A: the worker consumes; the probe finds the queue, nothing is raised
        found_at = consumed = None
        for n in range(25):
            if n % 4 == 0 and (found_at is None or not consumed) and n < 16:
                # a queue that is always empty has no key to find: keep some work coming
                await asyncio.to_thread(case.produce, 60, case.delayed_in_a if n == 0 else 0)
            await w.tick()
            qd = w.queue(case.layout, case.key)
            if qd is not None and found_at is None:
                found_at = len(w.ticks) - 1
            if qd is not None and (qd.get("consumed_per_s") or 0) > 0:
                consumed = qd["consumed_per_s"]
            depth, _ = await case.truth(r)
            if found_at is not None and consumed and depth == 0 and n >= 5:
                break
        log = (tmp_path / "worker.log").read_text(errors="replace")[-2000:]
        assert found_at is not None, f"{lib} queue {case.key} not found by default; worker: {log}"
        assert consumed, f"{lib}: no consumption measured while the worker ran; worker: {log}"
        assert (await case.truth(r))[0] == 0, f"{lib}: the worker did not drain; {log}"
        qname = w.queue(case.layout, case.key)["name"]  # type: ignore[index]
        alive = w.anomalies_of(qname)
        assert not alive, f"false alarms while the worker ran: {[a.summary for a in alive]}"
        row.update(found_by_default=True, found_tick=found_at, consumed_per_s=consumed)
        # the libraries' plumbing is never listed as a queue
        plumbing = re.compile(
            r"pidbox|celeryev|reply|:intermediate|__heartbeats__|__acks__|huey\.schedule|"
            r"rq:results|rq:(wip|failed|scheduled|finished|executions)|\.DQ|\.XQ|:events$|"
            r":delayed$|:marker$|arq:(in-progress|retry|result|job)"
        )
        listed = {x["key"] for tk in w.ticks for x in tk.readings["redis"].data["queues"]}
        assert not [k for k in listed if plumbing.search(k)], sorted(listed)
        # nor hinted at as "looks like a queue or lock but matches nothing"
        hinted = {k for tk in w.ticks for k in tk.readings["redis"].data.get("unmatched_keys", ())}
        assert not [k for k in hinted if q in k], sorted(hinted)
        row["listed"] = sorted(listed)

        # -- phase B: the worker is killed; jobs keep arriving
        kill(worker)
        await w.tick()  # the poll that sees the consumers gone (blocked clients, names)
        killed_at = len(w.ticks)
        t_enq = await asyncio.to_thread(case.produce, 300, case.delayed)
        produced_at = len(w.ticks)
        depth_ok: list[bool] = []
        age_err: list[float] = []
        stuck = gone = None
        for _ in range(16):
            await w.tick()
            truth_depth, truth_sched = await case.truth(r)
            qd = w.queue(case.layout, case.key)
            assert qd is not None
            depth_ok.append(qd["depth"] == truth_depth)
            assert qd["depth"] == truth_depth, (qd, truth_depth)
            if case.delayed or case.delayed_in_a:
                want = case.delayed or case.delayed_in_a
                assert qd["scheduled"] == truth_sched == want, (qd, truth_sched)
            if case.has_age:
                assert qd["oldest_age_s"] is not None, qd
                polled = w.ticks[-1].readings["redis"].t  # the age is as of the poll
                age_err.append(abs(qd["oldest_age_s"] - (polled - t_enq)))
            else:
                assert qd.get("oldest_age_s") is None  # the layout stores no time
            stuck = stuck or w.raised("queue-stuck", qname, killed_at)
            gone = gone or w.raised("consumers-gone", qname, killed_at)
            if stuck and (gone or not case.consumers_gone):
                break
        series = [
            (tk.index, q.get("depth"), q.get("consumed_per_s"), q.get("oldest_age_s"),
             (q.get("consumers") or {}).get("count"))
            for tk in w.ticks
            for q in tk.readings["redis"].data.get("queues", ())
            if q["key"] == case.key
        ]  # fmt: skip
        print(lib, "produced at", produced_at, "killed at", killed_at, series)
        assert stuck is not None, f"{lib}: queue-stuck not raised; last reading {qd}"
        stuck_ticks = stuck[0] - produced_at + 1
        assert stuck[1].severity == "critical" and stuck_ticks <= 8, stuck_ticks
        if case.has_age:
            assert max(age_err) < 0.5, age_err
        if case.consumers_gone:
            assert gone is not None, (
                f"{lib}: consumers-gone not raised; consumers {qd['consumers']}"
            )
        row.update(
            depth_equals_truth=all(depth_ok),
            polls_compared=len(depth_ok),
            scheduled=qd.get("scheduled"),
            age_max_error_s=round(max(age_err), 2) if age_err else None,
            stuck_after_ticks=stuck_ticks,
            consumers_gone_after_ticks=None if gone is None else gone[0] - killed_at + 1,
            consumers_gone_severity=None if gone is None else gone[1].severity,
            consumers=qd.get("consumers"),
            false_alarms=[a.summary for a in alive],
        )
        record(row)
    finally:
        kill(worker)
        await w.close()
        await wipe(r, *case.cleanup)
        await r.srem("rq:queues", f"rq:queue:{q}")
        await r.aclose()
