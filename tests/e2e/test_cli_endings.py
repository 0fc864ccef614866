"""How the process ends when its surroundings go away or something breaks
inside: headless output piped into `head`, a console whose terminal hangs up
(SIGHUP of a dropped SSH session), and an unexpected exception. Each ends with
the right code, one line at most, and no traceback on screen; a run stopped by
its reader leaving still tears down and cleans up."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from app.cli import main
from app.commands import COMMANDS

LOADTOP = str(Path(sys.executable).with_name("loadtop"))


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADTOP_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # where a crash log would go
    env["TERM"] = "xterm-256color"
    return env


async def _schemas(dsn: str, run_id: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"loadtop_{run_id}%"
        )
        return [r[0] for r in rows]
    finally:
        await conn.close()


def _end(rec: Path) -> tuple[dict, dict]:
    lines = [json.loads(x) for x in rec.read_text().splitlines() if x.strip()]
    return lines[0], lines[-1]


@pytest.mark.integration
def test_headless_piped_into_head_stops_cleanly(pg_dsn: str, tmp_path: Path) -> None:
    rec = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [LOADTOP, "run", "--headless", "-s", "stock-reservation", "--pg", pg_dsn, "-c", "4",
         "-d", "60s", "--interval", "0.2s", "--record", str(rec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = [proc.stdout.readline() for _ in range(2)]  # what `head -2` reads
    assert all(b"ops/s" in line for line in first), first
    proc.stdout.close()  # ... and then `head` exits
    t0 = time.monotonic()
    code = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert time.monotonic() - t0 < 30, "the run did not stop when its reader left"
    assert code == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    header, end = _end(rec)
    assert end["type"] == "end" and end["reason"] == "stdout closed", end
    assert asyncio_run(_schemas(pg_dsn, header["run_id"])) == []  # teardown and cleanup ran
    assert not (tmp_path / "state").exists()


def asyncio_run(coro):  # type: ignore[no-untyped-def]
    import asyncio

    return asyncio.run(coro)


def test_listing_piped_into_head_is_not_an_error(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [LOADTOP, "scenarios"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(tmp_path), bufsize=0,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read() == b""


@pytest.mark.integration
def test_console_terminal_hangup_ends_with_the_runs_code(pg_dsn: str, tmp_path: Path) -> None:
    """The terminal goes away (its master side closes) and SIGHUP arrives: the
    session tears down, and the exit code is the run's, not 1 from an OSError
    while restoring a terminal that is gone."""
    rec = tmp_path / "hup.jsonl"
    env = _env(tmp_path)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the console on the pty
        try:
            os.chdir(tmp_path)
            os.execve(LOADTOP, [LOADTOP, "run", "-s", "hot-counter", "--pg", pg_dsn, "-d", "60s",
                                "--record", str(rec)], env)  # fmt: skip
        finally:
            os._exit(127)
    screen = b""
    deadline = time.monotonic() + 60
    while b"ops/s" not in screen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                screen += os.read(fd, 65536)
            except OSError:
                break
    assert rec.exists() and rec.stat().st_size > 0, screen[-500:]
    time.sleep(2.0)  # a few ticks with the console drawing
    os.close(fd)  # the SSH session drops ...
    os.kill(pid, signal.SIGHUP)  # ... and the shell's SIGHUP arrives
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the console did not end within 60 s of SIGHUP")
    header, end = _end(rec)
    assert end["type"] == "end" and end["reason"] == "signal SIGHUP", end
    assert os.waitstatus_to_exitcode(status) == end["exit_code"] == 0
    assert asyncio_run(_schemas(pg_dsn, header["run_id"])) == []
    assert not (tmp_path / "state").exists(), "an internal error was logged"


class _Boom:
    name = "boom"
    help = "raises"

    def __init__(self, started: bool) -> None:
        self.started = started

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--pg")

    def run(self, args) -> int:  # type: ignore[no-untyped-def]
        if self.started:
            from app.commands.base import mark_run_started

            mark_run_started()
        raise RuntimeError(f"kaput at {args.pg}\nsecond line")


@pytest.mark.parametrize(("started", "code"), [(False, 2), (True, 1)])
def test_an_unexpected_exception_is_one_line_and_a_log_file(
    started: bool, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr("app.cli.COMMANDS", (*COMMANDS, _Boom(started)))
    dsn = "postgresql://u:Sekr1t-pw@127.0.0.1:1/db"
    assert main(["boom", "--pg", dsn]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "Sekr1t-pw" not in err
    assert "internal error: RuntimeError: kaput" in err
    logs = list((tmp_path / "loadtop").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "Traceback" in text and "RuntimeError: kaput" in text and "second line" in text
    assert "Sekr1t-pw" not in text  # the log is masked too
    assert oct(logs[0].stat().st_mode & 0o777) == "0o600"


@pytest.mark.integration
def test_sigpipe_stops_a_headless_run_like_sigterm(pg_dsn: str, tmp_path: Path) -> None:
    rec = tmp_path / "p.jsonl"
    proc = subprocess.Popen(
        [LOADTOP, "run", "--headless", "-s", "hot-counter", "--pg", pg_dsn, "-d", "60s",
         "--interval", "0.2s", "--record", str(rec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert b"ops/s" in proc.stdout.readline()
    proc.send_signal(signal.SIGPIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert b"stopped: signal SIGPIPE" in out, out[-300:]
    header, end = _end(rec)
    assert end["reason"] == "signal SIGPIPE"
    assert asyncio_run(_schemas(pg_dsn, header["run_id"])) == []
