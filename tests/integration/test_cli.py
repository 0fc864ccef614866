"""The CLI: bad input is one line on stderr, exit 2, no traceback; a real
headless run records, exports and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from app.session.recording import read_recording

BAD = [
    (["run", "--headless", "--scenario", "no-such-thing"], "unknown scenario"),
    (["run", "--headless", "--scenario", "/tmp/definitely-missing.py"], "does not exist"),
    (
        ["run", "--headless", "--scenario", "stock-reservation", "--pg", "mysql://x@h/db"],
        "not a PostgreSQL DSN",
    ),
    (
        ["run", "--headless", "--scenario", "stock-reservation", "--pg", "postgresql://h:99999/db"],
        "invalid port",
    ),
    (
        ["run", "--headless", "--scenario", "stock-reservation", "--redis", "http://x"],
        "not a Redis URL",
    ),
    (
        ["run", "--headless", "--scenario", "stock-reservation", "--duration", "soon"],
        "not a duration",
    ),
    (["run", "--headless", "--scenario", "stock-reservation", "--steps", "1,x"], "--steps"),
    (["run", "--headless", "--scenario", "stock-reservation", "--rate", "fast"], "not a rate"),
    (
        ["run", "--headless", "--scenario", "stock-reservation", "--abort-on", "p95>>1"],
        "not a threshold",
    ),
    (
        ["run", "--headless", "--scenario", "stock-reservation", "--abort-on", "errors>5ms"],
        "percentage",
    ),
    (["run", "--headless", "--scenario", "stock-reservation", "-p", "novalue"], "key=value"),
    (
        ["run", "--headless", "--scenario", "stock-reservation", "--max-concurrency", "0"],
        "at least 1",
    ),
    (["run", "--headless", "--scenario", "stock-reservation=abc"], "weight"),
    (["run", "--headless"], "no scenario"),
    (
        [
            "run",
            "--headless",
            "--scenario",
            "stock-reservation",
            "--rate",
            "10/s",
            "--steps",
            "1,2",
        ],
        "do not mix",
    ),
    (["run", "--bogus-flag"], "unrecognized arguments"),
    (["run", "--headless", "-s", "hot-counter", "--slo", "p95=fast"], "--slo"),
    (["run", "--headless", "-s", "hot-counter", "--slo", "errors=3ms"], "percentage"),
    (["run", "--headless", "-s", "hot-counter", "--detect", "nosuch.k=1"], "unknown detector kind"),
    (["run", "--headless", "-s", "hot-counter", "--detect", "novalue"], "KIND.OPTION=VALUE"),
    (["run", "--headless", "-s", "pg-select", "--processes", "0"], "at least 1"),
    (["run", "--headless", "-s", "pg-select", "--processes", "two"], "whole number"),
    (
        ["run", "--headless", "-s", "pg-select", "--processes", "9", "--max-concurrency", "4"],
        "too many",
    ),  # fmt: skip
    (["run", "--headless", "-s", "redis-queue", "--processes", "2"], "drop --processes"),
    (["report", "/tmp/definitely-missing.jsonl"], "does not exist"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(argv: list[str], needle: str, capsys) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_scenario_file_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "syntax.py").write_text("def broken(:\n")
    (tmp_path / "empty.py").write_text("X = 1\n")
    (tmp_path / "notscen.py").write_text("class Foo: pass\n")
    (tmp_path / "boom.py").write_text("raise RuntimeError('nope')\n")
    cases = [
        (f"{tmp_path}/syntax.py", "syntax error at line 1"),
        (f"{tmp_path}/empty.py", "defines no Scenario subclass"),
        (f"{tmp_path}/notscen.py:Foo", "is not a Scenario subclass"),
        (f"{tmp_path}/notscen.py:Bar", "has no class Bar"),
        (f"{tmp_path}/boom.py", "failed to import: RuntimeError: nope"),
    ]
    for spec, needle in cases:
        assert main(["run", "--headless", "--scenario", spec]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


def test_unreachable_and_wrong_database_are_one_line(pg_dsn: str, capsys) -> None:
    assert (
        main(
            ["run", "--headless", "-s", "pg-select", "--pg", "postgresql://postgres@127.0.0.1:1/x"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "connection refused" in err and len(err.splitlines()) == 1
    base = pg_dsn.rsplit("/", 1)[0]
    assert main(["run", "--headless", "-s", "pg-select", "--pg", f"{base}/no_such_db_xyz"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1


def test_setup_raising_is_exit_2_and_leaves_nothing(pg_dsn: str, tmp_path: Path, capsys) -> None:
    import asyncio

    import asyncpg

    f = tmp_path / "halfway.py"
    f.write_text(
        "from app.scenario import Scenario\n"
        "class Halfway(Scenario):\n"
        "    name = 'halfway'\n"
        "    needs = ('postgres',)\n"
        "    async def setup(self, ctx):\n"
        "        await ctx.conn.execute(f'CREATE TABLE \"{ctx.prefix}\".t (id int)')\n"
        "        raise RuntimeError('the fixture data is missing')\n"
        "    async def run(self, ctx):\n"
        "        pass\n"
    )
    assert main(["run", "--headless", "-s", str(f), "--pg", pg_dsn, "-d", "2s"]) == 2
    err = capsys.readouterr().err.strip()
    assert "setup failed" in err and "the fixture data is missing" in err
    assert len(err.splitlines()) == 1

    async def schemas() -> list:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return await conn.fetch(
                "SELECT nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid"
                " WHERE nspname LIKE 'loadtop\\_%' AND c.relname = 't'"
            )
        finally:
            await conn.close()

    assert asyncio.run(schemas()) == []


def test_headless_run_records_exports_and_reports(pg_dsn: str, tmp_path: Path) -> None:
    rec, md = tmp_path / "run.jsonl", tmp_path / "run.md"
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", "--headless", "-s", "hot-counter", "--pg", pg_dsn,
         "--steps", "1,3", "--step-seconds", "1.5", "--record", str(rec), "--export", str(md)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "ops/s" in ln]
    assert len(lines) >= 3
    assert "p95" in lines[0] and "c=1/1" in lines[0]
    # the partial window after the stop is labelled, not shown as a second's figures
    drain = [ln for ln in proc.stdout.splitlines() if "drain:" in ln]
    assert len(drain) == 1 and "ops/s" not in drain[0], proc.stdout
    last = read_recording(rec).ticks[-1]
    assert last.is_drain
    done = last.completed
    assert f"drain: {done} in-flight ops finished after the stop" in drain[0], (drain, done)
    assert md.exists() and "## Steps" in md.read_text()
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "report", str(rec), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    data = json.loads(out.stdout)
    assert [s["concurrency"] for s in data["steps"]][:2] == [1, 3]
    assert data["invariants"] == {}


def test_scenarios_lists_builtins(capsys) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    for name in ("stock-reservation", "hot-counter", "opposite-order", "unique-ids", "pg-select"):
        assert name in out


def test_slo_flag_sets_the_verdict_and_the_detector(pg_dsn: str, tmp_path: Path) -> None:
    md = tmp_path / "slo.md"
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", "--headless", "-s", "hot-counter", "--pg", pg_dsn,
         "-c", "4", "-d", "4s", "--slo", "p95=1us,p99=2us,errors=50%", "--export", str(md)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # the SLO is broken: the report says FAIL and so does the exit code (issue 13;
    # this test used to pin exit 0 under a FAIL heading)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("FAIL: SLO broken: p95 < 0.001 ms")
    text = md.read_text()
    assert "**FAIL**" in text
    assert "p95 < 0.001 ms ❌" in text and "errors < 50% ✅" in text
    # the headless line names the anomaly once, when it is raised
    assert proc.stdout.count("! slo-breach") == 1
