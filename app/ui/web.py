"""`--web HOST:PORT`: the console in a browser, read-only by construction.

Each browser that connects gets its own `loadtop replay --follow F.jsonl`
process over the live recording, served through textual-serve: the viewer's
keys reach a console that has no load controls and only reads a file, so
nothing a viewer does can change the load.

Off loopback a token is required (`--web-token`, or one generated and
printed); with a token every request is checked: the page (`?token=`, which
then sets an HttpOnly cookie), its static files and its websocket (the
cookie). The number of viewers connected is written to a small file the
follow consoles read for their header.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import shlex
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server

from app.frontends.streams import block_sigpipe

COOKIE = "loadtop_web_token"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def needs_token(host: str, token: str | None) -> str | None:
    """The token the web view checks: the one given, else one generated when
    the address is not loopback (None: loopback without a token, no check)."""
    if token:
        return token
    if is_loopback(host):
        return None
    return secrets.token_urlsafe(18)


def follow_command(recording: str | os.PathLike[str], viewers_file: str | None = None) -> str:
    """The shell command textual-serve starts for each browser."""
    cmd = [sys.executable, "-m", "app.cli", "replay", "--follow", str(recording)]
    if viewers_file:
        cmd += ["--viewers-file", viewers_file]
    return " ".join(shlex.quote(c) for c in cmd)


class _ReadOnlyServer(Server):
    """textual-serve's Server with a token check on every request, URLs
    taken from the request (so `0.0.0.0` works from another machine), a
    viewer count, and no banner or log on the operator's terminal."""

    def __init__(self, command: str, *, token: str | None, on_count: Callable[[int], None]) -> None:
        super().__init__(command, host="127.0.0.1", port=0, title="loadtop (read-only)")
        self.token = token
        self.on_count = on_count
        self.viewers = 0
        self.services: set[AppService] = set()

    def _allowed(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()

        @web.middleware
        async def check_token(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if not self._allowed(request):
                return web.Response(status=403, text="loadtop: wrong or missing token\n")
            return await handler(request)

        app.middlewares.append(check_token)
        return app

    async def on_startup(self, app: web.Application) -> None:
        pass  # textual-serve prints a banner; the terminal is the console's

    async def handle_index(self, request: web.Request) -> web.StreamResponse:  # type: ignore[override]
        base = f"{request.scheme}://{request.host}"
        ws = ("wss:" if request.scheme == "https" else "ws:") + base.split(":", 1)[1]
        context = {
            "font_size": 16,
            "app_websocket_url": f"{ws}/ws",
            "config": {"static": {"url": f"{base}/static/"}},
            "application": {"name": self.title},
        }
        response = aiohttp_jinja2.render_template("app_index.html", request, context)
        if self.token is not None and request.query.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        return response

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        self.viewers += 1
        self.on_count(self.viewers)
        try:
            return await self._serve_one(request)
        finally:
            self.viewers -= 1
            self.on_count(self.viewers)

    async def _serve_one(self, request: web.Request) -> web.WebSocketResponse:
        websocket = web.WebSocketResponse(heartbeat=15)
        width = _int(request.query.get("width"), 80)
        height = _int(request.query.get("height"), 24)
        service: AppService | None = None
        try:
            await websocket.prepare(request)

            async def close() -> None:
                await websocket.close()

            service = AppService(
                self.command, write_bytes=websocket.send_bytes, write_str=websocket.send_str,
                close=close, download_manager=self.download_manager,
            )  # fmt: skip
            self.services.add(service)
            await service.start(width, height)
            await self._process_messages(websocket, service)
        except asyncio.CancelledError:
            await websocket.close()
        except Exception as e:  # one viewer's failure is not the run's
            logging.getLogger("loadtop.web").debug("viewer failed: %s", e)
        finally:
            if service is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(service.stop(), 5)
                _kill(service)
                self.services.discard(service)
        return websocket


def _kill(service: AppService) -> None:
    proc = getattr(service, "_process", None)
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _int(v: str | None, default: int) -> int:
    try:
        return max(10, min(int(v or default), 1000))
    except ValueError:
        return default


class WebView:
    """The web view's server on its own thread and event loop. Binds in
    `start()` (an address in use raises OSError there); `close()` ends every
    viewer's process and the server."""

    def __init__(self, recording: str | os.PathLike[str], host: str, port: int,
                 token: str | None = None) -> None:  # fmt: skip
        self.recording = Path(recording)
        self.host = host
        self.token = needs_token(host, token)
        self.generated = self.token is not None and not token
        self.viewers_file = str(self.recording) + ".viewers"
        self._server = _ReadOnlyServer(
            follow_command(self.recording, self.viewers_file), token=self.token,
            on_count=self._write_count,
        )  # fmt: skip
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        for name in ("textual-serve", "aiohttp.access", "aiohttp.server", "aiohttp.web"):
            logging.getLogger(name).propagate = False
            logging.getLogger(name).addHandler(logging.NullHandler())

    @property
    def viewers(self) -> int:
        return self._server.viewers

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        tail = f"/?token={self.token}" if self.token else "/"
        return f"http://{host}:{self.port}{tail}"

    def _write_count(self, n: int) -> None:
        with contextlib.suppress(OSError):
            tmp = self.viewers_file + ".tmp"
            Path(tmp).write_text(f"{n}\n", encoding="utf-8")
            os.replace(tmp, self.viewers_file)

    def start(self) -> WebView:
        started = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            app = await self._server._make_app()
            self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])

        def main() -> None:
            block_sigpipe()  # a browser that leaves is not the run's stdout closing
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            except BaseException as e:
                failure.append(e)
                started.set()
                loop.close()
                return
            self._write_count(0)
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=main, name="loadtop-web", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    async def _shutdown(self) -> None:
        for service in list(self._server.services):
            _kill(service)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), 10)

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
        with contextlib.suppress(OSError):
            os.unlink(self.viewers_file)


def web_summary(view: WebView) -> list[str]:
    """The lines the operator is told at start."""
    lines = [f"web view (read-only) on {view.url}"]
    if view.generated:
        lines.append(f"web view token (generated; give --web-token to choose one): {view.token}")
    return lines


__all__ = ["WebView", "follow_command", "is_loopback", "needs_token", "web_summary"]
