"""The console's `e` export (issue 13): with `--export` given, the report the
key writes goes next to it, not into the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.session.runner import RunConfig, Session


def test_key_export_goes_next_to_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "reports"
    out.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    session = Session(RunConfig(scenarios=[], export=str(out / "final.md")))
    # the live console calls this with no path unless it was given a directory
    path = Path(session.export_report())
    assert path.parent == out and path.name.startswith(f"loadtop-{session.cfg.run_id}-")
    assert path.exists() and "# " in path.read_text()
    assert list(cwd.iterdir()) == []
    assert not (out / "final.md").exists()  # the end-of-run report's name stays free


def test_key_export_without_export_stays_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = Session(RunConfig(scenarios=[])).export_report()
    assert Path(path).parent == Path(".") and (tmp_path / path).exists()
