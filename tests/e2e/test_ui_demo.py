"""The demo's parts: the HTTP service over real PostgreSQL and Redis, the
default mix, and `loadtop demo --headless` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.commands.demo import DEMO_PLAN, demo_config, demo_mix
from app.demo_service import SERVICE_NAME, DemoService
from app.scenario import builtin_scenarios

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_demo_service_endpoints(pg_dsn: str, redis_url: str) -> None:
    with DemoService(pg_dsn, redis_url) as svc:
        assert call(f"{svc.url}/health") == (200, {"ok": True})
        assert call(f"{svc.url}/")[0] == 200
        status, stock = call(f"{svc.url}/stock/1")
        assert status == 200 and stock["cached"] is False
        left = stock["quantity"]
        status, body = call(f"{svc.url}/reserve", {"product": 1, "k": 3})
        assert status == 200 and body == {"product": 1, "left": left - 3}
        status, body = call(f"{svc.url}/reserve", {"product": 1, "k": 10**15})
        assert status == 409 and body["error"] == "out of stock"
        assert call(f"{svc.url}/reserve", {"product": 999, "k": 1})[0] == 404
        assert call(f"{svc.url}/reserve", {"k": 1})[0] == 400
        assert call(f"{svc.url}/stock/abc")[0] == 400
        status, body = call(f"{svc.url}/stock/1")
        assert status == 200  # cached or fresh, never wrong about what was reserved
        assert body["quantity"] in (left, left - 3)
        assert call(f"{svc.url}/restock", {"product": 1, "units": 3})[1]["quantity"] == left
        pid = svc.pid
        assert pid is not None and psutil.pid_exists(pid)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_demo_mix_uses_what_this_build_has() -> None:
    found = builtin_scenarios()
    names = [cls.name for cls, _ in demo_mix()]
    assert names[0] == "stock-reservation"
    for n in ("redis-lock", "redis-queue"):
        assert (n in names) == (n in found)
    http = [n for n in names if n.startswith("http")]
    assert len(http) <= 1
    cfg = demo_config("postgresql://x@127.0.0.1/x", "redis://127.0.0.1:1/0", "http://127.0.0.1:9")
    assert cfg.engine.plan == DEMO_PLAN and not cfg.engine.end_with_plan
    assert cfg.engine.concurrency == DEMO_PLAN[0]


@pytest.mark.slow
def test_demo_headless_runs_and_leaves_nothing(tmp_path: Path) -> None:
    record = tmp_path / "demo.jsonl"
    report = tmp_path / "demo.md"
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--headless", "--duration", "6",
         "--record", str(record), "--export", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped: duration" in proc.stdout
    lines = record.read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "end"
    ticks = [json.loads(x) for x in lines[1:-1]]
    names = {s["name"] for t in ticks for s in t["scenarios"]}
    assert "stock-reservation" in names
    readings = {k for t in ticks for k in t["readings"]}
    assert {"postgres", "redis"} <= readings  # panes alive
    assert "stock-reservation" in report.read_text()
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if SERVICE_NAME in " ".join(p.info["cmdline"] or [])
    ]
    assert not left
