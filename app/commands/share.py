"""What `run`, `watch` and `demo` share for the people watching a run:
`--metrics` (Prometheus) and `--web` (the console in a browser, read-only).

Both are outputs of the session's tick pipeline and never act on the load.
Their servers are bound before anything starts (a port in use is bad input,
exit 2), and stopped when the command returns."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from app.commands.base import fail

if TYPE_CHECKING:
    from app.session.runner import RunConfig


def add_team_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("watching together (read-only)")
    g.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9108)")  # fmt: skip
    g.add_argument("--web", metavar="HOST:PORT",
                   help="serve a read-only console in the browser (e.g. 127.0.0.1:8080)")  # fmt: skip
    g.add_argument("--web-token", metavar="TOKEN",
                   help="the token a browser must give (required off loopback; else one is generated)")  # fmt: skip


def latency_limits_ms(cfg: RunConfig) -> list[float]:
    """The --abort-on latency limits (ms), for the histogram's bounds."""
    return [t.limit for t in cfg.engine.thresholds if t.metric not in ("errors", "ops")]


@contextlib.contextmanager
def team_outputs(cfg: RunConfig, say: Callable[[str], None]) -> Iterator[Callable[[Any], None]]:
    """Bind the --metrics server now; yields `attach(session)`, which makes the
    session's ticks reach it. Everything stops on exit."""
    with contextlib.ExitStack() as stack:
        listeners: list[Callable[[Any], None]] = []
        if cfg.metrics is not None:
            from app.frontends.metrics import MetricsExporter, MetricsServer

            exporter = MetricsExporter(
                run_id=cfg.run_id, scenarios=[cls.name for cls, _ in cfg.scenarios],
                slo=cfg.slo, limits_ms=latency_limits_ms(cfg),
            )  # fmt: skip
            host, port = cfg.metrics
            try:
                server = MetricsServer(exporter, host, port)
            except OSError as e:
                fail(f"--metrics {host}:{port} cannot listen ({e.strerror or e}):"
                     " choose another port or address")  # fmt: skip
            stack.callback(server.close)
            server.start()
            say(f"metrics on {server.url}")
            listeners.append(lambda session: session.subscribe(exporter.on_tick))

        if cfg.web is not None:
            from app.ui.web import WebView, web_summary

            if not cfg.record:  # the viewers follow a recording: a private one when none asked
                import shutil
                import tempfile

                tmp = tempfile.mkdtemp(prefix="loadtop-web-")
                stack.callback(shutil.rmtree, tmp, True)
                cfg.record = os.path.join(tmp, f"loadtop-{cfg.run_id}.jsonl")
                cfg.record_temporary = True  # removed at exit: the outcome names no path
                say("web view: recording to a temporary file, removed at exit"
                    " (give --record F.jsonl to keep it)")  # fmt: skip
            elif os.path.exists(cfg.record) and not os.path.isfile(cfg.record):
                fail(f"--web follows the recording, and --record {cfg.record} is not a regular"
                     " file: give a file name, or leave --record out")  # fmt: skip
            host, port = cfg.web
            view = WebView(cfg.record, host, port, cfg.web_token)
            try:
                view.start()
            except OSError as e:
                fail(f"--web {host}:{port} cannot listen ({e.strerror or e}):"
                     " choose another port or address")  # fmt: skip
            stack.callback(view.close)
            for line in web_summary(view):
                say(line)

            def count(session: Any, view: Any = view) -> None:
                session.web_viewers = lambda: view.viewers

            listeners.append(count)

        def attach(session: Any) -> None:
            for listen in listeners:
                listen(session)

        yield attach
