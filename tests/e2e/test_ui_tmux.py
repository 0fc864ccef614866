"""End to end in a real terminal (tmux): `loadtop demo` with key presses, and
the console surviving a dropped SSH session (SIGHUP) or a SIGTERM with the
load stopped, teardown run, the recording closed and no process left."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOADTOP = str(Path(sys.executable).parent / "loadtop")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


class Tmux:
    def __init__(self, cwd: Path, width: int = 120, height: int = 40) -> None:
        self.name = f"loadtop-test-{uuid.uuid4().hex[:8]}"
        self.cwd = cwd
        self.size = (width, height)

    def start(self, command: str) -> None:
        w, h = self.size
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", str(w), "-y", str(h),
             "-c", str(self.cwd), command],
            check=True,
        )  # fmt: skip

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def keys(self, *keys: str) -> None:
        for k in keys:
            subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", k], check=True)
            time.sleep(0.15)

    def wait_for(self, cond: Callable[[str], object], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if cond(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"screen never matched within {timeout} s:\n{text}")

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)

    def alive(self) -> bool:
        r = subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True)
        return r.returncode == 0


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    yield t
    t.kill()


def procs_matching(text: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            # the tmux server and the pane's shell carry the command line too
            if cmd and text in " ".join(cmd) and not cmd[0].startswith(("tmux", "sh", "bash")):
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_gone(text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while procs_matching(text):
        if time.monotonic() > deadline:
            left = [" ".join(p.cmdline()) for p in procs_matching(text)]
            raise AssertionError(f"processes left behind: {left}")
        time.sleep(0.2)


WORKERS = re.compile(r"workers (\d+)/(\d+)")


def test_demo_plus_three_times_and_export(tmux: Tmux, tmp_path: Path) -> None:
    record = tmp_path / "demo.jsonl"
    done = tmp_path / "exit-code"
    tmux.start(
        f"uv run --project {ROOT} loadtop demo --record {record}; echo $? > {done}; sleep 60"
    )
    text = tmux.wait_for(lambda s: WORKERS.search(s) and "latency" in s, timeout=60)
    before = int(WORKERS.search(text)[2])  # type: ignore[index]
    tmux.keys("+", "+", "+")
    want = f"workers {before + 3}/{before + 3}"
    tmux.wait_for(lambda s: want in s, timeout=15)
    tmux.keys("e")
    tmux.wait_for(lambda s: "report written" in s, timeout=20)
    reports = list(tmp_path.glob("loadtop-*.md"))
    assert len(reports) == 1 and "stock-reservation" in reports[0].read_text()
    tmux.keys("q")
    deadline = time.monotonic() + 60
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert done.read_text().strip() == "0"
    end = json.loads(record.read_text().splitlines()[-1])
    assert end["type"] == "end" and end["reason"] == "quit"
    events = [json.loads(x) for x in record.read_text().splitlines()[1:-1]]
    kinds = [(e["kind"], e["source"], e["after"]) for t in events for e in t["events"]]
    assert ("concurrency", "key", before + 3) in kinds
    assert any(k == "export" for k, _, _ in kinds)
    # nothing left: the service, the embedded servers, the console
    wait_gone("loadtop-demo-service", timeout=20)
    wait_gone(str(record), timeout=20)


@pytest.mark.parametrize("how", ["SIGHUP", "SIGTERM"])
def test_dropped_session_stops_load_and_cleans_up(
    tmux: Tmux, tmp_path: Path, pg_dsn: str, how: str
) -> None:
    record = tmp_path / f"{how}.jsonl"
    tmux.start(
        f"exec {LOADTOP} run --scenario stock-reservation --pg {pg_dsn} -c 4 --record {record}"
    )
    tmux.wait_for(lambda s: "workers 4/4" in s, timeout=60)
    header = json.loads(record.read_text().splitlines()[0])
    (console,) = procs_matching(str(record))  # exec: the pane's process is loadtop itself
    if how == "SIGHUP":
        tmux.kill()  # what a dropped SSH session does to the terminal
    else:
        console.terminate()
    wait_gone(str(record), timeout=60)
    lines = record.read_text().splitlines()
    end = json.loads(lines[-1])
    assert end["type"] == "end", "the recording was not closed"
    assert how in end["reason"] or end["reason"] in ("quit", "stop")
    prefix = f"loadtop_{header['run_id']}_"

    async def leftovers() -> int:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1", prefix + "%"
            ) + await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'loadtop:%'"
                " AND application_name <> 'loadtop:probe'"
            )
        finally:
            await conn.close()

    assert asyncio.run(leftovers()) == 0
