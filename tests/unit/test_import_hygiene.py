"""The core never imports the UI: every module outside `app.ui` imports in a
fresh interpreter without loading textual. (Not rich: httpx imports it for its
own command line whenever it is installed.)

One subprocess imports the modules one by one and names the first one after
whose import textual is loaded, so a failure points at the culprit.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import app

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    if "textual" in sys.modules:
        print(f"{name} loads textual")
        sys.exit(1)
print("clean", len(sys.argv) - 1)
"""


def headless_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(app.__path__, "app.")]
    return sorted(n for n in names if n != "app.ui" and not n.startswith("app.ui."))


def test_headless_modules_are_found() -> None:
    mods = headless_modules()
    # the walk itself must see the layers, or the hygiene test below proves nothing
    for expected in ("app.tick", "app.engine.engine", "app.session.runner", "app.cli"):
        assert expected in mods
    assert not any(m.startswith("app.ui") for m in mods)


def test_no_module_outside_ui_loads_textual() -> None:
    mods = headless_modules()
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *mods],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == f"clean {len(mods)}"


def test_the_probe_catches_a_textual_import() -> None:
    """The check can fail: the console module itself is caught."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "app.tick", "app.ui.main"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stdout.strip() == "app.ui.main loads textual"
