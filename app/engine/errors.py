"""Error classes: what a failed operation is counted as.

A class is a short, stable string that starts with the thing an SRE searches
for: the SQLSTATE for Postgres ("40P01 deadlock"), "http 5xx" for a status,
or the transport failure ("connection refused", "timeout"). Detectors and the
report match on these prefixes. Cardinality is bounded: unknown exceptions are
classed by their type name only, never by message.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

SQLSTATE_NAMES = {
    "40P01": "deadlock",
    "40001": "serialization",
    "55P03": "lock not available",
    "53300": "too many connections",
    "53400": "configuration limit exceeded",
    "57014": "canceled",
    "25P03": "idle in transaction timeout",
    "57P01": "admin shutdown",
    "57P02": "crash shutdown",
    "57P03": "cannot connect now",
    "08006": "connection failure",
    "08001": "unable to connect",
    "08003": "connection does not exist",
    "23505": "unique violation",
    "23514": "check violation",
    "28P01": "invalid password",
    "28000": "invalid authorization",
    "3D000": "database does not exist",
    "42P01": "undefined table",
    "53200": "out of memory",
    "53100": "disk full",
}

CONNECTION_LOST = "connection lost"
CONNECTION_REFUSED = "connection refused"
TIMEOUT = "timeout"
# no connection to be had from a client-side pool within its timeout: the pool
# (or the server's connection limit behind it) is exhausted, not the target slow
PG_POOL_TIMEOUT = "pool timeout (postgres)"
REDIS_POOL_TIMEOUT = "pool timeout (redis)"


class OperationError(Exception):
    """Raise from a scenario's run() to count a failure under a class of your
    own: `raise OperationError("oversold", "stock went negative")`."""

    def __init__(self, error_class: str, message: str = "") -> None:
        super().__init__(message or error_class)
        self.error_class = error_class


def _sqlstate(exc: BaseException) -> str | None:
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def classify(exc: BaseException) -> str:
    if isinstance(exc, OperationError):
        return exc.error_class
    code = _sqlstate(exc)
    if code:
        if code.startswith("08") or code in ("57P01", "57P02", "57P03"):
            # the server went away or is restarting: what the SRE sees is an outage
            name = SQLSTATE_NAMES.get(code, "connection")
            return f"{code} {name}"
        return f"{code} {SQLSTATE_NAMES.get(code, type(exc).__name__)}"
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 100 <= status <= 599 and _is_http_error(exc):
        return http_class(status)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return PG_POOL_TIMEOUT if _raised_in(exc, "asyncpg", "pool.py") else TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    name = type(exc).__name__
    mod = type(exc).__module__ or ""
    if mod.startswith("redis"):
        return _redis_class(exc)
    if mod.startswith("asyncpg"):
        if name in ("ConnectionDoesNotExistError", "InterfaceError", "ConnectionFailureError"):
            return CONNECTION_LOST
        if name == "TooManyConnectionsError":
            return "53300 too many connections"
    if mod.startswith("aiohttp"):
        return _aiohttp_class(exc)
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return CONNECTION_LOST
    if isinstance(exc, socket.gaierror):
        return "dns error"
    if isinstance(exc, ssl.SSLError):
        return "tls error"
    if isinstance(exc, OSError):
        text = str(exc).lower()
        if "refused" in text or "connect call failed" in text:
            return CONNECTION_REFUSED
        return CONNECTION_LOST if "closed" in text or "reset" in text else f"os error {exc.errno}"
    return name


def _raised_in(exc: BaseException, package: str, module: str) -> bool:
    """Did `exc` (or what it was raised from: wait_for's TimeoutError carries the
    cancelled wait as its cause) pass through `package/module`? Only failures
    pay for this walk, and it is bounded."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 4:
        tb, depth = e.__traceback__, 0
        while tb is not None and depth < 64:
            fn = tb.tb_frame.f_code.co_filename
            if fn.endswith(module) and package in fn:
                return True
            tb, depth = tb.tb_next, depth + 1
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _is_http_error(exc: BaseException) -> bool:
    return "http" in (type(exc).__module__ or "") or "Response" in type(exc).__name__


def http_class(status: int) -> str:
    if status == 429:
        return "http 429"
    return f"http {status // 100}xx"


def _redis_class(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc)
    if name == "TimeoutError":
        return TIMEOUT
    if name == "ConnectionError":
        low = text.lower()
        if "no connection available" in low:  # BlockingConnectionPool's timeout
            return REDIS_POOL_TIMEOUT
        if "refused" in low or "connect call failed" in low:
            return CONNECTION_REFUSED
        if "max number of clients" in low:
            return "redis maxclients"
        return CONNECTION_LOST
    if name in ("BusyLoadingError",):
        return "redis loading"
    if text.startswith("OOM"):
        return "redis oom"
    if name == "ResponseError":
        word = text.split(" ", 1)[0]
        return f"redis {word}" if word.isupper() and len(word) < 16 else "redis error"
    return f"redis {name}"


def _aiohttp_class(exc: BaseException) -> str:
    name = type(exc).__name__
    if name in ("ClientConnectorError", "ClientConnectorCertificateError"):
        text = str(exc).lower()
        return CONNECTION_REFUSED if "refused" in text or "connect call" in text else name
    if name in ("ServerDisconnectedError", "ClientOSError", "ClientPayloadError"):
        return CONNECTION_LOST
    if name in ("ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError"):
        return TIMEOUT
    return name


def is_connection_error(error_class: str) -> bool:
    return (
        error_class in (CONNECTION_LOST, CONNECTION_REFUSED)
        or error_class[:2] == "08"
        or (error_class[:5] in ("57P01", "57P02", "57P03", "53300"))
        # Redis's 53300: without backoff, starved workers retried ~80 times a second
        or error_class == "redis maxclients"
    )
