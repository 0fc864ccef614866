"""A SIGKILL at any moment of an embedded server's start-up leaves no process
and no directory behind: the watchdog owns the server's directory from before
it exists, and kills whatever names it when loadtop dies without a goodbye.

Each case starts the servers in a child process with its own TMPDIR, waits for
a phase of start-up to show on disk (the directory made, initdb half-way, the
postmaster starting, Valkey's config written, both servers up), SIGKILLs the
child right then, and checks the machine: no process names that TMPDIR, and
TMPDIR holds nothing of ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHILD = r"""
import sys, time
from app.embedded import EmbeddedPostgres, EmbeddedRedis
order = sys.argv[1]
servers = [EmbeddedRedis(), EmbeddedPostgres()] if order == "redis-first" else [EmbeddedPostgres(), EmbeddedRedis()]
for s in servers:
    s.start()
print("ready", flush=True)
time.sleep(120)
"""


def _procs_naming(text: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:  # valkey-server retitles itself: its working directory gives it away
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if text in cmd or text in cwd:
            found.append((int(name), cmd))
    return found


def _glob(tmp: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(tmp.glob(pattern))


PHASES: dict[str, tuple[str, Callable[[Path], Callable[[], bool]]]] = {
    "pg directory made": ("pg-first", lambda t: _glob(t, "loadtop-pg-*")),
    "initdb half-way": ("pg-first", lambda t: _glob(t, "loadtop-pg-*/data/PG_VERSION")),
    "postmaster starting": ("pg-first", lambda t: _glob(t, "loadtop-pg-*/data/postmaster.pid")),
    "valkey starting": ("redis-first", lambda t: _glob(t, "loadtop-valkey-*/valkey.conf")),
    "both up": ("pg-first", lambda t: lambda: False),  # killed on "ready"
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigkill_during_start_up_leaves_nothing(tmp_path: Path, phase: str) -> None:
    order, reached = PHASES[phase]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, order],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        hit = reached(tmp)
        deadline = time.monotonic() + 90
        if phase == "both up":
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        else:
            while not hit() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert hit(), f"start-up never reached: {phase}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        left_procs: list[tuple[int, str]] = []
        left_files: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left_procs = _procs_naming(str(tmp))
            left_files = sorted(p.name for p in tmp.iterdir())
            if not left_procs and not left_files:
                break
            time.sleep(0.2)
        assert not left_procs, f"still running after a SIGKILL at '{phase}': {left_procs}"
        assert not left_files, f"left in TMPDIR after a SIGKILL at '{phase}': {left_files}"
    finally:
        if proc.poll() is None:
            proc.kill()
