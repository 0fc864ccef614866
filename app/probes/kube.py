"""A thin Kubernetes API client: kubeconfig (or in-cluster) credentials and
authenticated GETs over httpx. Three read-only endpoints is all loadtop needs,
so no SDK (see the reference: kubernetes-asyncio drags a second HTTP stack,
lightkube needs httpx2; this is a few hundred lines with no dependency beyond
httpx and PyYAML).

Supported, as kubectl reads them:
- `KUBECONFIG` as a `:`-separated list (the first file that defines a name
  wins), `~/.kube/config` otherwise; `current-context` or an explicit context;
- cluster: `server`, `certificate-authority(-data)`, `insecure-skip-tls-verify`,
  `tls-server-name`; relative paths resolve against the kubeconfig's directory;
- user: `token`, `tokenFile`, `client-certificate(-data)` + `client-key(-data)`,
  `exec` plugins (client.authentication.k8s.io v1 and v1beta1), with the
  credential cached until `expirationTimestamp` and refreshed after a 401;
- in-cluster service-account credentials (token re-read every minute).
Not supported natively: `auth-provider` (removed in client-go 1.26) and basic
auth; for those, and any other credential kubectl understands, the same GETs go
through `kubectl get --raw` (`KubectlClient`) when kubectl is on the PATH.

Also the Kubernetes quantity parser (`parse_quantity`), in full, with Decimal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx

from app.probes.base import ProbeError

# ---- quantities -------------------------------------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
}  # fmt: skip
_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<exp>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$"
)


def parse_quantity(q: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("250m", "1.5Gi", "429151n", "1e3", "2E")
    as an exact Decimal in base units (cores, bytes). Raises ValueError."""
    if isinstance(q, int | float) and not isinstance(q, bool):
        return Decimal(str(q))
    if not isinstance(q, str):
        raise ValueError(f"not a quantity: {q!r}")
    m = _QUANTITY.match(q.strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {q!r}")
    try:
        n = Decimal(m["num"])
    except InvalidOperation:
        raise ValueError(f"not a Kubernetes quantity: {q!r}") from None
    if m["exp"]:
        return n.scaleb(int(m["exp"][1:]))
    s = m["suffix"] or ""
    return n * _BINARY[s] if s in _BINARY else n * _DECIMAL[s]


def cores(q: Any) -> float | None:
    try:
        return float(parse_quantity(q)) if q is not None else None
    except ValueError:
        return None


def nbytes(q: Any) -> int | None:
    try:
        return int(parse_quantity(q)) if q is not None else None
    except ValueError:
        return None


class KubectlNeeded(ProbeError):
    """The kubeconfig's credentials need kubectl (auth-provider, basic auth)."""

    def __init__(self, context: str, namespace: str, message: str) -> None:
        super().__init__(message)
        self.context = context
        self.namespace = namespace


# ---- kubeconfig ---------------------------------------------------------------------

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class KubeConfig:
    """What a client needs for one context, resolved from kubeconfig files."""

    server: str
    context: str = ""
    namespace: str = "default"
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    token: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    exec: dict[str, Any] | None = None
    base_dir: str = "."
    cluster: dict[str, Any] = field(default_factory=dict)
    token_reread_s: float | None = None  # in-cluster: projected tokens rotate


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ProbeError(
            f"cannot read kubeconfig {path}: {e}: fix it or point KUBECONFIG elsewhere"
        ) from None
    if not isinstance(doc, dict):
        raise ProbeError(f"kubeconfig {path} is not a mapping: point KUBECONFIG at a kubeconfig")
    return doc


def kubeconfig_paths(env: str | None = None) -> list[Path]:
    env = os.environ.get("KUBECONFIG") if env is None else env
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def _b64(s: str | None) -> bytes | None:
    return base64.b64decode(s) if s else None


def load_kubeconfig(context: str | None = None, paths: list[Path] | None = None) -> KubeConfig:
    """Resolve one context from the kubeconfig files (first definition of a name wins)."""
    files = [p for p in (paths if paths is not None else kubeconfig_paths()) if p.exists()]
    if not files:
        raise ProbeError(
            "no kubeconfig found (KUBECONFIG or ~/.kube/config): set KUBECONFIG, "
            "or run loadtop in the cluster with a service account"
        )
    clusters: dict[str, tuple[dict, Path]] = {}
    users: dict[str, tuple[dict, Path]] = {}
    contexts: dict[str, dict] = {}
    current = None
    for path in files:
        doc = _load_yaml(path)
        for kind, into in (("clusters", clusters), ("users", users)):
            for item in doc.get(kind) or []:
                name = item.get("name")
                if name is not None and name not in into:
                    into[name] = (item.get(kind[:-1]) or {}, path.parent)
        for item in doc.get("contexts") or []:
            contexts.setdefault(item.get("name"), item.get("context") or {})
        current = current or doc.get("current-context")
    name = context or current
    if not name:
        raise ProbeError("kubeconfig has no current-context: pass --k8s-context")
    if name not in contexts:
        raise ProbeError(
            f"context {name!r} is not in the kubeconfig: pick one of {sorted(contexts)}"
        )
    ctx = contexts[name]
    cluster, cdir = clusters.get(ctx.get("cluster") or "", ({}, files[0].parent))
    user, udir = users.get(ctx.get("user") or "", ({}, files[0].parent))
    if not cluster.get("server"):
        raise ProbeError(f"cluster of context {name!r} has no server: fix the kubeconfig")
    unsupported = [k for k in ("auth-provider", "username", "password") if user.get(k)]
    if unsupported and not user.get("token") and not user.get("exec"):
        raise KubectlNeeded(
            name,
            ctx.get("namespace") or "default",
            f"kubeconfig user of context {name!r} uses {unsupported[0]}, which loadtop's client "
            "does not support: install kubectl (used as a fallback), or use an exec plugin "
            "(e.g. gke-gcloud-auth-plugin, kubelogin) or a token",
        )

    def rel(p: str | None, base: Path) -> str | None:
        return str((base / Path(p).expanduser()).resolve()) if p else None

    return KubeConfig(
        server=cluster["server"].rstrip("/"),
        context=name,
        namespace=ctx.get("namespace") or "default",
        ca_file=rel(cluster.get("certificate-authority"), cdir),
        ca_data=_b64(cluster.get("certificate-authority-data")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name"),
        token=user.get("token"),
        token_file=rel(user.get("tokenFile"), udir),
        cert_file=rel(user.get("client-certificate"), udir),
        key_file=rel(user.get("client-key"), udir),
        cert_data=_b64(user.get("client-certificate-data")),
        key_data=_b64(user.get("client-key-data")),
        exec=user.get("exec"),
        base_dir=str(udir),
        cluster=cluster,
    )


def in_cluster_config(sa_dir: Path = SA_DIR, env: dict[str, str] | None = None) -> KubeConfig:
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (sa_dir / "token").exists():
        raise ProbeError(
            "not running in a cluster (no KUBERNETES_SERVICE_HOST or service-account token): "
            "give a kubeconfig"
        )
    host = f"[{host}]" if ":" in host else host
    ns_file = sa_dir / "namespace"
    return KubeConfig(
        server=f"https://{host}:{port}",
        context="in-cluster",
        namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
        ca_file=str(sa_dir / "ca.crt") if (sa_dir / "ca.crt").exists() else None,
        token_file=str(sa_dir / "token"),
        token_reread_s=60.0,
    )


def auto_config(context: str | None = None) -> KubeConfig:
    """kubeconfig when there is one (or a context is asked for), else in-cluster."""
    if context or any(p.exists() for p in kubeconfig_paths()):
        return load_kubeconfig(context)
    return in_cluster_config()


# ---- client -------------------------------------------------------------------------


@dataclass
class _Credential:
    token: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    expires: float | None = None  # epoch seconds
    obtained: float = field(default_factory=time.time)


def _parse_time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class _Paged:
    """Paging over a list endpoint, for any client with an authenticated `get`."""

    async def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        raise NotImplementedError

    async def list_items(
        self, path: str, params: dict[str, str] | None = None, *, page: int = 500, pages: int = 20
    ) -> tuple[httpx.Response, list[dict[str, Any]]]:
        """A list endpoint, page by page (`limit` / `continue`). Returns the last
        response (a non-200 one as soon as it comes) and every item."""
        items: list[dict[str, Any]] = []
        q = {**(params or {}), "limit": str(page)}
        for _ in range(pages):
            resp = await self.get(path, q)
            if resp.status_code != 200:
                return resp, []
            body = resp.json()
            items += body.get("items") or []
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                break
            q = {**q, "continue": token}
        return resp, items


class KubeClient(_Paged):
    """Authenticated GETs against one API server."""

    def __init__(self, cfg: KubeConfig, *, timeout: float = 5.0) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._tmp: str | None = None
        self._exec_cred: _Credential | None = None
        self._token_cache: tuple[str, float] | None = None
        self._cert_key: tuple[bytes, bytes] | None = None  # the client cert the http client has
        self._exec_lock = asyncio.Lock()

    # ---- TLS and credentials -------------------------------------------------
    def _write_secret(self, name: str, data: bytes) -> str:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="loadtop-kube-")
            os.chmod(self._tmp, 0o700)
        path = os.path.join(self._tmp, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def _ssl_context(self, cert: tuple[bytes, bytes] | None) -> ssl.SSLContext | bool:
        cfg = self.cfg
        if not cfg.server.startswith("https"):
            return True
        ctx = ssl.create_default_context()
        if cfg.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif cfg.ca_data or cfg.ca_file:
            ctx = ssl.create_default_context(
                cafile=cfg.ca_file, cadata=cfg.ca_data.decode() if cfg.ca_data else None
            )
        cert_file, key_file = cfg.cert_file, cfg.key_file
        if cert is not None:
            cert_file = self._write_secret("client.crt", cert[0])
            key_file = self._write_secret("client.key", cert[1])
        elif cfg.cert_data and cfg.key_data:
            cert_file = self._write_secret("client.crt", cfg.cert_data)
            key_file = self._write_secret("client.key", cfg.key_data)
        if cert_file and key_file:
            ctx.load_cert_chain(cert_file, key_file)
        return ctx

    async def _exec_credential(self, stale: _Credential | None = None) -> _Credential:
        """The cached credential, or a new one when it expires or was refused
        (`stale`); concurrent requests share one run of the plugin."""
        async with self._exec_lock:
            c = self._exec_cred
            now = time.time()
            # a credential got a moment ago serves the requests of this poll even if
            # its expiry is already past (clock skew, very short-lived tokens)
            fresh = c is not None and (
                c.expires is None or c.expires > now + 10 or now - c.obtained < 1.0
            )
            if c is not None and fresh and (stale is None or c is not stale):
                return c
            self._exec_cred = c = await run_exec_plugin(self.cfg, timeout=max(self.timeout, 10.0))
            return c

    def _file_token(self) -> str | None:
        cfg = self.cfg
        if not cfg.token_file:
            return None
        cached = self._token_cache
        ttl = cfg.token_reread_s
        if cached and (ttl is None or time.monotonic() - cached[1] < ttl):
            return cached[0]
        try:
            tok = Path(cfg.token_file).read_text().strip()
        except OSError as e:
            raise ProbeError(f"cannot read the token file {cfg.token_file}: {e.strerror}") from e
        self._token_cache = (tok, time.monotonic())
        return tok

    async def _prepare(
        self, stale: _Credential | None = None
    ) -> tuple[dict[str, str], _Credential | None]:
        headers = {"Accept": "application/json", "User-Agent": "loadtop-probe"}
        cert = None
        cred = None
        token = self.cfg.token or self._file_token()
        if self.cfg.exec:
            cred = await self._exec_credential(stale)
            token = cred.token or token
            if cred.cert_data and cred.key_data:
                cert = (cred.cert_data, cred.key_data)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self._http is None or cert != self._cert_key:
            old, self._http = (
                self._http,
                httpx.AsyncClient(
                    base_url=self.cfg.server,
                    verify=self._ssl_context(cert),
                    timeout=self.timeout,
                    trust_env=False,
                ),
            )
            self._cert_key = cert
            if old is not None:
                await old.aclose()
        return headers, cred

    async def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        """GET with credentials; a 401 with an exec plugin re-runs the plugin once."""
        headers, cred = await self._prepare()
        assert self._http is not None
        extensions = {"sni_hostname": self.cfg.tls_server_name} if self.cfg.tls_server_name else {}
        resp = await self._http.get(path, params=params, headers=headers, extensions=extensions)
        if resp.status_code == 401 and self.cfg.exec:
            headers, _ = await self._prepare(stale=cred)
            resp = await self._http.get(path, params=params, headers=headers, extensions=extensions)
        return resp

    async def delete(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        """DELETE with credentials (pod-kill, app/faults/actions.py: the one write)."""
        headers, cred = await self._prepare()
        assert self._http is not None
        extensions = {"sni_hostname": self.cfg.tls_server_name} if self.cfg.tls_server_name else {}
        resp = await self._http.delete(path, params=params, headers=headers, extensions=extensions)
        if resp.status_code == 401 and self.cfg.exec:
            headers, _ = await self._prepare(stale=cred)
            resp = await self._http.delete(
                path, params=params, headers=headers, extensions=extensions
            )
        return resp

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class KubectlClient(_Paged):
    """The same GETs (and pod-kill's DELETE) through `kubectl get|delete --raw`,
    for credentials only kubectl understands. Slower (a process per request)
    but complete."""

    def __init__(
        self,
        context: str | None,
        namespace: str,
        *,
        kubectl: str = "kubectl",
        timeout: float = 10.0,
    ) -> None:
        self.cfg = KubeConfig(server="kubectl", context=context or "", namespace=namespace)
        self.kubectl = kubectl
        self.timeout = timeout

    async def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        return await self._raw("get", path, params)

    async def delete(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        return await self._raw("delete", path, params)

    async def _raw(self, verb: str, path: str, params: dict[str, str] | None) -> httpx.Response:
        url = path + ("?" + str(httpx.QueryParams(params)) if params else "")
        args = [self.kubectl, verb, "--raw", url]
        if self.cfg.context:
            args += ["--context", self.cfg.context]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except (asyncio.CancelledError, TimeoutError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if proc.returncode == 0:
            return httpx.Response(200, content=out)
        text = err.decode(errors="replace")
        code = 500
        for status, words in ((401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"),
                              (503, "ServiceUnavailable")):  # fmt: skip
            if f"({words})" in text or f"({words.lower()})" in text:
                code = status
                break
        return httpx.Response(code, content=text.encode())

    async def close(self) -> None:
        pass


async def connect(
    context: str | None = None, *, config: KubeConfig | None = None, timeout: float = 10.0
) -> KubeClient | KubectlClient:
    """A client for `config` (else the kubeconfig or in-cluster credentials),
    or kubectl when only kubectl understands the credentials (auth-provider,
    basic auth). Raises ProbeError (KubectlNeeded without kubectl) saying what
    to fix."""
    try:
        cfg = config if config is not None else await asyncio.to_thread(auto_config, context)
    except KubectlNeeded as e:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise
        return KubectlClient(e.context, e.namespace, kubectl=kubectl, timeout=max(timeout, 5.0))
    return KubeClient(cfg, timeout=timeout)


async def run_exec_plugin(cfg: KubeConfig, *, timeout: float = 10.0) -> _Credential:
    """Run a client-go credential plugin (ExecCredential v1 / v1beta1)."""
    ex = cfg.exec or {}
    api = ex.get("apiVersion", "client.authentication.k8s.io/v1beta1")
    if api not in ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"):
        raise ProbeError(f"exec plugin apiVersion {api} is not supported: use v1 or v1beta1")
    cmd = ex.get("command")
    if not cmd:
        raise ProbeError("exec plugin has no command: fix the kubeconfig user")
    if os.sep in cmd and not os.path.isabs(cmd):
        cmd = str(Path(cfg.base_dir) / cmd)
    if ex.get("interactiveMode") == "Always":
        raise ProbeError(
            f"exec plugin {cmd} needs an interactive terminal: run it once in a shell "
            "(log in), then start loadtop"
        )
    env = dict(os.environ)
    for item in ex.get("env") or []:
        env[item["name"]] = item["value"]
    info: dict[str, Any] = {
        "apiVersion": api,
        "kind": "ExecCredential",
        "spec": {"interactive": False},
    }
    if ex.get("provideClusterInfo"):
        info["spec"]["cluster"] = {
            k: v
            for k, v in {
                "server": cfg.server,
                "tls-server-name": cfg.tls_server_name,
                "insecure-skip-tls-verify": cfg.insecure,
                "certificate-authority-data": base64.b64encode(cfg.ca_data).decode()
                if cfg.ca_data
                else None,
                "config": (cfg.cluster.get("extensions") or [{}])[0].get("extension")
                if cfg.cluster.get("extensions")
                else None,
            }.items()
            if v not in (None, False)
        }
    env["KUBERNETES_EXEC_INFO"] = json.dumps(info)
    try:
        proc = await asyncio.create_subprocess_exec(
            cmd, *(ex.get("args") or []), env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as e:
        hint = ex.get("installHint") or "install it or fix the command in the kubeconfig"
        raise ProbeError(f"cannot run exec plugin {cmd}: {e.strerror}: {hint.strip()}") from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.CancelledError:  # the poll timed out or the session stops
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise ProbeError(
            f"exec plugin {cmd} did not finish in {timeout:g} s: run it by hand"
        ) from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ProbeError(
            f"exec plugin {cmd} failed (exit {proc.returncode}: {tail[0][:200]}): "
            "run it by hand to see why"
        )
    try:
        doc = json.loads(out)
        status = doc["status"]
    except (ValueError, KeyError, TypeError):
        raise ProbeError(
            f"exec plugin {cmd} printed no ExecCredential status: run it by hand"
        ) from None
    cred = _Credential(
        token=status.get("token"),
        cert_data=status.get("clientCertificateData", "").encode() or None,
        key_data=status.get("clientKeyData", "").encode() or None,
    )
    if status.get("expirationTimestamp"):
        with contextlib.suppress(ValueError):
            cred.expires = _parse_time(status["expirationTimestamp"])
    if not cred.token and not (cred.cert_data and cred.key_data):
        raise ProbeError(f"exec plugin {cmd} returned neither a token nor a client certificate")
    return cred
