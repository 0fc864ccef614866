"""Issue 13: one verdict, one exit code, and the faults that used to lie.

The exit-code table runs the real CLI on the test servers with short
durations; for each case the process's exit code, its closing line, the
report's headline (Markdown and JSON) and the recording's end record agree.
The fault cases stop and restart embedded servers (own_pg / own_redis).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.engine.engine import EngineConfig
from app.scenario import Context, Scenario
from app.session.recording import read_recording
from app.session.report import build_summary, render_markdown
from app.session.runner import RunConfig, Session
from tests.helpers import started

LOADTOP = str(Path(sys.executable).with_name("loadtop"))

FAILING_SCENARIO = textwrap.dedent(
    """
    from app.scenario import Scenario

    class AlwaysFails(Scenario):
        name = "always-fails"
        needs = ("postgres",)

        async def run(self, ctx):
            await ctx.conn.execute("SELECT 1")
            raise RuntimeError("the product is gone")
    """
)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADTOP_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env


def _headline(md: str) -> str:
    return next(ln for ln in md.splitlines() if ln.startswith("**")).split("**")[1]


# (id, scenario and flags, needs, expected verdict, exit code, a word of the why)
TABLE = [
    ("pass", ["-s", "pg-select", "-c", "2"], "pg", "PASS", 0, "held"),
    ("pass-redis", ["-s", "redis-getset", "-c", "2"], "redis", "PASS", 0, "held"),
    (
        "invariant",
        ["-s", "stock-reservation", "-p", "mode=unsafe", "-p", "products=2", "-c", "8"],
        "pg",
        "FAIL",
        1,
        "invariant violated",
    ),  # fmt: skip
    ("slo", ["-s", "pg-select", "--slo", "p95=1us"], "pg", "FAIL", 1, "SLO broken"),
    (
        "abort-on",
        ["-s", "pg-select", "--abort-on", "ops>0/s", "-d", "20s"],
        "pg",
        "FAIL",
        1,
        "tripped",
    ),  # fmt: skip
    ("every-op-fails", ["-s", "{failing}"], "pg", "FAIL", 1, "no operation succeeded"),
    ("bad-input", ["-s", "stock-reservation", "-p", "products=0"], "pg", None, 2, "products"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("case", "flags", "needs", "verdict", "code", "why"), TABLE,
                         ids=[c[0] for c in TABLE])  # fmt: skip
def test_exit_code_table(
    case: str, flags: list[str], needs: str, verdict: str | None, code: int, why: str,
    pg_dsn: str, redis_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    scen = tmp_path / "failing.py"
    scen.write_text(FAILING_SCENARIO)
    flags = [f.replace("{failing}", str(scen)) for f in flags]
    target = ["--pg", pg_dsn] if needs == "pg" else ["--redis", redis_url]
    rec, md = tmp_path / "r.jsonl", tmp_path / "r.md"
    args = [LOADTOP, "run", "--headless", *target, "-d", "2s", "--interval", "0.5s",
            "--record", str(rec), "--export", str(md), *flags]  # fmt: skip
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env=_env(tmp_path),
                       cwd=tmp_path)  # fmt: skip
    assert p.returncode == code, (p.stdout[-800:], p.stderr[-800:])
    assert "Traceback" not in p.stderr
    if verdict is None:  # bad input: one line, nothing judged
        assert len(p.stderr.strip().splitlines()) == 1 and why in p.stderr, p.stderr
        return
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{verdict}: ") and why in last, last
    # the report (written at the end), the recording's end record and a report
    # rebuilt from the recording all say the same
    assert _headline(md.read_text()) == verdict
    assert f"Verdict: {last.partition(': ')[2]}" in md.read_text()
    end = json.loads(rec.read_text().splitlines()[-1])
    assert end["type"] == "end" and end["verdict"] == verdict and end["exit_code"] == code
    j = subprocess.run([LOADTOP, "report", "--json", str(rec)], capture_output=True, text=True,
                       timeout=60, env=_env(tmp_path))  # fmt: skip
    assert j.returncode == 0, j.stderr
    v = json.loads(j.stdout)["verdict"]
    assert v["verdict"] == verdict and v["exit_code"] == code and why in v["why"]


@pytest.mark.integration
def test_a_killed_run_reports_incomplete(pg_dsn: str, tmp_path: Path) -> None:
    rec = tmp_path / "k.jsonl"
    proc = subprocess.Popen(
        [LOADTOP, "run", "--headless", "-s", "pg-select", "--pg", pg_dsn, "-d", "60s",
         "--interval", "0.2s", "--record", str(rec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None
    for _ in range(3):
        assert b"ops/s" in proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()
    # `loadtop report` itself succeeds (exit 0); its verdict says the run is incomplete
    r = subprocess.run([LOADTOP, "report", str(rec)], capture_output=True, text=True,
                       timeout=60, env=_env(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _headline(r.stdout) == "INCOMPLETE"
    assert "no end record" in r.stdout
    j = json.loads(subprocess.run([LOADTOP, "report", "--json", str(rec)], capture_output=True,
                                  text=True, timeout=60, env=_env(tmp_path)).stdout)  # fmt: skip
    assert j["verdict"]["verdict"] == "INCOMPLETE" and j["verdict"]["exit_code"] == 1


# ---- faults ---------------------------------------------------------------------


async def _keys(url: str, pattern: str) -> list[bytes]:
    r = aioredis.from_url(url)
    try:
        return [k async for k in r.scan_iter(match=pattern, count=1000)]
    finally:
        await r.aclose()


class ManyKeys(Scenario):
    """Writes a key per operation under its prefix (the 10,000 keys of the issue)."""

    name = "many-keys"
    needs = ("redis",)

    async def run(self, ctx: Context) -> None:
        assert ctx.redis is not None
        await ctx.redis.set(ctx.key("k", ctx.worker, ctx.rng.randrange(1 << 30)), 1)


@pytest.mark.integration
@pytest.mark.slow
async def test_redis_restart_mid_run_leaves_no_key(own_redis) -> None:  # type: ignore[no-untyped-def]
    """Valkey is stopped mid-run and started again; the keys written after it
    came back are removed at the end (the cleanup reconnects, and retries)."""
    cfg = RunConfig(
        scenarios=[(ManyKeys, 1.0)], redis_url=own_redis.url, probes=False,
        slo={"error_pct": 100.0, "p95_ms": 60_000, "p99_ms": 60_000},  # the outage is expected
        engine=EngineConfig(concurrency=4, duration=7.0, interval=0.5),
    )  # fmt: skip
    session = Session(cfg)
    run = await started(session, ticks=2)
    await asyncio.to_thread(own_redis.stop)
    await asyncio.sleep(1.5)
    await asyncio.to_thread(own_redis.start)
    out = await asyncio.wait_for(run, 90)
    pattern = f"loadtop_{cfg.run_id}_*"
    written_after = sum(s.ok for t in session.ticks if t.t > time.time() - 4 for s in t.scenarios)
    assert written_after > 100, "no key was written after the restart: the test proves nothing"
    assert await _keys(own_redis.url, pattern) == []
    assert out.leftovers == [], out.leftovers
    assert not any("cleanup" in m and "failed" in m for m in session.messages), session.messages
    assert out.verdict == "PASS" and out.exit_code == 0, (out.why, session.messages)


async def _run_with_redis_down_at_the_end(r, retry_s: float, back_after: float | None):  # type: ignore[no-untyped-def]
    """ManyKeys against `r`; Valkey stops 1 s before the run ends and starts
    again `back_after` s later (None: after the run)."""
    cfg = RunConfig(
        scenarios=[(ManyKeys, 1.0)], redis_url=r.url, probes=False, retry_s=retry_s,
        slo={"error_pct": 100.0, "p95_ms": 60_000, "p99_ms": 60_000},
        engine=EngineConfig(concurrency=4, duration=3.0, interval=0.5),
    )  # fmt: skip
    session = Session(cfg)
    run = await started(session, ticks=4)
    await asyncio.to_thread(r.stop)
    if back_after is not None:
        await asyncio.sleep(back_after)
        await asyncio.to_thread(r.start)
    out = await asyncio.wait_for(run, 120)
    if back_after is None:
        await asyncio.to_thread(r.start)
    return session, out


@pytest.mark.integration
@pytest.mark.slow
async def test_redis_down_as_the_run_ends_is_cleaned_once_back() -> None:
    """The keys survive the restart (append-only file); cleanup finds Valkey
    down, retries on fresh connections, and removes them once it is back."""
    from app.embedded import EmbeddedRedis

    with EmbeddedRedis(appendonly="yes", appendfsync="always") as r:
        session, out = await _run_with_redis_down_at_the_end(r, retry_s=30.0, back_after=3.0)
        assert await _keys(r.url, f"loadtop_{session.cfg.run_id}_*") == []
        assert out.leftovers == [] and out.verdict == "PASS", (out.why, session.messages)
        assert any("cleanup of redis done on attempt" in m for m in session.messages)


@pytest.mark.integration
@pytest.mark.slow
async def test_redis_down_past_the_retries_fails_and_its_command_removes_the_keys() -> None:
    import shutil

    from app.embedded import EmbeddedRedis

    with EmbeddedRedis(appendonly="yes", appendfsync="always") as r:
        session, out = await _run_with_redis_down_at_the_end(r, retry_s=1.0, back_after=None)
        pattern = f"loadtop_{session.cfg.run_id}_*"
        assert out.verdict == "FAIL" and out.exit_code == 1 and "cleanup failed" in out.why
        [left] = out.leftovers
        assert left["target"] == "redis" and left["pattern"] == pattern
        [cmd] = left["commands"]
        assert await _keys(r.url, pattern), "the keys did not survive: the test proves nothing"
        if shutil.which("redis-cli") is None:
            pytest.skip("no redis-cli to run the printed command")
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert await _keys(r.url, pattern) == []


class Stock(Scenario):
    """Creates a table in its schema; verify() reads it back."""

    name = "stock"
    needs = ("postgres",)

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute(f'CREATE TABLE "{ctx.prefix}".stock (n int)')

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute(f'INSERT INTO "{ctx.prefix}".stock VALUES (1)')

    async def verify(self, ctx: Context) -> list[str]:
        assert ctx.conn is not None
        await ctx.conn.fetchval(f'SELECT count(*) FROM "{ctx.prefix}".stock')
        return []


@pytest.mark.integration
@pytest.mark.slow
async def test_postgres_down_at_the_end_fails_and_names_what_is_left(
    own_pg, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL stops before the run ends: the final verify() cannot run
    (retried, then said so), the schema cannot be dropped (retried, then
    named with the command that drops it): FAIL, exit 1, in the report and
    its JSON. The command given removes the schema once the server is back."""
    cfg = RunConfig(
        scenarios=[(Stock, 1.0)], pg_dsn=own_pg.dsn, probes=False, retry_s=2.0,
        slo={"error_pct": 100.0, "p95_ms": 60_000, "p99_ms": 60_000},
        engine=EngineConfig(concurrency=2, duration=4.0, interval=0.5),
        export=str(tmp_path / "r.md"), record=str(tmp_path / "r.jsonl"),
    )  # fmt: skip
    session = Session(cfg)
    run = await started(session, ticks=2)
    await asyncio.to_thread(own_pg.stop)
    t0 = time.monotonic()
    out = await asyncio.wait_for(run, 120)
    took = time.monotonic() - t0
    assert out.exit_code == 1 and out.verdict == "FAIL", out.why
    assert "final verify() of stock could not run" in out.why
    assert "cleanup failed" in out.why
    assert "stock" in out.unverified and "tried" in out.unverified["stock"]
    schema = session.prefixes["stock"]
    [left] = out.leftovers
    assert left["target"] == "postgres" and schema in left["what"]
    [cmd] = left["commands"]
    assert f'DROP SCHEMA IF EXISTS "{schema}" CASCADE;' in cmd
    assert took < 60, f"the retries are bounded: {took:.0f} s"
    # the closing lines (headless): the command, then the verdict last
    from app.session.runner import print_outcome

    capsys.readouterr()
    print_outcome(session, out)
    printed = capsys.readouterr().out.strip().splitlines()
    assert f"  remove with: {cmd}" in printed
    assert printed[-1] == f"FAIL: {out.why}"
    md = (tmp_path / "r.md").read_text()
    assert _headline(md) == "FAIL"
    assert "Every scenario's `verify()` held." not in md
    assert "could not run" in md and "## Cleanup" in md and cmd in md
    rec = read_recording(tmp_path / "r.jsonl")
    summary = build_summary(rec)
    assert summary["verdict"]["verdict"] == "FAIL" and summary["leftovers"][0]["commands"] == [cmd]
    assert _headline(render_markdown(rec)) == "FAIL"
    # the server comes back: the schema is there, and the command given removes it
    await asyncio.to_thread(own_pg.start)
    conn = await asyncpg.connect(own_pg.dsn)
    try:
        like = "SELECT count(*) FROM pg_namespace WHERE nspname = $1"
        assert await conn.fetchval(like, schema) == 1
        sql = re.search(r"-c '(.*)'$", cmd)
        assert sql is not None, cmd
        await conn.execute(sql.group(1))
        assert await conn.fetchval(like, schema) == 0
    finally:
        await conn.close()


@pytest.mark.integration
@pytest.mark.slow
async def test_postgres_back_within_the_retry_window_is_cleaned_up(own_pg) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL is down as the run ends and back 3 s later: the final verify
    and the cleanup, retried on fresh connections, both succeed: PASS."""
    cfg = RunConfig(
        scenarios=[(Stock, 1.0)], pg_dsn=own_pg.dsn, probes=False, retry_s=30.0,
        slo={"error_pct": 100.0, "p95_ms": 60_000, "p99_ms": 60_000},
        engine=EngineConfig(concurrency=2, duration=3.0, interval=0.5),
    )  # fmt: skip
    session = Session(cfg)
    run = await started(session, ticks=2)
    await asyncio.to_thread(own_pg.stop)
    await asyncio.sleep(4.0)  # the run ends meanwhile: verify() finds no server
    await asyncio.to_thread(own_pg.start)
    out = await asyncio.wait_for(run, 120)
    assert out.unverified == {} and out.leftovers == [], (out.why, session.messages)
    assert out.verdict == "PASS" and out.exit_code == 0, out.why
    conn = await asyncpg.connect(own_pg.dsn)
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1",
            f"loadtop\\_{cfg.run_id}%",
        )
    finally:
        await conn.close()
    assert n == 0


# ---- no hang ------------------------------------------------------------------------


class Noop(Scenario):
    name = "noop"
    needs = ()

    async def run(self, ctx: Context) -> None:
        await asyncio.sleep(0)


class Hangs(Scenario):
    """An operation that never returns by itself."""

    name = "hangs"
    needs = ()

    async def run(self, ctx: Context) -> None:
        await asyncio.sleep(3600)


async def test_a_rate_of_two_million_per_second_ends_on_time() -> None:
    """The old scheduler looped `nxt += gap` without yielding once it fell
    behind: no tick, no stop. Now the run ends on its duration, and the starts
    it could not serve are counted as dropped."""
    cfg = RunConfig(scenarios=[(Noop, 1.0)], probes=False,
                    engine=EngineConfig(concurrency=16, rate=2_000_000.0, duration=3.0,
                                        interval=0.5))  # fmt: skip
    session = Session(cfg)
    t0 = time.monotonic()
    out = await asyncio.wait_for(session.run(), 60)
    took = time.monotonic() - t0
    assert out.reason == "duration"
    assert took < 15, f"{took:.1f} s for a 3 s run"
    assert len(session.ticks) >= 4  # the clock kept ticking during the load
    scheduled = sum(s.scheduled for t in session.ticks for s in t.scenarios)
    dropped = sum(s.dropped for t in session.ticks for s in t.scenarios)
    ok = sum(t.ok for t in session.ticks)
    assert scheduled > 1_000_000 and dropped > 0 and ok > 0
    assert ok <= scheduled - dropped  # what ran was scheduled and not dropped


@pytest.mark.parametrize("scenario", [Noop, Hangs], ids=["busy", "hanging"])
async def test_ten_thousand_workers_shut_down_in_bounded_time(scenario: type[Scenario]) -> None:
    """10,000 workers (the schema's cap), busy or stuck in an operation that
    never returns: the run ends within a generous bound of its duration (the
    drain waits drain_seconds, then cancels), not in time growing with them."""
    cfg = RunConfig(scenarios=[(scenario, 1.0)], probes=False,
                    engine=EngineConfig(concurrency=10_000, max_concurrency=10_000,
                                        duration=2.0, interval=0.5,
                                        drain_seconds=2.0))  # fmt: skip
    session = Session(cfg)
    t0 = time.monotonic()
    out = await asyncio.wait_for(session.run(), 120)
    took = time.monotonic() - t0
    assert out.reason == "duration"
    assert max(t.concurrency for t in session.ticks) == 10_000
    assert session.engine is not None and session.engine.live_workers == 0
    assert took < 2.0 + 15, f"{took:.1f} s to run 2 s and shut down 10,000 workers"


# ---- the rule, over recordings (no server) --------------------------------------------


def _with_anomaly(rec, kind: str, severity: str = "warning"):  # type: ignore[no-untyped-def]
    import dataclasses

    from app.tick import Anomaly

    a = Anomaly(f"{kind}:x", kind, severity, "x", 5, rec.ticks[5].t, f"{kind} on x", {})
    t = rec.ticks[5]
    rec.ticks[5] = dataclasses.replace(t, anomalies=(*t.anomalies, a))
    return rec


def test_the_verdict_rule_is_data_and_others_extend_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.session import report
    from tests.unit.ticks import make_recording

    def judge(rec) -> dict:  # type: ignore[no-untyped-def]
        return build_summary(rec)["verdict"]

    assert judge(make_recording())["verdict"] == "PASS"
    # an anomaly kind fails the run once it is in the set, not before
    rec = _with_anomaly(make_recording(), "made-up-kind")
    assert judge(rec)["verdict"] == "PASS"
    monkeypatch.setattr(report, "FAIL_ON_ANOMALY_KINDS", {*report.FAIL_ON_ANOMALY_KINDS,
                                                          "made-up-kind"})  # fmt: skip
    v = judge(rec)
    assert v["verdict"] == "FAIL" and v["exit_code"] == 1 and "made-up-kind" in v["why"]
    # a check another branch registers reads the summary and names its reason
    monkeypatch.setattr(report, "VERDICT_CHECKS", [lambda s: ["the moon is full"]])
    v = judge(make_recording())
    assert v["verdict"] == "FAIL" and v["why"] == "the moon is full"
    # a check that breaks fails the run closed, and says which
    monkeypatch.setattr(report, "VERDICT_CHECKS", [lambda s: 1 / 0])
    assert judge(make_recording())["verdict"] == "FAIL"


def test_no_end_record_is_incomplete_and_says_what_it_saw() -> None:
    from tests.unit.ticks import make_recording

    rec = make_recording()
    rec.end = None
    v = build_summary(rec)["verdict"]
    assert v["verdict"] == "INCOMPLETE" and v["exit_code"] == 1
    assert "no end record" in v["why"]
    assert _headline(render_markdown(rec)) == "INCOMPLETE"


def test_a_watch_is_judged_by_the_systems_not_an_slo() -> None:
    from tests.unit.ticks import make_recording

    rec = make_recording()
    rec.header["slo"] = {"p95_ms": 0.001}  # a run would FAIL this SLO ...
    assert build_summary(rec)["verdict"]["verdict"] == "FAIL"
    rec.header["load"] = {"mode": "watch", "interval_s": 1.0}
    assert build_summary(rec)["verdict"]["verdict"] == "PASS"  # ... a watch loads nothing
    v = build_summary(_with_anomaly(rec, "lock-wait-chain", "warning"))["verdict"]
    assert v["verdict"] == "PASS"  # a warning is seen, not a failure
    v = build_summary(_with_anomaly(rec, "connection-saturation", "critical"))["verdict"]
    assert v["verdict"] == "FAIL" and "connection-saturation" in v["why"]
