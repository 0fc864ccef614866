"""`loadtop --version`, and the version in the recording and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from app.session.recording import Recorder, read_recording
from app.session.report import render_markdown
from app.tick import ScenarioWindow, Tick, new_histogram


def test_version_flag_prints_the_installed_version() -> None:
    p = subprocess.run([sys.executable, "-m", "app.cli", "--version"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"loadtop {version('loadtop')}"


def test_recording_and_report_name_the_version(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    rec = Recorder(path, {"run_id": "v1", "started": 1_700_000_000.0, "scenarios": []})
    h = new_histogram()
    h.record_value(1500)
    win = ScenarioWindow(name="s", concurrency=1, target=1, started=1, ok=1, failed=0,
                         errors={}, hist=h)  # fmt: skip
    rec.write_tick(Tick(index=0, t=1_700_000_001.0, elapsed=1.0, interval=1.0, mode="workers",
                        target_concurrency=1, concurrency=1, scenarios=(win,)))  # fmt: skip
    rec.close({"reason": "duration", "exit_code": 0})
    header = json.loads(path.read_text().splitlines()[0])
    assert header["loadtop_version"] == version("loadtop")
    md = render_markdown(read_recording(path))
    assert f"Recorded by loadtop {version('loadtop')}" in md
    # a recording from before the field: the version comes from "versions", or is unknown
    old = dict(header)
    del old["loadtop_version"]
    old["versions"] = {}
    lines = path.read_text().splitlines()
    path.write_text("\n".join([json.dumps(old), *lines[1:]]) + "\n")
    assert "Recorded by loadtop an unknown version" in render_markdown(read_recording(path))
