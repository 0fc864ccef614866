"""Bad input, broadly: a table of bad inputs across the CLI, loadtop.toml,
scenario files, recordings (truncated, corrupted, from a future version) and
target answers (a wrong password, a database that does not exist, a server
that is not Redis on the Redis port, an HTTP target that resets connections,
...). Each one gets exactly one line on stderr that names the problem and
says what to do, exit code 2, and no traceback."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.helpers import require_password

pytestmark = [pytest.mark.integration]

# words that say what to do about it
HINT = re.compile(
    r"\b(use|give|fix|check|choose|create|drop|upgrade|see|run|is it running|valid|"
    r"subclass|implement|free|set|remove|define|install|add|restore|must|at least|"
    r"between|try)\b|e\.g\.|\?",
    re.I,
)
# the scenario's own error, in the user's own file: the message is the fix
# (app/scenario.py's "is not a .py file" is self-explanatory too)
NO_HINT_NEEDED = {"scenario import fails", "scenario not python", "scenario file is a directory"}


class _Server:
    """A TCP server on 127.0.0.1 that answers every connection with `behave`."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.behave = behave
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                self.behave(c)
            except OSError:
                pass

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def _garbage(c: socket.socket) -> None:
    c.settimeout(1)
    try:
        c.recv(4096)
    except OSError:
        pass
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>not redis</html>\r\n")
    c.close()


def _reset(c: socket.socket) -> None:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST


@dataclass
class Env:
    tmp: Path
    pg: str  # a reachable PostgreSQL (trust)
    pw_pg_port: int  # a PostgreSQL that wants a password for role lt_pw
    garbage_port: int
    reset_port: int
    redis_pw_url: str
    closed_port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory, pg_dsn: str) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("bad")
    with EmbeddedPostgres() as pw_pg, EmbeddedRedis(requirepass="right-pass-123") as r:
        require_password(pw_pg, "lt_pw", "right-pass-123")
        garbage, reset = _Server(_garbage), _Server(_reset)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
        s.close()
        try:
            yield Env(tmp, pg_dsn, pw_pg.port, garbage.port, reset.port, r.url, closed)
        finally:
            garbage.close()
            reset.close()


def write(env: Env, name: str, text: str | bytes) -> str:
    p = env.tmp / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def toml(env: Env, name: str, text: str) -> list[str]:
    return ["--config", write(env, name, text)]


RUN = ["run", "--headless", "-d", "1s"]

HEADER = {"type": "header", "version": 1, "run_id": "x", "started": 1.0, "scenarios": []}


def rec(env: Env, name: str, lines: list[Any], raw: str | None = None) -> str:
    text = raw if raw is not None else "\n".join(json.dumps(x) for x in lines) + "\n"
    return write(env, name, text)


def scen(env: Env, name: str, body: str) -> str:
    return write(env, name, "from app.scenario import Scenario\n" + body)


# (id, argv builder, what the line must say)
CASES: list[tuple[str, Callable[[Env], list[str]], str]] = [
    # ---- the command line ----------------------------------------------------
    ("cli concurrency not a number", lambda e: [*RUN, "-s", "pg-select", "-c", "many"],
     "not a whole number"),
    ("cli negative concurrency", lambda e: [*RUN, "-s", "pg-select", "--concurrency=-5"],
     "at least 0"),
    ("cli interval too short", lambda e: [*RUN, "-s", "pg-select", "--interval", "5ms"],
     "between 10ms and 60s"),
    ("cli zero step seconds", lambda e: [*RUN, "-s", "pg-select", "--steps", "1,2",
                                         "--step-seconds", "0"], "must be positive"),
    ("cli zero duration", lambda e: ["run", "--headless", "-s", "pg-select", "-d", "0s"],
     "must be positive"),
    ("cli zero rate", lambda e: [*RUN, "-s", "pg-select", "--rate", "0/s"], "not a rate"),
    ("cli unknown metric", lambda e: [*RUN, "-s", "pg-select", "--abort-on", "latency>5"],
     "not a threshold"),
    ("cli zero weight", lambda e: [*RUN, "-s", "pg-select=0"], "weight must be positive"),
    ("cli scenario twice", lambda e: [*RUN, "-s", "pg-select", "-s", "pg-select"],
     "given twice"),
    ("cli param without key", lambda e: [*RUN, "-s", "pg-select", "-p", "=x"], "key=value"),
    ("cli broken ipv6 dsn", lambda e: [*RUN, "-s", "pg-select", "--pg", "postgresql://[::1/x"],
     "not a valid DSN"),
    ("cli http not http", lambda e: [*RUN, "-s", "pg-select", "--http", "ftp://host/x"],
     "not an HTTP URL"),
    ("cli missing config", lambda e: [*RUN, "-s", "pg-select", "--config", "/nonexistent.toml"],
     "does not exist"),
    ("cli watch without target", lambda e: ["watch", "--headless", "-d", "1s"],
     "watch needs a target"),
    ("cli report output unwritable", lambda e: ["report", rec(e, "ok.jsonl", [HEADER]), "-o",
                                                "/nonexistent/dir/r.md"], "cannot be written"),
    ("cli unknown -p mode", lambda e: [*RUN, "-s", "stock-reservation", "--pg", e.pg,
                                       "-p", "mode=weird"], "use safe or unsafe"),
    ("cli -p not an int", lambda e: [*RUN, "-s", "stock-reservation", "--pg", e.pg,
                                     "-p", "products=lots"], "not a valid int"),
    ("cli readonly with a writer", lambda e: [*RUN, "-s", "hot-counter", "--readonly"],
     "--readonly"),
    # ---- loadtop.toml --------------------------------------------------------
    ("toml syntax", lambda e: [*RUN, "-s", "pg-select", *toml(e, "a.toml", "pg = [unclosed\n")],
     "invalid TOML"),
    ("toml unknown key", lambda e: [*RUN, "-s", "pg-select", *toml(e, "b.toml", "colour = 1\n")],
     "unknown key 'colour'"),
    ("toml profile unknown key", lambda e: [*RUN, "-s", "pg-select", "--profile", "x",
                                            *toml(e, "c.toml", "[profile.x]\nspeed = 3\n")],
     "unknown key 'speed'"),
    ("toml missing profile", lambda e: [*RUN, "-s", "pg-select", "--profile", "prod",
                                        *toml(e, "d.toml", "[profile.staging]\n")],
     "no [profile.prod]"),
    ("toml concurrency not a number", lambda e: [*RUN, "-s", "pg-select",
                                                 *toml(e, "e.toml", 'concurrency = "many"\n')],
     "not a whole number"),
    ("toml detect not a table", lambda e: [*RUN, "-s", "pg-select",
                                           *toml(e, "f.toml", "detect = 5\n")],
     "must be a table"),
    ("toml unknown scenario", lambda e: [*RUN, *toml(e, "g.toml", 'scenario = "nope"\n')],
     "unknown scenario"),
    ("toml bad threshold", lambda e: [*RUN, "-s", "pg-select",
                                      *toml(e, "h.toml", 'abort_on = "p95>>1"\n')],
     "not a threshold"),
    ("toml not a pg dsn", lambda e: [*RUN, "-s", "pg-select",
                                     *toml(e, "i.toml", 'pg = "mysql://u@h/db"\n')],
     "not a PostgreSQL DSN"),
    # ---- scenario files --------------------------------------------------------
    ("scenario unknown target", lambda e: [*RUN, "-s", scen(e, "s1.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('kafka',)\n"
        "    async def run(self, ctx): pass\n"))], "unknown target 'kafka'"),
    ("scenario without run", lambda e: [*RUN, "-s", scen(e, "s2.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('postgres',)\n"))],
     "does not implement run()"),
    ("scenario without name", lambda e: [*RUN, "-s", scen(e, "s3.py", (
        "class K(Scenario):\n    async def run(self, ctx): pass\n"))],
     "defines no Scenario subclass"),
    ("scenario not python", lambda e: [*RUN, "-s", write(e, "s4.txt", "hello")],
     "not a .py file"),
    ("scenario import fails", lambda e: [*RUN, "-s", scen(e, "s5.py", (
        "import no_such_module_xyz\n"))], "ModuleNotFoundError"),
    ("scenario needs http, none given", lambda e: [*RUN, "-s", scen(e, "s6.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('http',)\n"
        "    async def run(self, ctx): pass\n"))], "needs http: give --http URL"),
    ("scenario setup raises", lambda e: [*RUN, "--pg", e.pg, "-s", scen(e, "s7.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('postgres',)\n"
        "    async def setup(self, ctx): raise KeyError('fixture')\n"
        "    async def run(self, ctx): pass\n"))], "setup failed"),
    ("scenario file is a directory", lambda e: [*RUN, "-s", str(e.tmp) + "/"],
     "scenario file"),
    # ---- recordings ------------------------------------------------------------
    ("recording empty", lambda e: ["report", write(e, "r1.jsonl", "")], "is empty"),
    ("recording not json", lambda e: ["report", write(e, "r2.jsonl", "hello world\n")],
     "not a loadtop recording"),
    ("recording no header", lambda e: ["report", rec(e, "r3.jsonl", [{"type": "tick"}])],
     "no header line"),
    ("recording future version", lambda e: ["report", rec(e, "r4.jsonl", [
        {**HEADER, "version": 99}])], "newer loadtop"),
    ("recording header without version", lambda e: ["report", rec(e, "r5.jsonl", [
        {k: v for k, v in HEADER.items() if k != "version"}])], "no version"),
    ("recording corrupted in the middle", lambda e: ["report", rec(e, "r6.jsonl", [], raw=(
        json.dumps(HEADER) + "\n{\"type\": \"tick\", garbage\n" + json.dumps(
            {"type": "end", "reason": "x"}) + "\n"))], "line 2 is corrupted"),
    ("recording header cut off", lambda e: ["report", write(e, "r7.jsonl",
                                                            json.dumps(HEADER)[:20])],
     "not a loadtop recording"),
    ("recording binary", lambda e: ["report", write(e, "r8.jsonl", b"\x89PNG\r\n\x1a\n\xff\xfe")],
     "not UTF-8"),
    ("recording is a directory", lambda e: ["report", str(e.tmp)], "is a directory"),
    ("replay corrupted", lambda e: ["replay", rec(e, "r9.jsonl", [{**HEADER, "version": 7}])],
     "newer loadtop"),
    ("recording unknown line type", lambda e: ["report", rec(e, "r10.jsonl", [], raw=(
        json.dumps(HEADER) + "\n" + json.dumps({"type": "weird"}) + "\n"
        + json.dumps({"type": "end"}) + "\n"))], "corrupted"),
    # ---- what the targets answer --------------------------------------------------
    ("pg wrong password", lambda e: [*RUN, "-s", "pg-select", "--pg",
                                     f"postgresql://lt_pw:wrong-pass@127.0.0.1:{e.pw_pg_port}/postgres"],
     "rejected the password"),
    ("pg database does not exist", lambda e: [*RUN, "-s", "pg-select", "--pg",
                                              e.pg.rsplit("/", 1)[0] + "/no_such_db_xyz"],
     "database 'no_such_db_xyz' does not exist"),
    ("pg port closed", lambda e: [*RUN, "-s", "pg-select", "--pg",
                                  f"postgresql://postgres@127.0.0.1:{e.closed_port}/x"],
     "connection refused"),
    ("pg port speaks garbage", lambda e: [*RUN, "-s", "pg-select", "--pg",
                                          f"postgresql://postgres@127.0.0.1:{e.garbage_port}/x"],
     "PostgreSQL"),
    ("pg port resets", lambda e: [*RUN, "-s", "pg-select", "--pg",
                                  f"postgresql://postgres@127.0.0.1:{e.reset_port}/x"],
     "PostgreSQL"),
    ("redis port speaks garbage", lambda e: [*RUN, "-s", scen(e, "rg.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('redis',)\n"
        "    async def run(self, ctx): pass\n")), "--redis",
        f"redis://127.0.0.1:{e.garbage_port}/0"], "does not speak the Redis protocol"),
    ("redis port closed", lambda e: [*RUN, "-s", scen(e, "rc.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('redis',)\n"
        "    async def run(self, ctx): pass\n")), "--redis",
        f"redis://127.0.0.1:{e.closed_port}/0"], "connection refused"),
    ("redis wrong password", lambda e: [*RUN, "-s", scen(e, "rp.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('redis',)\n"
        "    async def run(self, ctx): pass\n")), "--redis",
        e.redis_pw_url.replace("right-pass-123", "wrong-pass")], "rejected the credentials"),
    ("http target resets connections", lambda e: [*RUN, "-s", scen(e, "hr.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('http',)\n"
        "    async def run(self, ctx): pass\n")), "--http",
        f"http://127.0.0.1:{e.reset_port}"], "cannot reach the HTTP target"),
    ("http target closed", lambda e: [*RUN, "-s", scen(e, "hc.py", (
        "class K(Scenario):\n    name = 'k'\n    needs = ('http',)\n"
        "    async def run(self, ctx): pass\n")), "--http",
        f"http://127.0.0.1:{e.closed_port}"], "cannot reach the HTTP target"),
    ("watch wrong password", lambda e: ["watch", "--headless", "-d", "1s", "--pg",
                                        f"postgresql://lt_pw:wrong@127.0.0.1:{e.pw_pg_port}/postgres"],
     "password"),
]  # fmt: skip


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("name", "argv_of", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(env: Env, name: str, argv_of, needle: str, capsys, monkeypatch) -> None:
    monkeypatch.chdir(env.tmp)  # no stray ./loadtop.toml
    for var in [v for v in os.environ if v.startswith("LOADTOP_")]:
        monkeypatch.delenv(var)
    argv = argv_of(env)
    code = main(argv)
    out = capsys.readouterr()
    err = out.err.strip()
    assert code == 2, (argv, err, out.out[-500:])
    assert "Traceback" not in out.err + out.out
    assert len(err.splitlines()) == 1, err
    assert err.startswith("loadtop: "), err
    assert needle in err, err
    if name not in NO_HINT_NEEDED:
        assert HINT.search(err.split(":", 1)[1]), f"the line does not say what to do: {err}"
    assert "ops/s" not in out.out  # no load ran
