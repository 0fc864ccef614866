"""`--web`: the read-only console in a real browser (Debian's chromium driven
by Playwright), over a real run; a wrong token is refused; nothing a viewer
types reaches the load."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from app.ui.web import is_loopback, needs_token

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]  # fmt: skip
DOCS = Path(__file__).resolve().parents[2] / "docs"

# what the page receives over its websocket (the console's output), as text:
# the terminal draws on a canvas, so the DOM holds no text to wait for
HOOK = """
window.__loadtop = "";
const _WS = window.WebSocket;
window.WebSocket = function (url, protocols) {
  const ws = protocols === undefined ? new _WS(url) : new _WS(url, protocols);
  ws.addEventListener("message", (e) => {
    window.__loadtop += typeof e.data === "string" ? e.data
      : new TextDecoder().decode(new Uint8Array(e.data));
  });
  return ws;
};
window.WebSocket.prototype = _WS.prototype;
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str, cookie: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_token_rules() -> None:
    assert needs_token("127.0.0.1", None) is None and is_loopback("::1")
    generated = needs_token("0.0.0.0", None)
    assert generated and len(generated) >= 20 and generated != needs_token("0.0.0.0", None)
    assert needs_token("0.0.0.0", "given-token-1") == "given-token-1"


@pytest.mark.parametrize(
    ("extra", "says"),
    [(["--web-token", "short"], "at least 8"), (["--web", "127.0.0.1:http"], "not HOST:PORT"),
     (["--web-token", "abcdefghij"], "--web-token without --web")],
)  # fmt: skip
def test_bad_web_flags_are_one_line_exit_2(extra: list[str], says: str) -> None:
    args = [sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select"]
    if "--web" not in extra and "without" not in says:
        args += ["--web", "127.0.0.1:0"]
    p = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and says in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def _playwright():
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (uv sync installs the dev group)")
    return sync_playwright


def _viewers() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if "replay --follow" in cmd and "loadtop-web-" in cmd:
            out.append(p)
    return out


def test_web_view_in_a_browser_read_only(pg_dsn: str, tmp_path: Path) -> None:
    """The screenshot goes to docs/web-view.png (the README's) with
    LOADTOP_UPDATE_DOCS=1, else to a temporary directory."""
    sync_playwright = _playwright()
    shot = (DOCS if os.environ.get("LOADTOP_UPDATE_DOCS") == "1" else tmp_path) / "web-view.png"
    port, token = _free_port(), "test-token-2f9c1a"
    run = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select", "--pg", pg_dsn,
         "-c", "2", "-d", "25s", "--no-probes", "--web", f"127.0.0.1:{port}",
         "--web-token", token],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        line = run.stderr.readline()
        while line and "web view (read-only)" not in line:
            line = run.stderr.readline()
        assert f"web view (read-only) on {base}/?token={token}" in line, line
        # the token is checked on the page, its static files and its websocket
        assert _status(f"{base}/?token=wrong-token-000") == 403
        assert _status(f"{base}/") == 403
        assert _status(f"{base}/ws?width=80&height=24") == 403
        assert _status(f"{base}/static/js/textual.js",
                       cookie="loadtop_web_token=wrong-token-000") == 403  # fmt: skip
        assert _status(f"{base}/static/js/textual.js", cookie=f"loadtop_web_token={token}") == 200

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 860})
                page.add_init_script(HOOK)
                refused = page.goto(f"{base}/?token=wrong-token-000", wait_until="commit")
                assert refused is not None and refused.status == 403
                page.goto(f"{base}/?token={token}", wait_until="commit")
                # the console's header: the follow status, live, with this viewer counted
                page.wait_for_function(
                    "() => /FOLLOW/.test(window.__loadtop) && /live/.test(window.__loadtop)"
                    " && /1 watching/.test(window.__loadtop)",
                    timeout=60_000,
                )
                page.wait_for_timeout(2500)  # a few more ticks drawn
                text = page.evaluate("window.__loadtop")
                assert "pg-select" in text
                # a viewer's keys: the live console's load keys do nothing here
                for key in ("p", "+", "]", "x", "Space", "End"):
                    page.keyboard.press(key)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(shot))
                # while the page is open (closing it ends its process): the viewer
                # follows the private temporary recording
                viewers = _viewers()
                assert viewers, "the viewer's replay --follow process"
                m = re.search(r"--follow (\S+)", " ".join(viewers[0].cmdline()))
                assert m, viewers[0].cmdline()
                followed = Path(m[1])
            finally:
                browser.close()
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    except BaseException:
        if run.poll() is not None:  # say why the run is gone
            print(
                f"the run ended with {run.returncode}: {run.stderr.read()[-2000:]}"
                f" {run.stdout.read()[-2000:] if run.stdout else ''}"
            )
        raise
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err
    # the temporary recording is gone (and not named as kept), and so are the
    # viewers' processes
    assert "recording:" not in out, out
    assert followed.name.endswith(".jsonl") and not followed.exists()
    deadline = time.monotonic() + 10
    while _viewers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _viewers()
    assert shot.stat().st_size > 10_000


def test_viewer_keys_never_reach_the_load(pg_dsn: str, tmp_path: Path) -> None:
    """The same, recorded: every control event in the recording is the run's
    own (start, stop), none from a key."""
    sync_playwright = _playwright()
    port = _free_port()
    rec = tmp_path / "watched.jsonl"
    run = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select", "--pg", pg_dsn,
         "-c", "2", "-d", "12s", "--no-probes", "--record", str(rec),
         "--web", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = run.stderr.readline()
        while line and "web view (read-only)" not in line:
            line = run.stderr.readline()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page()
                page.add_init_script(HOOK)
                page.goto(f"http://127.0.0.1:{port}/", wait_until="commit")
                page.wait_for_function("() => /live/.test(window.__loadtop)", timeout=60_000)
                for key in ("p", "+", "+", "]", "-", "x", "s", "Control+c", "q"):
                    page.keyboard.press(key)
                page.wait_for_timeout(1000)
            finally:
                browser.close()
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    assert lines[-1]["type"] == "end" and lines[-1]["reason"] == "duration"
    sources = {e["source"] for x in lines if x["type"] == "tick" for e in x["events"]}
    assert "key" not in sources, sources
    ticks = [x for x in lines if x["type"] == "tick"]
    assert all(x["target_concurrency"] == 2 for x in ticks[:-1])


def test_web_needs_a_recording_it_can_follow() -> None:
    p = subprocess.run([sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select",
                        "--record", "/dev/null", "--web", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2 and "not a regular file" in p.stderr, p.stderr


def test_off_loopback_a_token_is_generated_printed_and_checked(tmp_path: Path) -> None:
    from app.ui.web import WebView, web_summary

    view = WebView(tmp_path / "r.jsonl", "0.0.0.0", 0).start()
    try:
        lines = web_summary(view)
        assert view.generated and view.token and any(view.token in x for x in lines[1:])
        assert (
            lines[0] == f"web view (read-only) on http://127.0.0.1:{view.port}/?token={view.token}"
        )
        base = f"http://127.0.0.1:{view.port}"
        assert _status(f"{base}/") == 403
        assert _status(f"{base}/?token={view.token[:-1]}") == 403
        assert _status(f"{base}/ws") == 403
        assert _status(f"{base}/?token={view.token}") == 200
        assert (tmp_path / "r.jsonl.viewers").read_text().strip() == "0"
    finally:
        view.close()
    assert not (tmp_path / "r.jsonl.viewers").exists()


def test_a_private_recording_is_not_named_as_kept(pg_dsn: str) -> None:
    """--web without --record follows a temporary recording removed at exit: the
    outcome must not point the user at a file that is gone."""
    p = subprocess.run([sys.executable, "-m", "app.cli", "run", "--headless", "-s", "pg-select",
                        "--pg", pg_dsn, "-d", "2s", "--no-probes", "--web", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=90)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "recording to a temporary file, removed at exit" in p.stderr
    assert "stopped: duration" in p.stdout and "recording:" not in p.stdout, p.stdout
