"""Every secret, in every form an operator may type it, stays out of every
output. A matrix of passwords (with @, :, /, % and non-ASCII characters, each
written in the URL the way its driver reads it), a bearer token and an API key
in `-p headers`, and an API key in a query parameter; for each, a real run
against a PostgreSQL role and a Redis ACL user that need that password, with
worker processes, and a sweep of:

- the headless lines (stdout) and stderr,
- the recording, the exported report, `loadtop report` in Markdown and JSON,
- `loadtop watch` over the same targets (its lines and its recording),
- the error lines for a wrong password (PostgreSQL and Redis),
- the argv and the environment of every child process of `loadtop` (/proc).

Each secret carries a marker (`Lk…`); the marker appearing anywhere is a leak,
also a partial one (the tail after an unescaped @)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from app.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.helpers import require_password

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOADTOP = str(Path(sys.executable).with_name("loadtop"))


@dataclass(frozen=True)
class Form:
    name: str
    password: str  # as the server knows it
    in_url: str  # as written in the URL (what the driver decodes to `password`)
    marker: str  # unique to this form: must appear nowhere


FORMS = [
    # redis-py splits user:password at the last @, so an unescaped @ works there; for
    # PostgreSQL it is percent-encoded (asyncpg splits at the first @: refused, below)
    Form("at", "Zz@LkAt99x", "Zz%40LkAt99x", "LkAt99"),
    Form("colon", "pa:ss:LkCo77y", "pa:ss:LkCo77y", "LkCo77"),
    Form("slash", "pa/ss/LkSl55z", quote("pa/ss/LkSl55z", safe=""), "LkSl55"),
    Form("percent", "pa%ss%LkPc33w", quote("pa%ss%LkPc33w", safe=""), "LkPc33"),
    Form("non-ascii", "pässwörd-LkNa11v", "pässwörd-LkNa11v", "LkNa11"),
]
BEARER, API_KEY, QUERY_KEY, COOKIE = "LkBe22-tok.en", "LkAk44-key", "LkQk66-qk", "LkCk88-ck"
OTHER_MARKERS = ["LkBe22", "LkAk44", "LkQk66", "LkCk88"]


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"ok": True, "auth": self.headers.get("Authorization", "")}).encode()
        self.send_response(200 if not self.path.endswith("fail") else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Servers:
    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    http: str


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    import redis

    with EmbeddedPostgres() as pg, EmbeddedRedis() as r:
        for i, f in enumerate(FORMS):
            require_password(pg, f"lt_sweep{i}", f.password, superuser=True)
        client = redis.Redis(host="127.0.0.1", port=r.port)
        for i, f in enumerate(FORMS):
            client.execute_command("ACL", "SETUSER", f"u{i}", "on", f">{f.password}", "~*", "&*",
                                   "+@all")  # fmt: skip
        client.close()
        http = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        try:
            yield Servers(pg, r, f"http://127.0.0.1:{http.server_address[1]}")
        finally:
            http.shutdown()


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADTOP_")}
    env["XDG_STATE_HOME"] = str(tmp / "state")
    return env


def _watch_children(proc: subprocess.Popen, seen: dict[int, str]) -> None:
    """Until `proc` ends: the argv and environment of each of its descendants."""
    try:
        parent = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while proc.poll() is None:
        try:
            kids = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for k in kids:
            if k.pid in seen:
                continue
            try:
                argv = "\0".join(k.cmdline())
                environ = "\0".join(f"{a}={b}" for a, b in k.environ().items())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            seen[k.pid] = f"argv: {argv}\nenv: {environ}"
        time.sleep(0.1)


def _assert_clean(outputs: dict[str, str], markers: list[str]) -> None:
    for name, text in outputs.items():
        assert "Traceback" not in text, (name, text[-1500:])
        for m in markers:
            at = text.find(m)
            assert at < 0, f"{name} leaks {m!r}: ...{text[max(0, at - 150) : at + 60]}..."


@pytest.mark.parametrize("form", FORMS, ids=[f.name for f in FORMS])
def test_no_secret_form_reaches_any_output(servers: Servers, form: Form, tmp_path: Path) -> None:
    i = FORMS.index(form)
    pg_url = f"postgresql://lt_sweep{i}:{form.in_url}@127.0.0.1:{servers.pg.port}/postgres"
    redis_in_url = form.password if form.name == "at" else form.in_url  # unescaped @: redis-py
    redis_url = f"redis://u{i}:{redis_in_url}@127.0.0.1:{servers.redis.port}/0"
    rec, md = tmp_path / "run.jsonl", tmp_path / "run.md"
    headers = f"Authorization: Bearer {BEARER}|X-Api-Key: {API_KEY}|Cookie: session={COOKIE}"
    argv = [
        LOADTOP, "run", "--headless", "-s", "hot-counter", "-s", "redis-getset", "-s", "http",
        "--pg", pg_url, "--http", servers.http, "--processes", "2",
        "-c", "4", "-d", "3s", "--interval", "0.5s", "-p", f"headers={headers}",
        "-p", f"path=/x?api_key={QUERY_KEY}&n=1", "--record", str(rec), "--export", str(md),
    ]  # fmt: skip
    # the Redis URL through the environment: children must not inherit it either
    env = {**_env(tmp_path), "LOADTOP_REDIS_URL": redis_url}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path)  # fmt: skip
    children: dict[int, str] = {}
    watcher = threading.Thread(target=_watch_children, args=(proc, children))
    watcher.start()
    out, err = proc.communicate(timeout=120)
    watcher.join()
    assert proc.returncode == 0, err.decode()
    outputs = {"stdout": out.decode(), "stderr": err.decode()}
    assert "ops/s" in outputs["stdout"]
    assert children, "no child process was seen (worker processes were asked for)"
    outputs.update({f"child {pid}": text for pid, text in children.items()})
    outputs["recording"] = rec.read_text(encoding="utf-8")
    outputs["export"] = md.read_text(encoding="utf-8")
    # the masks are there, and the report's params row keeps its closing backtick
    assert "Authorization: ***|" in outputs["export"], outputs["export"]
    assert "Cookie: ***`" in outputs["export"] and "api_key=***&n=1`" in outputs["export"]
    for extra in ([], ["--json"]):
        r = subprocess.run([LOADTOP, "report", str(rec), *extra], capture_output=True,
                           timeout=60, env=_env(tmp_path))  # fmt: skip
        assert r.returncode == 0, r.stderr
        outputs[f"report {extra}"] = (r.stdout + r.stderr).decode()
    json.loads(outputs["report ['--json']"])  # still JSON after masking
    # `loadtop watch` over the same targets: its lines and recording
    wrec = tmp_path / "watch.jsonl"
    w = subprocess.run([LOADTOP, "watch", "--headless", "--pg", pg_url, "--redis", redis_url,
                        "-d", "2s", "--interval", "0.5s", "--record", str(wrec)],
                       capture_output=True, timeout=60, env=_env(tmp_path))  # fmt: skip
    assert w.returncode == 0, w.stderr
    assert b"watch" in w.stdout
    outputs["watch"] = (w.stdout + w.stderr).decode()
    outputs["watch recording"] = wrec.read_text(encoding="utf-8")
    # wrong passwords in the same form: the error line says so without the secret
    wrong_pg = pg_url.replace(form.in_url, form.in_url[::-1])
    wrong_redis = redis_url.replace(redis_in_url, redis_in_url[::-1])
    for name, extra_argv, needle in [
        ("wrong pg password", ["-s", "pg-select", "--pg", wrong_pg], "password"),
        ("wrong redis password", ["-s", "redis-getset", "--redis", wrong_redis], "credentials"),
        ("raw @ for postgres", ["-s", "pg-select", "--pg",
                                pg_url.replace(form.in_url, "Zz@LkAt99x")], "%40"),
    ]:  # fmt: skip
        r = subprocess.run([LOADTOP, "run", "--headless", "-d", "1s", *extra_argv],
                           capture_output=True, timeout=60, env=_env(tmp_path))  # fmt: skip
        text = (r.stdout + r.stderr).decode()
        assert r.returncode == 2 and needle in text and len(text.strip().splitlines()) == 1, text
        outputs[name] = text
    assert not (tmp_path / "state").exists(), "an internal error was logged"
    _assert_clean(outputs, [form.marker, *OTHER_MARKERS])
