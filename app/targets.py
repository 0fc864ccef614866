"""Targets: where the load goes, and how their names are shown.

Passwords and tokens never reach the screen, the recording, the report or an
error message: everything that prints a target goes through `redact`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

SECRET_PARAM = re.compile(r"pass|token|secret|key|auth|credential|cookie", re.I)
_URL_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]*)@"
)
_QUERY_SECRET = re.compile(
    r"(?P<k>(?:password|passwd|pwd|token|secret|sslpassword|api[_-]?key)=)[^&\s]*", re.I
)
_KV_SECRET = re.compile(r"(?P<k>\b(?:password|passwd|pwd)\s*=\s*)(?:'[^']*'|\S+)", re.I)

MASK = "***"


class TargetError(ValueError):
    """A target is malformed or unreachable; the message says what to fix."""


def redact(text: str) -> str:
    """Mask credentials in a DSN/URL or in any text that may contain one."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['k']}{MASK}", text)
    return _KV_SECRET.sub(lambda m: f"{m['k']}{MASK}", text)


class Redactor:
    """Masks known secret values wherever they appear (e.g. in a driver's error
    message), in addition to the patterns `redact` knows."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, value: str | None) -> None:
        if value and len(value) >= 3:
            self.secrets.add(value)

    def add_url(self, url: str | None) -> None:
        if not url:
            return
        try:
            parts = urlsplit(url)
        except ValueError:
            return
        self.add(parts.password)
        if parts.password:
            self.add(unquote(parts.password))  # as a driver may echo it, decoded
        for m in _QUERY_SECRET.finditer(url):
            self.add(url[m.end("k") : m.end()])

    def __call__(self, text: str) -> str:
        text = redact(text)
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, MASK)
        return text

    def scrub_json(self, line: str) -> str:
        """Mask the known secrets in a JSON text, as they appear there (escaped),
        without the patterns of `redact`, which could eat through JSON syntax."""
        for s in sorted(self.secrets, key=len, reverse=True):
            for form in {s, json.dumps(s)[1:-1]}:
                if form in line:
                    line = line.replace(form, MASK)
        return line

    @classmethod
    def for_targets(
        cls, urls: Iterable[str | None], params: Mapping[str, str] | None = None
    ) -> Redactor:
        """The secrets of a run: URL passwords and tokens, secret-looking -p values."""
        r = cls()
        for u in urls:
            r.add_url(u)
        for k, v in (params or {}).items():
            if SECRET_PARAM.search(k):
                r.add(v)
        return r


def redact_params(params: Mapping[str, str]) -> dict[str, str]:
    return {k: (MASK if SECRET_PARAM.search(k) else v) for k, v in params.items()}


def redact_obj(obj: Any, redactor: Redactor | None = None) -> Any:
    """Redact every string inside a JSON-able structure."""
    fn = redactor or redact
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: redact_obj(v, redactor) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v, redactor) for v in obj]
    return obj


def check_pg_dsn(dsn: str) -> str:
    try:
        parts = urlsplit(dsn)
    except ValueError as e:
        raise TargetError(f"--pg {redact(dsn)!r} is not a valid DSN ({e})") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise TargetError(
            f"--pg {redact(dsn)!r} is not a PostgreSQL DSN:"
            " use postgresql://user:password@host:5432/dbname"
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise TargetError(f"--pg {redact(dsn)!r} has an invalid port") from None
    return dsn


def check_redis_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        raise TargetError(
            f"--redis {redact(url)!r} is not a valid URL: use redis://host:6379/0"
        ) from None
    if parts.scheme not in ("redis", "rediss", "unix", "valkey", "valkeys"):
        raise TargetError(
            f"--redis {redact(url)!r} is not a Redis URL: use redis://[:password@]host:6379/0"
        )
    if parts.scheme.startswith("valkey"):
        url = urlunsplit(("redis" + parts.scheme[6:], *parts[1:]))
    return url


def check_http_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        raise TargetError(f"--http {redact(url)!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"--http {redact(url)!r} is not an HTTP URL: use http://host:8080")
    return url.rstrip("/")
