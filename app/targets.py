"""Targets: where the load goes, and how their names are shown.

Passwords and tokens never reach the screen, the recording, the report or an
error message: everything that prints a target goes through `redact`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

# a -p parameter whose value is a secret, by its name
SECRET_PARAM = re.compile(
    r"pass|token|secret|(?:api|access|private|client)[_-]?key|^key$|auth|credential|cookie"
    r"|signature",
    re.I,
)
# user:password@ in a URL; the password runs to the LAST @ before the path (as
# urllib, redis-py and yarl split it), so an unescaped @ in it is masked whole
_URL_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^/\s]*)@"
)
# a query parameter or key=value named like a secret (access_token=, api-key=, sig=)
_QUERY_SECRET = re.compile(
    r"(?P<k>(?<![\w.-])[\w.-]*?(?:password|passwd|pwd|token|secret|api[_-]?key|apikey"
    r"|access[_-]?key|signature|sig|auth|credentials?)=)[^&\s`'\"|]*",
    re.I,
)
_KV_SECRET = re.compile(r"(?P<k>\b(?:password|passwd|pwd)\s*=\s*)(?:'[^']*'|\S+)", re.I)
# a secret HTTP header and its value, as `Name: value`, `"Name": "value"` or
# `Name=value`; the value ends at a separator (| , " ' ` \ newline), or two spaces
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                  "api-key", "x-auth-token")  # fmt: skip
_HEADER_SECRET = re.compile(
    r"(?P<k>(?<![\w-])(?:proxy-authorization|authorization|set-cookie|cookie|x-api-key|api-key"
    r"|x-auth-token)[\"']?\s*[:=]\s*[\"']?)(?P<v>(?:[^|,`\"'\\\n\r\s]|[ \t](?![ \t]))+)",
    re.I,
)
_BEARER = re.compile(r"(?P<k>\b(?:Bearer|Basic|Token)\s+)(?P<v>[A-Za-z0-9._~+/=-]{6,})")

MASK = "***"


class TargetError(ValueError):
    """A target is malformed or unreachable; the message says what to fix."""


def redact(text: str) -> str:
    """Mask credentials in a DSN/URL or in any text that may contain one."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['k']}{MASK}", text)
    text = _HEADER_SECRET.sub(lambda m: f"{m['k']}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m['k']}{MASK}", text)
    return _KV_SECRET.sub(lambda m: f"{m['k']}{MASK}", text)


def header_secrets(text: str) -> list[str]:
    """The values of secret headers in `text` (and a bearer token alone)."""
    out = [m["v"].strip() for m in _HEADER_SECRET.finditer(text)]
    out += [m["v"] for m in _BEARER.finditer(text)]
    return out


def url_secrets(url: str) -> list[str]:
    """A target's secrets as its driver parses them: asyncpg for postgresql://,
    redis-py's parse_url for redis://, yarl for http(s)://; plus secret-named
    query parameters. Each as written in the URL and decoded."""
    out: list[str] = []
    scheme = url.partition("://")[0].lower()
    try:
        if scheme in ("postgres", "postgresql"):
            netloc = urlsplit(url).netloc
            auth = netloc.partition("@")[0] if "@" in netloc else ""  # as asyncpg splits it
            out.append(auth.partition(":")[2])
            # an unescaped @ (refused by check_pg_dsn): everything up to the last @ too
            out.append(netloc.rpartition("@")[0].partition(":")[2])
            for k, vs in parse_qs(urlsplit(url).query).items():
                if SECRET_PARAM.search(k):
                    out += vs
        elif scheme in ("redis", "rediss", "unix", "valkey", "valkeys"):
            from redis.connection import parse_url

            kw = parse_url("redis" + url[6:] if scheme.startswith("valkey") else url)
            out.append(str(kw.get("password") or ""))
            out.append(urlsplit(url).netloc.rpartition("@")[0].partition(":")[2])
        else:
            from yarl import URL

            u = URL(url)
            out += [u.password or "", u.raw_password or ""]
            out += [v for k, v in u.query.items() if SECRET_PARAM.search(k)]
    except (ValueError, TypeError, UnicodeError):
        pass
    for m in _QUERY_SECRET.finditer(url):
        out.append(url[m.end("k") : m.end()])
    for v in list(out):
        out.append(unquote(v))
    return [v for v in out if v]


class Redactor:
    """Masks known secret values wherever they appear (e.g. in a driver's error
    message), in addition to the patterns `redact` knows."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, value: str | None) -> None:
        """A secret value; the values of secret headers inside it too (a -p
        headers value), so a token echoed alone is masked as well."""
        if value and len(value) >= 3:
            self.secrets.add(value)
            for v in header_secrets(value):
                if len(v) >= 3:
                    self.secrets.add(v)

    def add_url(self, url: str | None) -> None:
        """A target's secrets, parsed the way its driver parses the URL."""
        if not url:
            return
        for v in url_secrets(url):
            self.add(v)

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
            else:  # a secret header's value in -p headers, a URL's password in -p path
                for s in [*header_secrets(v), *url_secrets(v)]:
                    r.add(s)
        return r


def redact_params(params: Mapping[str, str]) -> dict[str, str]:
    """-p values as shown: secret-named ones masked whole, and in the others
    what `redact` masks (secret headers in -p headers, a URL's password)."""
    return {k: (MASK if SECRET_PARAM.search(k) else redact(v)) for k, v in params.items()}


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


def shown(url: str) -> str:
    """A target as an error message may show it: masked, and cut to its scheme
    when an unescaped @ or / in the password would defeat the mask."""
    scheme, sep, rest = url.partition("://")
    netloc_end = min(
        i for i in (rest.find("/"), rest.find("?"), rest.find("#"), len(rest)) if i >= 0
    )
    if rest.count("@") > 1 or "@" in rest[netloc_end:] or not printable(url):
        return f"{scheme}{sep}{MASK}"
    return redact(url)


def printable(text: str) -> bool:
    """No undecodable byte (a surrogate from a non-UTF-8 argv) and no control character."""
    return not any("\udc80" <= c <= "\udcff" or (ord(c) < 32 and c != "\t") for c in text)


def _check_text(url: str, flag: str, path_at_ok: bool = False) -> None:
    if not printable(url):
        raise TargetError(
            f"{flag} {shown(url)!r} holds a byte that is not UTF-8 text or a control character:"
            " percent-encode it (ä as %C3%A4)"
        )
    rest = url.partition("://")[2]
    cut = min(i for i in (rest.find("/"), rest.find("?"), rest.find("#"), len(rest)) if i >= 0)
    if not path_at_ok and "@" in rest[cut:]:
        raise TargetError(
            f"{flag} {shown(url)!r}: the password seems to hold a '/' or '@': percent-encode it"
            " (/ as %2F, @ as %40)"
        )


PG_EXAMPLE = "postgresql://user@host:5432/dbname"


def check_pg_dsn(dsn: str, flag: str = "--pg") -> str:
    """A PostgreSQL DSN as asyncpg parses it; refused up front when asyncpg
    would misread it (an unescaped @ in the user name or password: asyncpg
    splits at the first @, then fails with a misleading "cannot resolve host")."""
    _check_text(dsn, flag)
    try:
        parts = urlsplit(dsn)
    except ValueError as e:
        raise TargetError(
            f"{flag} {shown(dsn)!r} is not a valid DSN ({e}): use {PG_EXAMPLE}"
        ) from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise TargetError(
            f"{flag} {shown(dsn)!r} is not a PostgreSQL DSN:"
            " use postgresql://user:password@host:5432/dbname"
        )
    if parts.netloc.count("@") > 1:
        raise TargetError(
            f"{flag} {shown(dsn)!r}: the user name or password holds an '@': percent-encode it"
            " as %40 (p@ss as p%40ss)"
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise TargetError(
            f"{flag} {shown(dsn)!r} has an invalid port: give 1-65535, e.g. host:5432"
        ) from None
    return dsn


def check_redis_url(url: str, flag: str = "--redis") -> str:
    """A Redis URL as redis-py's parse_url reads it, with what it would
    silently ignore refused: a database that is not a number (`/abc` would be db 0)."""
    _check_text(url, flag)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        raise TargetError(
            f"{flag} {shown(url)!r} is not a valid URL: use redis://host:6379/0"
        ) from None
    if parts.scheme not in ("redis", "rediss", "unix", "valkey", "valkeys"):
        raise TargetError(
            f"{flag} {shown(url)!r} is not a Redis URL: use redis://[:password@]host:6379/0"
        )
    if parts.scheme.startswith("valkey"):
        url = urlunsplit(("redis" + parts.scheme[6:], *parts[1:]))
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as e:
        raise TargetError(f"{flag} {shown(url)!r}: {e} Use e.g. redis://host:6379/0") from None
    if parts.scheme != "unix":
        db = unquote(parts.path).strip("/")
        if db and not db.isdigit():
            raise TargetError(
                f"{flag} {shown(url)!r}: database {db!r} is not a number: use redis://host:6379/0"
            )
    return url


def check_http_url(url: str, flag: str = "--http") -> str:
    _check_text(url, flag, path_at_ok=True)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        raise TargetError(
            f"{flag} {shown(url)!r} is not a valid URL: use http://host:8080"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"{flag} {shown(url)!r} is not an HTTP URL: use http://host:8080")
    return url.rstrip("/")
