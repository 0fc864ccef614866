"""Nothing lost, for real, on the `loadtop` process itself: SIGKILL at a random
moment loses at most the tick in progress and `loadtop report` rebuilds the
report; Ctrl-C, SIGTERM and SIGHUP stop the load, run teardown, close the
recording and write the report; an unwritable recording path or a full disk is
one line and exit 2 at start; embedded servers leave no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil
import pytest

from app.embedded import EmbeddedPostgres

pytestmark = [pytest.mark.integration]

CLI = [sys.executable, "-m", "app.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def module_pg():
    with EmbeddedPostgres() as pg:
        yield pg


def start_run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "run", "--headless", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,  # a signal to the test's group never reaches it
    )


def wait_ticks(proc: subprocess.Popen, n: int, timeout: float = 30) -> list[str]:
    """Read stdout until n tick lines were printed."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while sum("ops/s" in ln for ln in lines) < n:
        assert time.monotonic() < deadline, lines
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"exited early ({proc.wait()}): {lines} {err}")
        lines.append(line)
    return lines


def read_lines(path: Path) -> list[dict]:
    out = []
    for ln in path.read_text().splitlines():
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            out.append({"type": "partial"})
    return out


async def leftovers(dsn: str, run_id: str) -> tuple[list[str], int]:
    conn = await asyncpg.connect(dsn)
    try:
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"loadtop\\_{run_id}%"
        )
        sessions = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'loadtop%'"
        )
    finally:
        await conn.close()
    return [r[0] for r in schemas], sessions


def test_sigkill_loses_at_most_the_tick_in_progress(module_pg, tmp_path: Path) -> None:
    rec = tmp_path / "killed.jsonl"
    proc = start_run(
        ["-s", "stock-reservation", "--pg", module_pg.dsn, "-c", "4", "-d", "60s",
         "--interval", "0.5s", "--record", str(rec)]
    )  # fmt: skip
    try:
        printed = wait_ticks(proc, 2)
        time.sleep(random.uniform(0.0, 2.5))
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    printed += out.splitlines()
    n_printed = sum("ops/s" in ln for ln in printed)
    lines = read_lines(rec)
    assert lines[0]["type"] == "header"
    ticks = [x for x in lines if x.get("type") == "tick"]
    assert not any(x.get("type") == "end" for x in lines)
    # every tick shown was recorded (the recorder writes before the printer)...
    assert len(ticks) >= n_printed
    # ...and only the tick in progress at the kill is missing
    # (one 0.5 s interval, plus slack for a loaded machine delaying the tick clock)
    assert ticks[-1]["t"] >= killed_at - 0.5 - 0.6, (ticks[-1]["t"], killed_at)
    rep = subprocess.run([*CLI, "report", str(rec), "--json"], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    data = json.loads(rep.stdout)
    assert data["ticks"] == len(ticks)
    assert data["stop_reason"].startswith("killed")
    md = subprocess.run([*CLI, "report", str(rec)], capture_output=True, text=True, timeout=60)
    assert md.returncode == 0 and "killed run" in md.stdout
    # a kill in the middle of a write: the cut-off line is dropped, the rest read
    cut = tmp_path / "cut.jsonl"
    text = rec.read_text()
    cut.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    rep = subprocess.run([*CLI, "report", str(cut), "--json"], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["ticks"] == len(ticks) - 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_tears_down_and_writes_everything(module_pg, tmp_path: Path, sig) -> None:
    rec, md = tmp_path / "run.jsonl", tmp_path / "run.md"
    proc = start_run(
        ["-s", "stock-reservation", "--pg", module_pg.dsn, "-c", "4", "-d", "60s",
         "--record", str(rec), "--export", str(md)]
    )  # fmt: skip
    try:
        wait_ticks(proc, 2)
        sent = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"stopped: signal {sig.name}" in out
    assert "Traceback" not in err
    assert took < 10, f"{took:.1f} s to stop"
    lines = read_lines(rec)
    assert lines[-1]["type"] == "end"
    assert lines[-1]["reason"] == f"signal {sig.name}"
    assert md.exists() and "## Steps" in md.read_text()
    run_id = lines[0]["run_id"]
    schemas, sessions = asyncio.run(leftovers(module_pg.dsn, run_id))
    assert schemas == [] and sessions == 0


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _procs_on(port: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if re.search(rf"(-p |--port |:){port}\b", cmd):
            found.append(p)
    return found


def both_scenario(tmp_path: Path) -> Path:
    """A scenario file needing both embedded servers, for runs in a subprocess."""
    scen = tmp_path / "both.py"
    scen.write_text(
        "from app.scenario import Scenario\n"
        "class Both(Scenario):\n"
        "    name = 'both'\n"
        "    needs = ('postgres', 'redis')\n"
        "    async def run(self, ctx):\n"
        "        await ctx.conn.fetchval('SELECT 1')\n"
        "        await ctx.redis.set(ctx.key('k'), 1)\n"
    )
    return scen


@pytest.mark.parametrize("how", ["clean", "SIGTERM"])
def test_embedded_servers_leave_no_process(tmp_path: Path, how: str) -> None:
    scen = both_scenario(tmp_path)
    proc = start_run(["-s", str(scen), "-c", "2", "-d", "2s" if how == "clean" else "60s"])
    try:
        wait_ticks(proc, 1, timeout=60)
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    ports = [int(m) for m in re.findall(r"listening on 127\.0\.0\.1:(\d+)", err)]
    assert len(ports) == 2, err
    deadline = time.monotonic() + 5
    while any(_port_open(p) or _procs_on(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in ports:
        assert not _port_open(p), f"port {p} still open"
        assert not _procs_on(p), [x.cmdline() for x in _procs_on(p)]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/dev/full", "No space left on device"),
        ("/nonexistent-dir/x.jsonl", "does not exist"),
        ("/proc/loadtop.jsonl", "cannot be written"),
        ("/tmp", "is a directory"),
    ],
)
def test_unwritable_recording_is_exit_2_at_start(path: str, needle: str) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [*CLI, "run", "--headless", "-s", "pg-select", "-d", "1s", "--record", path],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert needle in err and "--record" in err, err
    assert len(err.splitlines()) == 1, err  # before any embedded server started
    assert "Traceback" not in err
    assert time.monotonic() - t0 < 10
    assert "ops/s" not in proc.stdout  # no load ran


def _descendants_and_servers(proc: subprocess.Popen) -> set[int]:
    """The CLI's process tree, plus the servers it is connected to on loopback
    (pg_ctl's postmaster is re-parented once pg_ctl exits)."""
    pids: set[int] = set()
    ports: set[int] = set()
    try:
        me = psutil.Process(proc.pid)
        pids |= {c.pid for c in me.children(recursive=True)}
        ports = {c.raddr.port for c in me.net_connections("tcp") if c.raddr}
    except psutil.NoSuchProcess:
        pass
    for port in ports:
        pids |= {p.pid for p in _procs_on(port)}
    return pids


@pytest.mark.parametrize("how", ["clean", "SIGTERM"])
def test_demo_leaves_no_process(how: str) -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--headless", "-d", "3s" if how == "clean" else "60s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True,
    )  # fmt: skip
    seen: set[int] = set()
    try:
        wait_ticks(proc, 1, timeout=90)
        seen = _descendants_and_servers(proc)
        assert len(seen) >= 3, "postgres, valkey and the demo service"
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    deadline = time.monotonic() + 5
    alive = seen
    while alive and time.monotonic() < deadline:
        alive = {p for p in seen if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}  # fmt: skip
        time.sleep(0.1)
    assert not alive, [psutil.Process(p).cmdline() for p in alive if psutil.pid_exists(p)]


def test_sigkill_leaves_no_embedded_server_behind(tmp_path: Path) -> None:
    """Even a SIGKILL, which loadtop cannot catch, leaves no PostgreSQL or
    Valkey running: each embedded server has a watchdog that stops it when
    loadtop's end of its pipe closes without a goodbye."""
    scen = both_scenario(tmp_path)
    proc = start_run(["-s", str(scen), "-c", "2", "-d", "60s"])
    try:
        wait_ticks(proc, 1, timeout=60)
        servers = _descendants_and_servers(proc)
        proc.send_signal(signal.SIGKILL)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ports = [int(m) for m in re.findall(r"listening on 127\.0\.0\.1:(\d+)", err)]
    assert len(ports) == 2, err
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [p for p in ports if _port_open(p) or _procs_on(p)]
        alive = {p for p in servers if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}  # fmt: skip
        if not left and not alive:
            break
        time.sleep(0.2)
    assert not left, f"servers still listening on {left}"
    assert not alive, [psutil.Process(p).cmdline() for p in alive if psutil.pid_exists(p)]
