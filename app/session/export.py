"""The one report writer: render a recording (Markdown or JSON), mask every
secret, write it. Used by `loadtop report -o`, `--export` at the end of a
run, watch or demo, and the console's `e` key (live and replay)."""

from __future__ import annotations

from collections.abc import Callable

from app.session.recording import Recording
from app.session.report import render_json, render_markdown
from app.targets import Redactor


def render_report(
    rec: Recording, *, json: bool = False, redactor: Callable[[str], str] | None = None
) -> str:
    """The report's text, masked by `redactor` (default: the generic masks)."""
    text = render_json(rec) if json else render_markdown(rec)
    return (redactor or Redactor())(text)


def write_report(
    rec: Recording,
    path: str,
    *,
    json: bool = False,
    redactor: Callable[[str], str] | None = None,
) -> str:
    """Render, mask and write the report to `path`; returns `path`. An OSError
    (a directory, no permission, a full disk) is the caller's to word."""
    text = render_report(rec, json=json, redactor=redactor)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
