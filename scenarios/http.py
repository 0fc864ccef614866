"""Built-in HTTP scenarios, against `--http URL`.

The load path is aiohttp (`ctx.http`, its connector sized to the concurrency
by the session): measured on a 2-core machine at 64 workers against a 20 ms
endpoint (ideal 3,200 req/s), aiohttp made 2,993 req/s, httpx 116 and httpx
with HTTP/2 1,168. httpx serves only `-p http2=1`, for targets that need it.

A failed request is counted by status class ("http 5xx", "http 429", "http
4xx", from `http_class`) or by transport error ("connection refused",
"timeout", "connection lost", from `classify`), or as "body check" when the
response does not contain what `-p contains` / `-p json_key` ask for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

from app.engine.errors import OperationError, http_class
from app.scenario import Context, Param, Scenario, ScenarioError

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def parse_expect(name: str, raw: str) -> tuple[frozenset[int], frozenset[int]]:
    """ "200,201" / "2xx,404" -> (exact statuses, status classes)."""
    exact: set[int] = set()
    classes: set[int] = set()
    for part in raw.split(","):
        p = part.strip().lower()
        if not p:
            continue
        if len(p) == 3 and p.endswith("xx") and p[0] in "12345":
            classes.add(int(p[0]))
        elif p.isdigit() and 100 <= int(p) <= 599:
            exact.add(int(p))
        else:
            raise ScenarioError(
                f"{name}: -p expect={raw} is not a list of statuses (for example -p expect=200,201"
                " or -p expect=2xx)"
            )
    if not exact and not classes:
        raise ScenarioError(f"{name}: -p expect is empty (for example -p expect=200)")
    return frozenset(exact), frozenset(classes)


def parse_headers(name: str, raw: str) -> dict[str, str]:
    """A JSON object, or `Name: value` pairs separated by `|` or newlines."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ScenarioError(f"{name}: -p headers is not valid JSON: {e.msg}") from None
        if not isinstance(data, dict):
            raise ScenarioError(f"{name}: -p headers must be a JSON object")
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for item in raw.replace("\n", "|").split("|"):
        if not item.strip():
            continue
        k, sep, v = item.partition(":")
        if not sep or not k.strip():
            raise ScenarioError(
                f"{name}: -p headers item {item.strip()!r} is not 'Name: value'"
                " (separate several with |, or give a JSON object)"
            )
        out[k.strip()] = v.strip()
    return out


def _ok(_: Any) -> None:
    """A check that passes when the parser did not raise."""
    return None


def _check_method(raw: str) -> str | None:
    if raw.strip().upper() in METHODS:
        return None
    return f"method={raw!r} is unknown: use one of {', '.join(METHODS)}"


def _check_json(raw: str) -> str | None:
    if not raw:
        return None
    try:
        json.loads(raw)
    except json.JSONDecodeError as e:
        return f"body is not valid JSON ({e.msg}): give a JSON document, e.g. -p body='{{}}'"
    return None


HTTP2 = ("0", "1", "h2c", "false", "true")


def _check_http2(raw: str) -> str | None:
    return None if raw.lower() in HTTP2 else f"http2={raw!r} is unknown: use 0, 1 or h2c"


def _check_products(raw: str) -> str | None:
    try:
        ids = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        ids = []
    if not ids or any(i < 1 for i in ids):
        return f"products={raw!r} is not a count or a list of ids: give e.g. 20 or 1,2,3"
    return None


def json_path(doc: Any, path: str) -> tuple[bool, Any]:
    """Follow `a.b.0.c` into a JSON document: (found, value)."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif (
            isinstance(cur, list)
            and part.lstrip("-").isdigit()
            and -len(cur) <= int(part) < len(cur)
        ):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


class HttpRequest(Scenario):
    name = "http"
    processes_ok = True
    description = "one HTTP request per operation (method, path, headers, JSON body), checked by status and body"
    needs = ("http",)
    writes = False  # per instance: True unless -p method is GET, HEAD or OPTIONS
    parameters = {
        "method": Param(str, "GET", "the request method (any case)", check=_check_method),
        "path": Param(str, "", "path (or full URL) joined to --http (default: the --http URL itself)"),
        "headers": Param(str, "", "request headers: 'Name: value|Name2: value' or a JSON object",
                         check=lambda raw: _ok(parse_headers("http", raw))),
        "body": Param(str, "", "a JSON document sent as the body (Content-Type: application/json)",
                      check=_check_json),
        "expect": Param(str, "2xx", "accepted statuses, e.g. 200,201 or 2xx; others fail as"
                        " 'http 4xx', 'http 5xx', 'http 429'",
                        check=lambda raw: _ok(parse_expect("http", raw))),
        "contains": Param(str, "", "the response body must contain this text, else 'body check'"),
        "json_key": Param(str, "", "the JSON response must have this key (dotted path, a.b.0.c),"
                          " else 'body check'"),
        "json_value": Param(str, "", "with json_key: the value it must have (compared as text)"),
        "timeout_s": Param(float, 30.0, "whole-request timeout in seconds: 'timeout'",
                           min=0.001, max=3600),
        "connect_timeout_s": Param(float, 5.0, "connect timeout in seconds", min=0.001, max=3600),
        "http2": Param(str, "0", "1: send through httpx with HTTP/2 (negotiated by ALPN over"
                       " https; h2c: prior knowledge over plain http). Costs client CPU: measured"
                       " 1,168 req/s against aiohttp's 2,993 at 64 workers on 2 cores, so use it"
                       " only when the target needs HTTP/2", check=_check_http2),
    }  # fmt: skip

    def __init__(self, params: dict[str, str] | None = None) -> None:
        super().__init__(params)
        self.cfg: dict[str, Any] | None = None
        self.httpx: Any = None
        # GET, HEAD and OPTIONS may run under --readonly; any other method writes.
        # `writes` is a ClassVar on Scenario; here the instance's method decides it.
        method = self.params.get("method", "GET").strip().upper()
        self.writes = method not in ("GET", "HEAD", "OPTIONS")  # type: ignore[misc]

    def _configure(self, ctx: Context) -> dict[str, Any]:
        if self.cfg is not None:
            return self.cfg
        method = ctx.param("method", "GET").upper()
        if method not in METHODS:
            raise ScenarioError(
                f"{self.name}: -p method={method} is unknown: use {', '.join(METHODS)}"
            )
        base = ctx.http_url or ""
        path = ctx.param("path", "")
        url = urljoin(base, path) if path else base
        body_raw = ctx.param("body", "")
        body: bytes | None = None
        headers = parse_headers(self.name, ctx.param("headers", ""))
        if body_raw:
            try:
                json.loads(body_raw)
            except json.JSONDecodeError as e:
                raise ScenarioError(f"{self.name}: -p body is not valid JSON: {e.msg}") from None
            body = body_raw.encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        exact, classes = parse_expect(self.name, ctx.param("expect", "2xx"))
        http2 = ctx.param("http2", "0").lower()
        if http2 not in ("0", "1", "h2c", "false", "true"):
            raise ScenarioError(f"{self.name}: -p http2={http2} is unknown: use 0, 1 or h2c")
        from yarl import URL

        self.cfg = {
            "method": method,
            "url": url,
            "yarl": URL(url),  # parsed once: aiohttp would parse a str per request
            "headers": headers or None,
            "body": body,
            "exact": exact,
            "classes": classes,
            "expect_text": ctx.param("expect", "2xx"),
            "contains": ctx.param("contains", "").encode(),
            "json_key": ctx.param("json_key", ""),
            "json_value": self.params.get("json_value"),
            "timeout": max(ctx.param("timeout_s", 30.0), 0.001),
            "connect_timeout": max(ctx.param("connect_timeout_s", 5.0), 0.001),
            "http2": http2 if http2 in ("1", "true", "h2c") else "",
        }
        return self.cfg

    async def prepare(self, ctx: Context) -> None:
        """Parsed parameters and the HTTP/2 client, in every process (--processes)."""
        cfg = self._configure(ctx)
        if cfg["http2"]:
            import httpx

            self.httpx = httpx.AsyncClient(
                http1=cfg["http2"] != "h2c",
                http2=True,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
                timeout=httpx.Timeout(cfg["timeout"], connect=cfg["connect_timeout"]),
            )
        else:
            import aiohttp

            cfg["aiohttp_timeout"] = aiohttp.ClientTimeout(
                total=cfg["timeout"], connect=cfg["connect_timeout"]
            )

    async def teardown(self, ctx: Context) -> None:
        if self.httpx is not None:
            await self.httpx.aclose()
            self.httpx = None

    def check(self, cfg: Mapping[str, Any], status: int, body: bytes) -> None:
        """Raise OperationError unless the response is what the user expects."""
        if status not in cfg["exact"] and status // 100 not in cfg["classes"]:
            raise OperationError(
                http_class(status),
                f"{cfg['method']} {cfg['url']}: status {status}, expected {cfg['expect_text']}",
            )
        if cfg["contains"] and cfg["contains"] not in body:
            raise OperationError(
                "body check", f"response does not contain {cfg['contains'].decode()[:80]!r}"
            )
        if cfg["json_key"]:
            try:
                doc = json.loads(body)
            except ValueError:
                raise OperationError("body check", "response is not JSON") from None
            found, value = json_path(doc, cfg["json_key"])
            if not found:
                raise OperationError("body check", f"response has no key {cfg['json_key']!r}")
            want = cfg["json_value"]
            if want is not None:
                text = value if isinstance(value, str) else json.dumps(value)
                if text != want:
                    raise OperationError(
                        "body check", f"{cfg['json_key']} is {text[:80]!r}, expected {want!r}"
                    )

    async def run(self, ctx: Context) -> None:
        cfg = self.cfg or self._configure(ctx)
        if self.httpx is not None:
            resp = await self.httpx.request(
                cfg["method"], cfg["url"], headers=cfg["headers"], content=cfg["body"]
            )
            self.check(cfg, resp.status_code, resp.content)
            return
        assert ctx.http is not None
        async with ctx.http.request(
            cfg["method"], cfg["yarl"], headers=cfg["headers"], data=cfg["body"],
            timeout=cfg["aiohttp_timeout"],
        ) as resp:  # fmt: skip
            body = await resp.read()
            status = resp.status
        self.check(cfg, status, body)


class HttpReserve(Scenario):
    name = "http-reserve"
    description = (
        "stock reservations through the demo service's JSON API (POST /reserve);"
        " no-oversell checked in its database"
    )
    needs = ("http", "postgres")
    parameters = {
        "products": Param(str, "20", "product ids to reserve from: a count n (1..n) or a list"
                          " 1,2,5", check=_check_products),
        "max_k": Param(int, 3, "units per reservation, 1..max_k", min=1, max=1_000_000),
        "stock": Param(int, None, "set these products' stock to this many units at setup"
                       " (default: leave it); small values make the service sell out and"
                       " answer 409", min=0, max=2**31 - 1),
        "schema": Param(str, "loadtop_demo_shop", "the service's schema in --pg"),
        "timeout_s": Param(float, 30.0, "whole-request timeout in seconds", min=0.001, max=3600),
    }  # fmt: skip

    def __init__(self, params: dict[str, str] | None = None) -> None:
        super().__init__(params)
        self.products: list[int] = []
        self.baseline: dict[int, tuple[int, int]] = {}  # id -> (quantity + reserved, reserved)
        self.confirmed: dict[int, int] = {}  # id -> units the service confirmed to us
        self.sold_out = 0
        self.reserved_ok = 0
        self.timeout: Any = None

    def _table(self, ctx: Context) -> str:
        schema = ctx.param("schema", "loadtop_demo_shop").replace('"', "")
        return f'"{schema}".products'

    async def setup(self, ctx: Context) -> None:
        import aiohttp

        assert ctx.conn is not None
        raw = ctx.param("products", "20")
        try:
            ids = [int(x) for x in raw.split(",") if x.strip()]
        except ValueError:
            raise ScenarioError(
                f"{self.name}: -p products={raw} is not a count or a list of ids (e.g. 1,2,3)"
            ) from None
        self.products = list(range(1, ids[0] + 1)) if len(ids) == 1 else ids
        if not self.products:
            raise ScenarioError(f"{self.name}: -p products={raw} names no product")
        table = self._table(ctx)
        exists = await ctx.conn.fetchval("SELECT to_regclass($1)", table)
        if exists is None:
            raise ScenarioError(
                f"{self.name}: table {table} is not in --pg: point --pg at the demo service's"
                " database (started by `loadtop demo`), or give -p schema=NAME"
            )
        stock = self.params.get("stock")
        if stock is not None:
            await ctx.conn.execute(
                f"UPDATE {table} SET quantity = $2 WHERE id = ANY($1::int[])",
                self.products,
                ctx.param("stock", 0),
            )
        rows = await ctx.conn.fetch(
            f"SELECT id, quantity, reserved FROM {table} WHERE id = ANY($1::int[])", self.products
        )
        found = {r["id"] for r in rows}
        missing = [p for p in self.products if p not in found]
        if missing:
            raise ScenarioError(
                f"{self.name}: products {missing[:5]} do not exist in {table}: check -p products"
            )
        self.baseline = {r["id"]: (r["quantity"] + r["reserved"], r["reserved"]) for r in rows}
        self.timeout = aiohttp.ClientTimeout(total=max(ctx.param("timeout_s", 30.0), 0.001))

    async def run(self, ctx: Context) -> None:
        assert ctx.http is not None
        st = ctx.state
        if "url" not in st:
            st["url"] = urljoin(ctx.http_url or "", "/reserve")
            st["max_k"] = max(ctx.param("max_k", 3), 1)
        product = self.products[ctx.rng.randrange(len(self.products))]
        k = ctx.rng.randint(1, st["max_k"])
        async with ctx.http.post(
            st["url"], json={"product": product, "k": k}, timeout=self.timeout
        ) as resp:
            body = await resp.read()
            status = resp.status
        if status == 200:
            self.confirmed[product] = self.confirmed.get(product, 0) + k
            self.reserved_ok += 1
        elif status == 409:
            self.sold_out += 1  # a correct refusal, not an error
            ctx.count("sold out")
        else:
            raise OperationError(
                http_class(status), f"POST /reserve: status {status}: {body[:120]!r}"
            )

    async def verify(self, ctx: Context) -> list[str]:
        assert ctx.conn is not None
        # one statement, one snapshot: a reservation moves units from quantity to reserved
        rows = await ctx.conn.fetch(
            f"SELECT id, quantity, reserved FROM {self._table(ctx)} WHERE id = ANY($1::int[])",
            self.products,
        )
        out: list[str] = []
        for r in rows:
            pid, q, res = r["id"], r["quantity"], r["reserved"]
            total, res0 = self.baseline.get(pid, (q + res, res))
            mine = self.confirmed.get(pid, 0)
            if q < 0:
                out.append(f"product {pid}: quantity is negative ({q}): oversold")
            if q + res > total:
                out.append(
                    f"product {pid}: oversold by {q + res - total} units"
                    f" ({res} reserved + {q} left > {total} stock)"
                )
            if mine > res - res0:
                out.append(
                    f"product {pid}: the service confirmed {mine} units to this run but recorded"
                    f" only {res - res0} reserved (lost reservations)"
                )
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "reserved": self.reserved_ok,
            "sold_out": self.sold_out,
            "units": sum(self.confirmed.values()),
        }
