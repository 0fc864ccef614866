"""The fault actions: one small class each, behind `Action`.

An action is built from its parameters (checked by `check_params` when the
spec is parsed, so a bad spec is exit 2) and the session's `FaultTargets`.
`available()` says whether the configured targets allow it at all (the
console lists only those); `describe()` resolves exactly what will be hit
(pod name, backend pids, client ids, key) and refuses an empty or unsafe
match; `inject()` does it; `heal()` undoes it (idempotent; a no-op for
faults that heal themselves, like a killed pod a Deployment restarts).

Long by design: ten fault actions behind one interface, each with its safety
check, its description of what it will hit, inject and heal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from app.faults.spec import FaultError, parse_seconds

# loadtop's own connections carry these names; no action ever touches them
OWN_PREFIX = "loadtop"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")
LOCK_MODES = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
              "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")  # fmt: skip


@dataclass
class FaultTargets:
    """What the session was configured with: the only things a fault may hit."""

    pg_dsn: str | None = None
    redis_url: str | None = None
    proxy: Any = None  # app.faults.proxy.FaultProxy when --http-via-proxy
    k8s_namespace: str | None = None
    k8s_selector: str | None = None
    k8s_context: str | None = None
    kube_config: Any = None  # an app.probes.kube.KubeConfig (tests: a loopback fake)
    # processes loadtop itself started (the demo service): name -> current pid
    processes: Mapping[str, Callable[[], int | None]] = field(default_factory=dict)
    # what the application under test is called, for the console's suggested specs
    # (the demo: {"app": "demo-shop", "table": "loadtop_demo_shop.products", ...})
    hints: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    kind: str  # seconds | ms | pct | str | ident | choice | int
    default: Any = None
    required: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""


class Action:
    name: ClassVar[str]
    needs: ClassVar[str]  # postgres | redis | http-proxy | pods
    summary: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    max_duration: ClassVar[float] = 0.0  # hard upper bound (s) for a fault that lasts
    one_of: ClassVar[tuple[str, ...]] = ()  # at least one of these parameters is required

    def __init__(self, params: Mapping[str, str], targets: FaultTargets) -> None:
        self.p = self.check_params(params)
        self.t = targets
        self.target: Any = None  # what describe() resolved

    # ---- parameters -------------------------------------------------------------
    @classmethod
    def check_params(cls, params: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in params.items():
            decl = cls.params.get(k)
            if decl is None:
                names = ", ".join(cls.params) or "none"
                raise FaultError(
                    f"--fault kind={cls.name} takes no {k}=: its parameters are {names}"
                )
            out[k] = _value(cls.name, k, decl, v)
        for k, decl in cls.params.items():
            if k not in out:
                if decl.required:
                    raise FaultError(f"--fault kind={cls.name} needs {k}=... ({decl.help})")
                out[k] = decl.default
        if cls.one_of and not any(params.get(k) for k in cls.one_of):
            raise FaultError(
                f"--fault kind={cls.name} needs a match: give {' or '.join(k + '=' for k in cls.one_of)}"
                " (there is no 'all')"
            )
        return out

    @property
    def duration(self) -> float | None:
        """Seconds until the heal (None: heals itself, or instant)."""
        return None

    # the parameters the console pre-fills, from FaultTargets.hints (param -> hint key)
    suggest_from: ClassVar[dict[str, str]] = {}

    @classmethod
    def suggest(cls, t: FaultTargets) -> str:
        """A spec to start from in the console (`kind=...,param=...`), editable."""
        parts = [f"kind={cls.name}"]
        for param, hint in cls.suggest_from.items():
            if t.hints.get(hint):
                parts.append(f"{param}={t.hints[hint]}")
        for k, d in cls.params.items():
            if d.required and not any(p.startswith(k + "=") for p in parts):
                parts.append(f"{k}=")
        if cls.one_of and not any(p.split("=")[0] in cls.one_of for p in parts):
            parts.append(f"{cls.one_of[0]}=")
        return ",".join(parts)

    # ---- the action -------------------------------------------------------------
    @classmethod
    def available(cls, t: FaultTargets) -> str | None:
        """None when the configured targets allow this action, else why not."""
        return None

    async def describe(self) -> str:
        raise NotImplementedError

    async def inject(self) -> str:
        raise NotImplementedError

    async def heal(self) -> str | None:
        return None


def _value(kind: str, key: str, d: Param, v: str) -> Any:
    where = f"--fault kind={kind} {key}={v!r}"
    if d.kind == "seconds":
        s = parse_seconds(v, f"--fault kind={kind} {key}=")
        if s <= 0 or (d.maximum is not None and s > d.maximum):
            raise FaultError(f"{where}: give more than 0 and at most {d.maximum:g} s")
        return s
    if d.kind in ("ms", "int", "pct"):
        try:
            n = float(v.rstrip("%")) if d.kind == "pct" else int(v)
        except ValueError:
            raise FaultError(f"{where} is not a number: give e.g. {d.default or 100}") from None
        if n < 0 or (d.maximum is not None and n > d.maximum):
            raise FaultError(f"{where}: give a number from 0 to at most {d.maximum:g}")
        return n
    if d.kind == "choice":
        u = v.upper() if d.choices[0].isupper() else v
        if u not in d.choices:
            raise FaultError(f"{where}: use one of {', '.join(d.choices)}")
        return u
    if d.kind == "ident" and not _IDENT.fullmatch(v):
        raise FaultError(f"{where} is not a table name: give e.g. public.orders")
    if any(c in v for c in "*?[") and key in ("key", "name", "user", "addr", "app", "pod"):
        raise FaultError(f"{where}: patterns are refused; name exactly one {key}")
    if key in ("name", "user", "app") and v.lower().startswith(OWN_PREFIX):
        raise FaultError(f"{where}: that is loadtop's own connection; name the application's")
    return v


# ---- pods ---------------------------------------------------------------------------


class PodKill(Action):
    name = "pod-kill"
    needs = "pods"
    summary = "delete one pod of --k8s-selector (or SIGKILL the demo service)"
    params = {
        "pod": Param("str", help="a pod name among the selector's pods (default: random)"),
        "grace": Param("int", None, maximum=300, help="grace period in s (default: the pod's)"),
        "process": Param("str", help="a process loadtop started (demo: demo-service)"),
    }

    @classmethod
    def available(cls, t: FaultTargets) -> str | None:
        if t.k8s_namespace:
            if not t.k8s_selector:
                return "pod-kill needs --k8s-selector: loadtop never picks from all pods"
            return None
        if t.processes:
            return None
        return "pod-kill needs --k8s-namespace and --k8s-selector (or `loadtop demo`)"

    async def _kube(self) -> Any:
        from app.probes.kube import connect  # kubectl when only it knows the credentials

        return await connect(self.t.k8s_context, config=self.t.kube_config, timeout=5.0)

    async def describe(self) -> str:
        why = self.available(self.t)
        if why:
            raise FaultError(why)
        if not self.t.k8s_namespace:
            names = list(self.t.processes)
            name = self.p["process"] or names[0]
            if name not in self.t.processes:
                raise FaultError(
                    f"pod-kill: {name!r} is not a process loadtop started ({', '.join(names)})"
                )
            pid = self.t.processes[name]()
            if not pid:
                raise FaultError(f"pod-kill: {name} is not running right now")
            self.target = ("process", name, pid)
            return f"SIGKILL {name} (pid {pid}); it is restarted as a Deployment would"
        ns, sel = self.t.k8s_namespace, self.t.k8s_selector
        kube = await self._kube()
        try:
            resp, pods = await kube.list_items(
                f"/api/v1/namespaces/{ns}/pods", {"labelSelector": str(sel)}
            )
        finally:
            await kube.close()
        if resp.status_code != 200:
            raise FaultError(f"pod-kill: listing pods in {ns} failed (HTTP {resp.status_code})")
        names = [
            p["metadata"]["name"] for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ]  # fmt: skip
        if self.p["pod"]:
            if self.p["pod"] not in names:
                raise FaultError(
                    f"pod-kill: pod {self.p['pod']!r} is not a running pod of {sel} in {ns}"
                )
            name = self.p["pod"]
        elif names:
            name = random.choice(names)
        else:
            raise FaultError(f"pod-kill: no running pod matches {sel} in {ns}")
        self.target = ("pod", ns, name)
        grace = "grace 0" if self.p["grace"] == 0 else "default grace"
        return f"delete pod {ns}/{name} ({grace}; 1 of {len(names)} running pods of {sel})"

    async def inject(self) -> str:
        if self.target is None:
            await self.describe()
        if self.target[0] == "process":
            _, name, pid = self.target
            if self.t.processes[name]() != pid:  # it changed since describe(): never a stranger
                raise FaultError(f"pod-kill: {name} restarted meanwhile; describe it again")
            os.kill(pid, signal.SIGKILL)
            return f"killed {name} pid {pid}"
        _, ns, name = self.target
        kube = await self._kube()
        params = {} if self.p["grace"] is None else {"gracePeriodSeconds": str(self.p["grace"])}
        try:
            resp = await kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}", params)
        finally:
            await kube.close()
        if resp.status_code not in (200, 202):
            raise FaultError(f"pod-kill: DELETE pod {ns}/{name} answered HTTP {resp.status_code}")
        return f"deleted pod {ns}/{name}"


# ---- postgres ------------------------------------------------------------------------


async def _pg_connect(dsn: str, **settings: str) -> Any:
    import asyncpg

    return await asyncpg.connect(
        dsn, timeout=5, server_settings={"application_name": "loadtop:fault", **settings}
    )


class _PgAction(Action):
    needs = "postgres"

    @classmethod
    def available(cls, t: FaultTargets) -> str | None:
        return None if t.pg_dsn else f"{cls.name} needs --pg"


class PgTerminate(_PgAction):
    name = "pg-terminate"
    summary = "pg_terminate_backend of the application's backends (by app/user/database)"
    params = {
        "app": Param("str", help="application_name of the application's connections"),
        "user": Param("str", help="its database user"),
        "database": Param("str", help="its database"),
        "max": Param("int", 50, maximum=500, help="refuse a match larger than this"),
    }
    one_of = ("app", "user", "database")
    suggest_from = {"app": "pg_app"}

    async def describe(self) -> str:
        conn = await _pg_connect(str(self.t.pg_dsn))
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND pid <> pg_backend_pid()"
                " AND coalesce(application_name, '') NOT LIKE 'loadtop%'"
                " AND ($1::text IS NULL OR application_name = $1)"
                " AND ($2::text IS NULL OR usename = $2)"
                " AND ($3::text IS NULL OR datname = $3) ORDER BY pid",
                self.p["app"], self.p["user"], self.p["database"],
            )  # fmt: skip
        finally:
            await conn.close()
        pids = [r["pid"] for r in rows]
        match = ", ".join(f"{k}={self.p[k]}" for k in self.one_of if self.p[k])
        if not pids:
            raise FaultError(f"pg-terminate: no backend matches {match}")
        if len(pids) > self.p["max"]:
            raise FaultError(
                f"pg-terminate: {len(pids)} backends match {match}, more than max={self.p['max']}"
            )
        self.target = pids
        shown = ", ".join(map(str, pids[:12])) + (" …" if len(pids) > 12 else "")
        return f"terminate {len(pids)} backends of {match}: pids {shown}"

    async def inject(self) -> str:
        if self.target is None:
            await self.describe()
        conn = await _pg_connect(str(self.t.pg_dsn))
        try:  # only pids that still belong to the match (a pid may have been reused)
            n = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE pid = ANY($1::int[]) AND coalesce(application_name, '') NOT LIKE 'loadtop%'"
                " AND ($2::text IS NULL OR application_name = $2)"
                " AND ($3::text IS NULL OR usename = $3) AND ($4::text IS NULL OR datname = $4)",
                self.target, self.p["app"], self.p["user"], self.p["database"],
            )  # fmt: skip
        finally:
            await conn.close()
        return f"terminated {n} of {len(self.target)} backends"


class _HeldTx(_PgAction):
    """A connection holding a transaction open until heal() or its hard bound
    (idle_in_transaction_session_timeout: the server ends it even if loadtop dies)."""

    max_duration = 600.0

    def __init__(self, params: Mapping[str, str], targets: FaultTargets) -> None:
        super().__init__(params, targets)
        self.conn: Any = None

    @property
    def duration(self) -> float | None:
        return float(self.p["s"])

    async def _open(self) -> Any:
        bound = int((self.p["s"] + 5) * 1000)
        conn = await _pg_connect(str(self.t.pg_dsn), lock_timeout="5000",
                                 idle_in_transaction_session_timeout=str(bound))  # fmt: skip
        await conn.execute("BEGIN")
        return conn

    async def heal(self) -> str | None:
        conn, self.conn = self.conn, None
        if conn is None:
            return None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.execute("ROLLBACK"), 3)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 3)
        if not conn.is_closed():
            conn.terminate()
        return "rolled back and closed"


class PgLock(_HeldTx):
    name = "pg-lock"
    summary = "LOCK TABLE t IN MODE in an open transaction for N s (the migration stall)"
    params = {
        "table": Param("ident", required=True, help="the table, e.g. public.orders"),
        "mode": Param("choice", "ACCESS EXCLUSIVE", choices=LOCK_MODES, help="the lock mode"),
        "s": Param("seconds", 10.0, maximum=600.0, help="how long to hold it"),
    }
    suggest_from = {"table": "pg_table"}

    async def describe(self) -> str:
        conn = await _pg_connect(str(self.t.pg_dsn))
        try:
            oid = await conn.fetchval("SELECT to_regclass($1)::oid", self.p["table"])
        finally:
            await conn.close()
        if oid is None:
            raise FaultError(f"pg-lock: no table {self.p['table']} on the target")
        self.target = self.p["table"]
        return f"LOCK TABLE {self.p['table']} IN {self.p['mode']} MODE for {self.p['s']:g} s"

    async def inject(self) -> str:
        if self.target is None:
            await self.describe()
        conn = await self._open()
        try:
            await conn.execute(f"LOCK TABLE {self.target} IN {self.p['mode']} MODE")
        except BaseException:
            await conn.close()
            raise
        self.conn = conn
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        return f"holding {self.p['mode']} on {self.target} (pid {pid}) for {self.p['s']:g} s"


class PgIdleTx(_HeldTx):
    name = "pg-idle-tx"
    summary = "an idle-in-transaction session holding a row lock for N s"
    params = {
        "table": Param("ident", required=True, help="the table, e.g. public.orders"),
        "id": Param("str", required=True, help="the row's key value"),
        "column": Param("ident", "id", help="the key column (default id)"),
        "s": Param("seconds", 10.0, maximum=600.0, help="how long to hold it"),
    }
    suggest_from = {"table": "pg_table", "id": "pg_row"}

    def _sql(self) -> str:
        return (f"SELECT 1 FROM {self.p['table']} WHERE {self.p['column']}::text = $1"
                " LIMIT 1 FOR UPDATE")  # fmt: skip

    async def describe(self) -> str:
        conn = await _pg_connect(str(self.t.pg_dsn))
        try:
            found = await conn.fetchval(self._sql().replace(" FOR UPDATE", ""), self.p["id"])
        except Exception as e:
            raise FaultError(f"pg-idle-tx: {type(e).__name__}: {str(e)[:120]}") from None
        finally:
            await conn.close()
        if not found:
            raise FaultError(
                f"pg-idle-tx: no row {self.p['column']} = {self.p['id']} in {self.p['table']}"
            )
        self.target = (self.p["table"], self.p["id"])
        return (f"idle in transaction holding the row {self.p['column']} = {self.p['id']}"
                f" of {self.p['table']} for {self.p['s']:g} s")  # fmt: skip

    async def inject(self) -> str:
        if self.target is None:
            await self.describe()
        conn = await self._open()
        try:
            await conn.fetchval(self._sql(), self.p["id"])
        except BaseException:
            await conn.close()
            raise
        self.conn = conn
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        return f"pid {pid} idle in transaction on {self.p['table']} row {self.p['id']}"


# ---- redis ---------------------------------------------------------------------------


class _RedisAction(Action):
    needs = "redis"

    @classmethod
    def available(cls, t: FaultTargets) -> str | None:
        return None if t.redis_url else f"{cls.name} needs --redis"

    def _connect(self) -> Any:
        """A client of the action's own (named, with timeouts); `async with` closes
        it however the block ends."""
        import redis.asyncio as aioredis

        return aioredis.from_url(str(self.t.redis_url), client_name="loadtop:fault",
                                 socket_timeout=5, socket_connect_timeout=5)  # fmt: skip


class RedisPause(_RedisAction):
    name = "redis-pause"
    summary = "CLIENT PAUSE ms WRITE|ALL"
    params = {
        "ms": Param("ms", 5000, maximum=60_000, help="how long, in ms"),
        "mode": Param("choice", "WRITE", choices=("WRITE", "ALL"), help="WRITE or ALL"),
    }
    max_duration = 60.0

    @property
    def duration(self) -> float | None:
        return self.p["ms"] / 1000.0

    async def describe(self) -> str:
        self.target = self.p["mode"]
        return f"CLIENT PAUSE {self.p['ms']} {self.p['mode']} (every client of the server)"

    async def inject(self) -> str:
        # the heal's connection is opened (and named) before the pause: under
        # PAUSE ALL a new connection's handshake would wait for the pause too
        self.conn = r = self._connect()
        await r.ping()
        # the server's own timeout is the hard bound, even if loadtop dies
        await r.execute_command("CLIENT", "PAUSE", str(self.p["ms"]), self.p["mode"])
        return f"paused {self.p['mode']} for {self.p['ms']} ms"

    async def heal(self) -> str | None:
        r, self.conn = getattr(self, "conn", None), None
        if r is None:
            return None
        if self.p["mode"] == "ALL":
            # Redis postpones every command of a paused client, CLIENT UNPAUSE included:
            # a PAUSE ALL ends at its own timeout (at most 60 s), not earlier
            await r.aclose()
            return f"ends at its own timeout ({self.p['ms']} ms)"
        try:
            await r.execute_command("CLIENT", "UNPAUSE")
        finally:
            await r.aclose()
        return "unpaused"


class RedisKillClients(_RedisAction):
    name = "redis-kill-clients"
    summary = "CLIENT KILL of the application's connections (by name, user or addr)"
    params = {
        "name": Param("str", help="the application's client name (CLIENT SETNAME)"),
        "user": Param("str", help="its ACL user"),
        "addr": Param("str", help="its address: host or host:port"),
        "max": Param("int", 200, maximum=5000, help="refuse a match larger than this"),
    }
    one_of = ("name", "user", "addr")
    suggest_from = {"name": "redis_name"}

    def _match(self, c: Mapping[str, Any]) -> bool:
        if str(c.get("name", "")).startswith(OWN_PREFIX):
            return False
        if self.p["name"] and c.get("name") != self.p["name"]:
            return False
        if self.p["user"] and c.get("user") != self.p["user"]:
            return False
        addr = self.p["addr"]
        return not (
            addr and c.get("addr") != addr and not str(c.get("addr", "")).startswith(addr + ":")
        )

    async def _clients(self) -> list[dict[str, Any]]:
        async with self._connect() as r:
            me = await r.client_id()
            return [c for c in await r.client_list() if int(c["id"]) != me and self._match(c)]

    async def describe(self) -> str:
        found = await self._clients()
        match = ", ".join(f"{k}={self.p[k]}" for k in self.one_of if self.p[k])
        if not found:
            raise FaultError(f"redis-kill-clients: no client matches {match}")
        if len(found) > self.p["max"]:
            raise FaultError(
                f"redis-kill-clients: {len(found)} clients match {match}, more than max={self.p['max']}"
            )
        self.target = [int(c["id"]) for c in found]
        addrs = ", ".join(c["addr"] for c in found[:8]) + (" …" if len(found) > 8 else "")
        return f"kill {len(found)} clients of {match}: {addrs}"

    async def inject(self) -> str:
        if self.target is None:
            await self.describe()
        n = 0
        async with self._connect() as r:  # by id, and only ids that still match
            still = {int(c["id"]) for c in await r.client_list() if self._match(c)}
            for cid in self.target:
                if cid in still:
                    n += int(await r.execute_command("CLIENT", "KILL", "ID", str(cid)) or 0)
        return f"killed {n} of {len(self.target)} clients"


class RedisLockSteal(_RedisAction):
    name = "redis-lock-steal"
    summary = "DEL of one lock key the application holds (the split-brain case)"
    params = {"key": Param("str", required=True, help="the exact lock key")}
    suggest_from = {"key": "redis_lock_key"}

    async def describe(self) -> str:
        async with self._connect() as r:
            exists = await r.exists(self.p["key"])
            ttl = await r.pttl(self.p["key"])
        self.target = self.p["key"]
        state = (
            f"held, ttl {ttl} ms"
            if exists and ttl >= 0
            else "held, no ttl"
            if exists
            else "not held now"
        )
        return f"DEL {self.p['key']} ({state})"

    async def inject(self) -> str:
        async with self._connect() as r:
            n = await r.delete(self.p["key"])
        return f"deleted {self.p['key']}" if n else f"{self.p['key']} was not held"


# ---- http, through the proxy -----------------------------------------------------------


class _HttpAction(Action):
    needs = "http-proxy"
    max_duration = 600.0

    @classmethod
    def available(cls, t: FaultTargets) -> str | None:
        return None if t.proxy is not None else f"{cls.name} needs --http URL --http-via-proxy"

    @property
    def duration(self) -> float | None:
        return float(self.p["s"])

    async def heal(self) -> str | None:
        self.t.proxy.reset()
        return "proxy passes through"


class HttpLatency(_HttpAction):
    name = "http-latency"
    summary = "add latency (and jitter) to every request through the proxy for N s"
    params = {
        "ms": Param("ms", 200, maximum=30_000, help="added latency in ms"),
        "jitter": Param("ms", 0, maximum=30_000, help="± jitter in ms"),
        "s": Param("seconds", 10.0, maximum=600.0, help="how long"),
    }

    async def describe(self) -> str:
        self.target = self.t.proxy.upstream
        return f"+{self.p['ms']} ms ±{self.p['jitter']} ms on requests to {self.target} for {self.p['s']:g} s"

    async def inject(self) -> str:
        self.t.proxy.set(latency_ms=self.p["ms"], jitter_ms=self.p["jitter"])
        return f"+{self.p['ms']} ms ±{self.p['jitter']} ms"


class HttpDrop(_HttpAction):
    name = "http-drop"
    summary = "drop a percentage of connections through the proxy for N s"
    params = {
        "pct": Param("pct", 50.0, maximum=100.0, help="percentage of connections to drop"),
        "s": Param("seconds", 10.0, maximum=600.0, help="how long"),
    }

    async def describe(self) -> str:
        self.target = self.t.proxy.upstream
        return f"drop {self.p['pct']:g}% of connections to {self.target} for {self.p['s']:g} s"

    async def inject(self) -> str:
        self.t.proxy.set(drop_pct=self.p["pct"])
        return f"dropping {self.p['pct']:g}% of connections"


class Http503(_HttpAction):
    name = "http-503"
    summary = "answer 503 to every request through the proxy for N s"
    params = {"s": Param("seconds", 10.0, maximum=600.0, help="how long")}

    async def describe(self) -> str:
        self.target = self.t.proxy.upstream
        return f"503 for every request to {self.target} for {self.p['s']:g} s"

    async def inject(self) -> str:
        self.t.proxy.set(unavailable=True)
        return "answering 503"


ACTIONS: dict[str, type[Action]] = {
    a.name: a
    for a in (PodKill, PgTerminate, PgLock, PgIdleTx, RedisPause, RedisKillClients,
              RedisLockSteal, HttpLatency, HttpDrop, Http503)
}  # fmt: skip
