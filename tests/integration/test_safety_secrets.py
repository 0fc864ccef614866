"""No secret leaves: a run made with known secrets — a PostgreSQL password
(real scram-sha-256 auth on our own server), a Redis requirepass, secret-looking
`-p` values, and a scenario whose errors echo a token — and every output of it
(stdout, stderr, the recording, the exported report, `loadtop report` in
Markdown and JSON, the error for a wrong password) is grepped for them.
Client-certificate files for the Kubernetes API are 0600 in a 0700 directory
and removed at close."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app.embedded import EmbeddedRedis
from tests.helpers import require_password

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = [sys.executable, "-m", "app.cli"]
PG_PW = "Pg-S3cret-xyzzy"
REDIS_PW = "Rd-S3cret-plugh"
TOKEN = "Tk-S3cret-frobozz"
PARAM_PW = "Pm-S3cret-grue"
WRONG_PW = "Wr0ng-S3cret-zork"
SECRETS = [PG_PW, REDIS_PW, TOKEN, PARAM_PW, WRONG_PW]

SCENARIO = """
from app.scenario import Scenario

class Leaky(Scenario):
    name = "leaky"
    needs = ("postgres", "redis")

    async def setup(self, ctx):
        await ctx.conn.execute(f'CREATE TABLE "{ctx.prefix}".t (id int)')

    async def run(self, ctx):
        await ctx.conn.execute(f'INSERT INTO "{ctx.prefix}".t VALUES (1)')
        await ctx.redis.set(ctx.key("k"), 1)
        if ctx.rng.random() < 0.2:
            tok = ctx.params["api_token"]
            # what a client library's error often looks like: the URL, query and all
            raise RuntimeError(f"GET https://api.example/v1?token={tok} failed; auth={tok}")

    async def verify(self, ctx):
        return [f"token {ctx.params['api_token']} should never show"]
"""


@pytest.fixture
def secured_pg(own_pg):
    """own_pg with a role that must log in with a password (scram-sha-256)."""

    require_password(own_pg, "lt_user", PG_PW, superuser=True)
    yield f"postgresql://lt_user:{PG_PW}@127.0.0.1:{own_pg.port}/postgres", own_pg


@pytest.fixture
def secured_redis():
    with EmbeddedRedis(requirepass=REDIS_PW) as r:
        yield f"redis://:{REDIS_PW}@127.0.0.1:{r.port}/0", r


def assert_clean(name: str, text: str) -> None:
    for s in SECRETS:
        assert s not in text, f"{name} contains the secret {s!r}: ...{text[max(0, text.find(s) - 200):text.find(s) + 50]}"  # fmt: skip


def test_no_secret_in_any_output(secured_pg, secured_redis, tmp_path: Path) -> None:
    pg_url, _pg = secured_pg
    redis_url, _ = secured_redis
    # the password really is needed: without it the server refuses
    wrong = pg_url.replace(PG_PW, WRONG_PW)
    scen = tmp_path / "leaky.py"
    scen.write_text(SCENARIO)
    rec, md = tmp_path / "run.jsonl", tmp_path / "run.md"
    env = {**os.environ, "LOADTOP_REDIS_URL": redis_url}
    proc = subprocess.run(
        [*CLI, "run", "--headless", "-s", str(scen), "--pg", pg_url, "-c", "3", "-d", "3s",
         "-p", f"api_token={TOKEN}", "-p", f"password={PARAM_PW}",
         "--abort-on", "p99>10s", "--record", str(rec), "--export", str(md)],
        capture_output=True, text=True, timeout=90, env=env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # the verify() violation fails the run
    assert "ops/s" in proc.stdout
    outputs = {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "recording": rec.read_text(),
        "export": md.read_text(),
        "export chart": md.with_suffix(".svg").read_text(),
    }
    # the run did hit the leaky error paths
    assert "RuntimeError" in outputs["recording"]
    assert "***" in outputs["recording"]
    for args in (["report", str(rec)], ["report", str(rec), "--json"]):
        r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        outputs[" ".join(args[:1] + args[2:])] = r.stdout + r.stderr
    # wrong passwords: PostgreSQL and Redis, the error says so without the secret
    bad = subprocess.run(
        [*CLI, "run", "--headless", "-s", str(scen), "--pg", wrong, "--redis", redis_url,
         "-d", "1s"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "rejected the password" in bad.stderr, bad.stderr
    outputs["wrong pg password"] = bad.stdout + bad.stderr
    bad = subprocess.run(
        [*CLI, "run", "--headless", "-s", str(scen), "--pg", pg_url,
         "--redis", redis_url.replace(REDIS_PW, WRONG_PW), "-d", "1s"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "credentials" in bad.stderr, bad.stderr
    outputs["wrong redis password"] = bad.stdout + bad.stderr
    # a malformed target with a password in it
    bad = subprocess.run(
        [*CLI, "run", "--headless", "-s", str(scen),
         "--pg", f"postgresql://lt_user:{PG_PW}@127.0.0.1:99999/x", "-d", "1s"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    outputs["malformed dsn"] = bad.stdout + bad.stderr
    for name, text in outputs.items():
        assert "Traceback" not in text, (name, text[-2000:])
        assert_clean(name, text)


def test_client_certificate_files_are_private_and_removed(tmp_path: Path) -> None:
    from app.probes.kube import KubeClient, KubeConfig

    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "1", "-subj", "/CN=loadtop-test"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cfg = KubeConfig(
        server="https://127.0.0.1:1", insecure=True,
        cert_data=crt.read_bytes(), key_data=key.read_bytes(),
    )  # fmt: skip
    client = KubeClient(cfg)
    client._ssl_context(None)
    tmp = client._tmp
    assert tmp is not None and os.path.isdir(tmp)
    assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o700
    files = os.listdir(tmp)
    assert files, "no credential file written"
    for f in files:
        assert stat.S_IMODE(os.stat(os.path.join(tmp, f)).st_mode) == 0o600, f
    asyncio.run(client.close())
    assert not os.path.exists(tmp), "credential files left after close"
