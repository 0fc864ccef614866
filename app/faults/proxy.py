"""A loopback TCP proxy in front of --http (`--http-via-proxy`), for the HTTP
faults: added latency (± jitter) on every client chunk (a request), a
percentage of connections dropped, or 503 to every request.

Plain asyncio streams on 127.0.0.1; it knows nothing of HTTP beyond writing a
503 response. Kernel-level faults (netem: loss, reordering, bandwidth) need
root on the target and are out of scope (see README, "Chaos under load").
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from urllib.parse import urlsplit, urlunsplit

RESPONSE_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 25\r\nConnection: close\r\n\r\nloadtop fault: http-503\n\n"
)


class FaultProxy:
    def __init__(self, upstream_url: str) -> None:
        u = urlsplit(upstream_url)
        if u.scheme != "http":
            raise ValueError("--http-via-proxy needs an http:// URL (TLS is not proxied)")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.upstream = f"{self.host}:{self.port}"
        self._url = u
        self.server: asyncio.Server | None = None
        self.listen_port = 0
        self.rng = random.Random(0)
        self._conns: set[asyncio.StreamWriter] = set()
        self.reset()

    def reset(self) -> None:
        self.latency_ms = 0
        self.jitter_ms = 0
        self.drop_pct = 0.0
        self.unavailable = False

    def set(self, *, latency_ms: int = 0, jitter_ms: int = 0, drop_pct: float = 0.0,
            unavailable: bool = False) -> None:  # fmt: skip
        self.latency_ms, self.jitter_ms = latency_ms, jitter_ms
        self.drop_pct, self.unavailable = drop_pct, unavailable
        if drop_pct or unavailable:  # existing keep-alive connections are hit too
            for w in list(self._conns):
                if unavailable or self.rng.random() * 100 < drop_pct:
                    w.close()

    @property
    def url(self) -> str:
        """The URL the load uses instead of --http."""
        netloc = f"127.0.0.1:{self.listen_port}"
        return urlunsplit(("http", netloc, self._url.path, self._url.query, ""))

    async def start(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.listen_port = self.server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._conns):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if self.drop_pct and self.rng.random() * 100 < self.drop_pct:
            cw.close()
            return
        if self.unavailable:
            with contextlib.suppress(Exception):
                await cr.read(65536)
                cw.write(RESPONSE_503)
                await cw.drain()
            cw.close()
            return
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        except (OSError, TimeoutError):
            cw.close()
            return
        self._conns.add(cw)
        try:
            await asyncio.gather(self._pipe(cr, uw, delay=True), self._pipe(ur, cw, delay=False))
        finally:
            self._conns.discard(cw)
            for w in (cw, uw):
                w.close()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *, delay: bool) -> None:
        try:
            while data := await r.read(65536):
                if delay:
                    if self.unavailable:
                        break
                    if self.latency_ms or self.jitter_ms:
                        j = self.rng.uniform(-self.jitter_ms, self.jitter_ms)
                        await asyncio.sleep(max(self.latency_ms + j, 0) / 1000.0)
                w.write(data)
                await w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()
