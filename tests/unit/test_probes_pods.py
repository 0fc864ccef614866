"""The pods probe: the Kubernetes quantity grammar, kubeconfig variants (token,
tokenFile, client certificate with a CA made here, exec plugin, in-cluster)
against a loopback API server that serves the real PodList / PodMetricsList
shapes, Prometheus vector results, and local processes through psutil."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from aiohttp import web

from app.probes.base import ProbeError, run_poll
from app.probes.kube import (
    in_cluster_config,
    load_kubeconfig,
    parse_quantity,
)
from app.probes.pods import KubernetesPodsProbe, LocalProcessesProbe, PrometheusPodsProbe

# ---- quantities -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", "0"), ("1", "1"), ("250m", "0.25"), ("429151n", "0.000429151"),
        ("1500u", "0.0015"), ("1.5", "1.5"), (".5", "0.5"), ("5.", "5"), ("+2", "2"),
        ("-1k", "-1000"), ("1M", "1000000"), ("2G", "2000000000"), ("1T", "1e12"),
        ("1P", "1e15"), ("2E", "2e18"), ("408Ki", "417792"), ("1.5Gi", "1610612736"),
        ("1Mi", "1048576"), ("1Ti", str(2**40)), ("1Pi", str(2**50)), ("1Ei", str(2**60)),
        ("1e3", "1000"), ("1E3", "1000"), ("12e-3", "0.012"), ("1e+2", "100"),
        ("0.1m", "0.0001"),
    ],
)  # fmt: skip
def test_quantity_grammar(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("bad", ["", "1Gb", "Mi", "1 Mi", "1.2.3", "e3", "1e", "1ki", "--1", "1K"])
def test_quantity_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(bad)


def test_quantity_is_exact() -> None:
    assert parse_quantity("100m") * 3 == Decimal("0.3")  # no float drift
    assert parse_quantity("0.1Ki") == Decimal("102.4")


# ---- a loopback API server ----------------------------------------------------------------

POD_LIST = {
    "kind": "PodList",
    "apiVersion": "v1",
    "metadata": {"resourceVersion": "1"},
    "items": [
        {
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {"name": "app", "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                                                  "requests": {"cpu": "100m"}}},
                    {"name": "sidecar", "resources": {}},
                ]
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "app", "ready": True, "restartCount": 3,
                     "state": {"running": {"startedAt": "2026-11-22T04:00:00Z"}},
                     "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                                  "finishedAt": "2026-11-22T03:59:58Z"}}},
                    {"name": "sidecar", "ready": True, "restartCount": 0,
                     "state": {"running": {}}, "lastState": {}},
                ],
            },
        },
        {
            "metadata": {"name": "web-2", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app",
                                     "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "app", "ready": False, "restartCount": 7,
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}},
                ],
            },
        },
    ],
}  # fmt: skip
POD_METRICS = {
    "kind": "PodMetricsList",
    "apiVersion": "metrics.k8s.io/v1beta1",
    "metadata": {},
    "items": [
        {"metadata": {"name": "web-1", "namespace": "shop"}, "timestamp": "2026-11-22T04:18:49Z",
         "window": "34.475s", "containers": [
             {"name": "app", "usage": {"cpu": "429151n", "memory": "200Mi"}},
             {"name": "sidecar", "usage": {"cpu": "1m", "memory": "408Ki"}}]},
    ],
}  # fmt: skip


class ApiServer:
    """PodList and PodMetricsList on 127.0.0.1, with the auth a test asks for."""

    def __init__(self, *, token: str | None = None, ssl_ctx: ssl.SSLContext | None = None,
                 metrics_status: int = 200, pods_status: int = 200) -> None:  # fmt: skip
        self.token = token
        self.ssl_ctx = ssl_ctx
        self.metrics_status = metrics_status
        self.pods_status = pods_status
        self.requests: list[dict[str, Any]] = []
        self.peer_cns: list[str] = []

    def _auth(self, request: web.Request) -> web.Response | None:
        self.requests.append({"path": request.path, "query": dict(request.query),
                              "auth": request.headers.get("Authorization")})  # fmt: skip
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            self.peer_cns.append(dict(x[0] for x in peer["subject"])["commonName"])
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return None

    async def pods(self, request: web.Request) -> web.Response:
        if denied := self._auth(request):
            return denied
        if self.pods_status != 200:
            return web.json_response({"kind": "Status", "code": self.pods_status},
                                     status=self.pods_status)  # fmt: skip
        return web.json_response(self._page(POD_LIST, request))

    @staticmethod
    def _page(doc: dict, request: web.Request) -> dict:
        """`limit` / `continue` as the API server pages lists."""
        if "limit" not in request.query:
            return doc
        start, n = int(request.query.get("continue") or 0), int(request.query["limit"])
        items = doc["items"][start : start + n]
        more = start + n < len(doc["items"])
        meta = {**doc["metadata"], **({"continue": str(start + n)} if more else {})}
        return {**doc, "metadata": meta, "items": items}

    async def metrics(self, request: web.Request) -> web.Response:
        if denied := self._auth(request):
            return denied
        if self.metrics_status != 200:
            return web.Response(status=self.metrics_status, text="404 page not found")
        return web.json_response(self._page(POD_METRICS, request))

    async def __aenter__(self) -> ApiServer:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self.pods)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.ssl_ctx else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=loadtop-test-ca")  # fmt: skip
    for name, cn, ext in (
        ("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        (
            "named",
            "kubernetes",
            "subjectAltName=DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "loadtop-sre", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(
            ext + "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        )
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return d


def server_ssl(pki: Path, require_client_cert: bool, name: str = "server") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.crt")
    return ctx


def write_kubeconfig(path: Path, server: str, user: dict, *, cluster: dict | None = None,
                     namespace: str = "shop", name: str = "stage") -> Path:  # fmt: skip
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name,
                                                "namespace": namespace}}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def b64(p: Path) -> str:
    import base64

    return base64.b64encode(p.read_bytes()).decode()


def check_keys(data: dict) -> None:
    """Only keys that app.probes.schema declares (detectors and panes read those)."""
    from app.probes import schema

    assert set(data) <= set(schema.PodsReading.__annotations__)
    for c in data["containers"]:
        assert set(c) <= set(schema.PodContainer.__annotations__)


def check_reading(data: dict) -> None:
    check_keys(data)
    rows = {(c["pod"], c["container"]): c for c in data["containers"]}
    app = rows[("web-1", "app")]
    assert app["cpu_cores"] == pytest.approx(0.000429151)
    assert app["memory_bytes"] == 200 * 2**20
    assert app["cpu_limit_cores"] == 0.5 and app["memory_limit_bytes"] == 256 * 2**20
    assert app["restarts"] == 3 and app["last_reason"] == "OOMKilled" and app["ready"] is True
    assert rows[("web-1", "sidecar")]["memory_bytes"] == 408 * 1024
    assert rows[("web-1", "sidecar")]["cpu_limit_cores"] is None
    crash = rows[("web-2", "app")]
    assert crash["waiting_reason"] == "CrashLoopBackOff" and crash["restarts"] == 7
    assert crash["ready"] is False and crash["cpu_cores"] is None  # no metrics for it
    assert crash["memory_limit_bytes"] == 2**30


async def test_token_over_tls_with_ca_data(pki: Path, tmp_path: Path) -> None:
    async with ApiServer(token="s3cret", ssl_ctx=server_ssl(pki, False)) as api:
        kc = write_kubeconfig(tmp_path / "config", api.url, {"token": "s3cret"},
                              cluster={"certificate-authority-data": b64(pki / "ca.crt")})  # fmt: skip
        probe = KubernetesPodsProbe(selector="app=web", config=load_kubeconfig(paths=[kc]))
        probe.page_size = 1  # two pods: two pages
        r = await run_poll(probe)
        await probe.close()
    assert r.ok, r.error
    assert r.data["source"] == "kubernetes" and r.data["namespace"] == "shop"
    check_reading(r.data)
    assert "warning" not in r.data
    assert {q["path"] for q in api.requests} == {
        "/api/v1/namespaces/shop/pods", "/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods"
    }  # fmt: skip
    assert all(q["query"]["labelSelector"] == "app=web" for q in api.requests)
    pod_pages = [q["query"] for q in api.requests if q["path"].startswith("/api/v1")]
    assert pod_pages == [{"labelSelector": "app=web", "limit": "1"},
                         {"labelSelector": "app=web", "limit": "1", "continue": "1"}]  # fmt: skip


async def test_client_certificate_files_and_data(pki: Path, tmp_path: Path) -> None:
    async with ApiServer(ssl_ctx=server_ssl(pki, True)) as api:
        # files, relative to the kubeconfig's own directory
        (tmp_path / "certs").mkdir()
        for f in ("ca.crt", "client.crt", "client.key"):
            (tmp_path / "certs" / f).write_bytes((pki / f).read_bytes())
        kc = write_kubeconfig(
            tmp_path / "config", api.url,
            {"client-certificate": "certs/client.crt", "client-key": "certs/client.key"},
            cluster={"certificate-authority": "certs/ca.crt"},
        )  # fmt: skip
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
        r = await run_poll(probe)
        await probe.close()
        assert r.ok, r.error
        check_reading(r.data)
        # the same as inline data
        kc2 = write_kubeconfig(
            tmp_path / "config2", api.url,
            {"client-certificate-data": b64(pki / "client.crt"),
             "client-key-data": b64(pki / "client.key")},
            cluster={"certificate-authority-data": b64(pki / "ca.crt")},
        )  # fmt: skip
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc2]))
        r = await run_poll(probe)
        tmpdir = probe._client._tmp
        assert tmpdir and oct(os.stat(tmpdir).st_mode & 0o777) == "0o700"
        await probe.close()
        assert not os.path.exists(tmpdir)  # key material deleted on close
        assert r.ok, r.error
        check_reading(r.data)
        # without a client certificate the TLS handshake fails: a reading, not a crash
        kc3 = write_kubeconfig(tmp_path / "config3", api.url, {},
                               cluster={"certificate-authority-data": b64(pki / "ca.crt")})  # fmt: skip
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc3]))
        r = await run_poll(probe)
        await probe.close()
        assert not r.ok and r.error
    assert set(api.peer_cns) == {"loadtop-sre"}


async def test_wrong_ca_is_refused(pki: Path, tmp_path: Path) -> None:
    async with ApiServer(token="t", ssl_ctx=server_ssl(pki, False)) as api:
        kc = write_kubeconfig(tmp_path / "config", api.url, {"token": "t"})  # system CAs only
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
        r = await run_poll(probe)
        await probe.close()
    assert not r.ok and "certificate" in r.error.lower()
    assert api.requests == []


async def test_tls_server_name(pki: Path, tmp_path: Path) -> None:
    # the server's certificate names kubernetes.default.svc, not 127.0.0.1
    async with ApiServer(token="t", ssl_ctx=server_ssl(pki, False, "named")) as api:
        ca = {"certificate-authority-data": b64(pki / "ca.crt")}
        plain = write_kubeconfig(tmp_path / "a", api.url, {"token": "t"}, cluster=ca)
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[plain]))
        r = await run_poll(probe)
        await probe.close()
        assert not r.ok  # hostname mismatch
        named = write_kubeconfig(tmp_path / "b", api.url, {"token": "t"},
                                 cluster={**ca, "tls-server-name": "kubernetes.default.svc"})  # fmt: skip
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[named]))
        r = await run_poll(probe)
        await probe.close()
        assert r.ok, r.error
        check_reading(r.data)


async def test_exec_plugin_client_certificate(pki: Path, tmp_path: Path) -> None:
    cert, key = (pki / "client.crt").read_text(), (pki / "client.key").read_text()
    plugin = tmp_path / "cert-plugin"
    plugin.write_text(
        f"#!{sys.executable}\nimport json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',"
        " 'kind': 'ExecCredential', 'status': {"
        f"'clientCertificateData': {cert!r}, 'clientKeyData': {key!r}}}}}))\n"
    )
    plugin.chmod(0o755)
    async with ApiServer(ssl_ctx=server_ssl(pki, True)) as api:
        user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                         "command": str(plugin)}}  # fmt: skip
        kc = write_kubeconfig(tmp_path / "config", api.url, user,
                              cluster={"certificate-authority-data": b64(pki / "ca.crt")})  # fmt: skip
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
        r = await run_poll(probe)
        await probe.close()
    assert r.ok, r.error
    check_reading(r.data)
    assert set(api.peer_cns) == {"loadtop-sre"}


EXEC_PLUGIN = """\
#!{python}
import json, os, sys, time
count = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls")
n = int(open(count).read()) + 1 if os.path.exists(count) else 1
open(count, "w").write(str(n))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["spec"]["interactive"] is False
assert sys.stdin.read() == ""
assert os.environ["FROM_KUBECONFIG"] == "yes"
exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + {ttl}))
print(json.dumps({{"apiVersion": "{api}", "kind": "ExecCredential",
                  "status": {{"token": "tok-" + str(n), "expirationTimestamp": exp}}}}))
"""


@pytest.mark.parametrize(
    "api_version", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]
)
async def test_exec_plugin_cached_until_expiry_and_rerun_after_401(
    tmp_path: Path, api_version: str
) -> None:
    plugin = tmp_path / "bin" / "get-token"
    plugin.parent.mkdir()
    plugin.write_text(EXEC_PLUGIN.format(python=sys.executable, ttl=3600, api=api_version))
    plugin.chmod(0o755)
    calls = plugin.parent / "calls"
    async with ApiServer(token="tok-1") as api:
        user = {"exec": {"apiVersion": api_version, "command": "./bin/get-token",
                         "env": [{"name": "FROM_KUBECONFIG", "value": "yes"}],
                         "interactiveMode": "Never", "provideClusterInfo": True}}  # fmt: skip
        kc = write_kubeconfig(tmp_path / "config", api.url, user)
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
        for _ in range(3):
            r = await run_poll(probe)
            assert r.ok, r.error
        assert calls.read_text() == "1"  # cached until it expires
        api.token = "tok-2"  # the server stops accepting the old token
        r = await run_poll(probe)
        assert r.ok, r.error
        assert calls.read_text() == "2"  # a 401 ran the plugin again
        check_reading(r.data)
        await probe.close()
    assert api.requests[-1]["auth"] == "Bearer tok-2"


async def test_exec_plugin_expired_credential_is_refreshed(tmp_path: Path) -> None:
    plugin = tmp_path / "get-token"
    plugin.write_text(EXEC_PLUGIN.format(python=sys.executable, ttl=-60,
                                         api="client.authentication.k8s.io/v1"))  # fmt: skip
    plugin.chmod(0o755)
    async with ApiServer() as api:
        user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                         "env": [{"name": "FROM_KUBECONFIG", "value": "yes"}]}}  # fmt: skip
        kc = write_kubeconfig(tmp_path / "config", api.url, user)
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
        for _ in range(2):
            assert (await run_poll(probe)).ok
            await asyncio.sleep(1.1)
        await probe.close()
    assert (tmp_path / "calls").read_text() == "2"  # one run per poll, shared by its requests
    assert [q["auth"] for q in api.requests][-1] == "Bearer tok-2"


async def test_exec_plugin_failure_says_what_to_do(tmp_path: Path) -> None:
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                     "command": str(tmp_path / "missing-plugin"),
                     "installHint": "install the cloud CLI"}}  # fmt: skip
    kc = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:9", user)
    probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
    r = await run_poll(probe)
    await probe.close()
    assert not r.ok and "missing-plugin" in r.error and "install the cloud CLI" in r.error


async def test_token_file_kubeconfig_list_and_context(tmp_path: Path) -> None:
    async with ApiServer(token="from-file") as api:
        (tmp_path / "tok").write_text("from-file\n")
        first = write_kubeconfig(tmp_path / "a", api.url, {"tokenFile": "tok"}, name="stage")
        doc = yaml.safe_load(first.read_text())
        # a second file redefines "stage" (ignored: the first file wins) and adds "other"
        second = {
            "current-context": "other",
            "clusters": [{"name": "stage", "cluster": {"server": "http://127.0.0.1:1"}},
                         {"name": "other", "cluster": {"server": api.url}}],
            "users": [{"name": "other", "user": {"token": "wrong"}}],
            "contexts": [{"name": "other", "context": {"cluster": "other", "user": "other",
                                                       "namespace": "ops"}}],
        }  # fmt: skip
        (tmp_path / "b").write_text(yaml.safe_dump(second))
        env = os.pathsep.join([str(first), str(tmp_path / "b")])
        from app.probes.kube import kubeconfig_paths

        cfg = load_kubeconfig(paths=kubeconfig_paths(env))
        assert cfg.context == doc["current-context"] == "stage"  # first current-context wins
        assert cfg.server == api.url
        other = load_kubeconfig("other", paths=kubeconfig_paths(env))
        assert other.namespace == "ops" and other.token == "wrong"
        with pytest.raises(ProbeError, match="not in the kubeconfig"):
            load_kubeconfig("nope", paths=kubeconfig_paths(env))

        probe = KubernetesPodsProbe(config=cfg)
        r = await run_poll(probe)
        await probe.close()
        assert r.ok, r.error
        probe = KubernetesPodsProbe(config=other)  # wrong token: a reading that says so
        r = await run_poll(probe)
        await probe.close()
        assert not r.ok and "401" in r.error and "token" in r.error


async def test_in_cluster_service_account(pki: Path, tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "namespace").write_text("shop")
    (sa / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    async with ApiServer(token="sa-token", ssl_ctx=server_ssl(pki, False)) as api:
        port = api.url.rsplit(":", 1)[1]
        cfg = in_cluster_config(sa, {"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                     "KUBERNETES_SERVICE_PORT": port})  # fmt: skip
        assert cfg.namespace == "shop" and cfg.token_reread_s
        probe = KubernetesPodsProbe(config=cfg)
        r = await run_poll(probe)
        assert r.ok, r.error
        check_reading(r.data)
        # projected tokens rotate: the file is read again
        (sa / "token").write_text("sa-token-2")
        api.token = "sa-token-2"
        probe._client._token_cache = ("sa-token", time.monotonic() - 120)
        assert (await run_poll(probe)).ok
        await probe.close()
    with pytest.raises(ProbeError, match="not running in a cluster"):
        in_cluster_config(sa, {})


async def test_no_metrics_server_and_rbac(tmp_path: Path) -> None:
    async with ApiServer(metrics_status=404) as api:
        kc = write_kubeconfig(tmp_path / "c", api.url, {})
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
        r = await run_poll(probe)
        await probe.close()
    assert r.ok
    assert "metrics-server" in r.data["warning"]
    assert all(c["cpu_cores"] is None for c in r.data["containers"])
    assert {c["restarts"] for c in r.data["containers"]} == {0, 3, 7}  # status still shown

    async with ApiServer(metrics_status=403) as api:
        kc = write_kubeconfig(tmp_path / "c", api.url, {})
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
        r = await run_poll(probe)
        await probe.close()
    assert r.ok and "metrics.k8s.io" in r.data["warning"] and "403" in r.data["warning"]

    async with ApiServer(pods_status=403) as api:
        kc = write_kubeconfig(tmp_path / "c", api.url, {})
        probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]))
        r = await run_poll(probe)
        await probe.close()
    assert not r.ok and "forbidden" in r.error and "grant get,list on pods" in r.error


# ---- Prometheus -----------------------------------------------------------------------------


def vector(*series: tuple[dict, str]) -> dict:
    t = time.time()
    return {"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": m, "value": [t, v]} for m, v in series]}}  # fmt: skip


async def test_prometheus_source() -> None:
    seen: list[str] = []
    w1 = {"namespace": "shop", "pod": "web-1", "container": "app"}
    w2 = {"namespace": "shop", "pod": "web-2", "container": "app"}
    other = {"namespace": "shop", "pod": "db-0", "container": "pg"}

    async def query(request: web.Request) -> web.Response:
        q = request.query["query"]
        seen.append(q)
        if q.startswith("kube_pod_labels"):
            return web.json_response(vector(({"namespace": "shop", "pod": "web-1"}, "1"),
                                            ({"namespace": "shop", "pod": "web-2"}, "1")))  # fmt: skip
        if "container_cpu_usage_seconds_total" in q:
            return web.json_response(vector((w1, "0.25"), (w2, "1.5"), (other, "3")))
        if "container_memory_working_set_bytes" in q:
            return web.json_response(vector((w1, "104857600"), (w2, "2e8")))
        if 'resource="cpu"' in q:
            return web.json_response(vector((w1, "0.5"), (w2, "2")))
        if 'resource="memory"' in q:
            return web.json_response(vector((w1, "268435456")))
        if "restarts_total" in q:
            return web.json_response(vector((w1, "3"), (w2, "0")))
        if "last_terminated_reason" in q:
            return web.json_response(vector(({**w1, "reason": "OOMKilled"}, "1")))
        if "waiting_reason" in q:
            return web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400
            )
        if "status_ready" in q:
            return web.json_response(vector((w1, "1"), (w2, "0")))
        return web.json_response(vector())

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        probe = PrometheusPodsProbe(f"http://127.0.0.1:{port}/", namespace="shop",
                                    selector="app=web")  # fmt: skip
        r = await run_poll(probe)
        await probe.close()
    finally:
        await runner.cleanup()
    assert r.ok, r.error
    check_keys(r.data)
    rows = {c["pod"]: c for c in r.data["containers"]}
    assert set(rows) == {"web-1", "web-2"}  # db-0 is not selected by app=web
    a = rows["web-1"]
    assert (a["cpu_cores"], a["memory_bytes"], a["cpu_limit_cores"]) == (0.25, 104857600, 0.5)
    assert a["memory_limit_bytes"] == 268435456 and a["restarts"] == 3
    assert a["last_reason"] == "OOMKilled" and a["ready"] is True
    assert rows["web-2"]["memory_bytes"] == 200_000_000 and rows["web-2"]["ready"] is False
    assert "waiting" in r.data["warning"]
    assert any('label_app="web"' in q for q in seen)
    assert all('namespace="shop"' in q for q in seen)


async def test_prometheus_unreachable() -> None:
    from app.embedded import free_port

    probe = PrometheusPodsProbe(f"http://127.0.0.1:{free_port()}")
    r = await run_poll(probe)
    await probe.close()
    assert not r.ok and "cannot reach Prometheus" in r.error


# ---- local processes ------------------------------------------------------------------------


async def test_local_processes_by_pid_and_name(tmp_path: Path) -> None:
    marker = f"loadtop-probe-test-{os.getpid()}-{time.monotonic_ns()}"
    script = textwrap.dedent(f"""
        import sys, time
        block = bytearray(30 * 1024 * 1024)  # {marker}
        end = time.time() + 30
        while time.time() < end:
            sum(range(10000))
    """)
    (tmp_path / f"{marker}.py").write_text(script)

    def spawn() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(tmp_path / f"{marker}.py")])

    p = spawn()
    probe = LocalProcessesProbe([p.pid, marker, "no-such-process-xyz"], interval=1)
    try:
        await asyncio.sleep(0.3)
        await run_poll(probe)
        await asyncio.sleep(0.5)
        r = await run_poll(probe)
        assert r.ok, r.error
        check_keys(r.data)
        by_pid, by_name, missing = r.data["containers"]
        assert by_pid["pid"] == p.pid == by_name["pid"]
        assert by_pid["container"] == f"{psutil.Process(p.pid).name()} ({p.pid})"
        assert by_name["container"] == marker
        assert by_pid["cpu_cores"] > 0.05  # a busy loop (on a machine it may share)
        assert by_pid["memory_bytes"] > 30 * 1024 * 1024
        # no limit: not the machine's size standing in for one ("0% of limit")
        assert by_pid["memory_limit_bytes"] is None and by_pid["cpu_limit_cores"] is None
        assert missing["ready"] is False and missing["last_reason"] == "NotFound"
        # the process is replaced: the name follows it and counts a restart
        p.kill()
        p.wait()
        p = spawn()
        await asyncio.sleep(0.3)
        r = await run_poll(probe)
        by_pid, by_name, _ = r.data["containers"]
        assert by_name["pid"] == p.pid and by_name["restarts"] == 1
        assert by_name["last_reason"] == "Exited"
        assert by_pid["ready"] is False and by_pid["cpu_cores"] is None
        labelled = LocalProcessesProbe({"service": p.pid})
        r = await run_poll(labelled)
        assert r.data["containers"][0]["container"] == "service"
        assert r.data["containers"][0]["pid"] == p.pid
    finally:
        p.kill()
        p.wait()


async def test_exec_plugin_that_hangs_is_killed_with_the_poll(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    plugin = tmp_path / "slow-plugin"
    plugin.write_text(
        f"#!{sys.executable}\nimport os, time\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    plugin.chmod(0o755)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}}
    kc = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:9", user)
    probe = KubernetesPodsProbe(config=load_kubeconfig(paths=[kc]), timeout=1.0)
    r = await run_poll(probe)
    await probe.close()
    assert not r.ok and "longer than 1 s" in r.error
    pid = int(pidfile.read_text())
    await asyncio.sleep(0.2)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_kubectl_fallback_for_auth_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pods.json").write_text(json.dumps(POD_LIST))
    log = tmp_path / "calls.log"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl = bindir / "kubectl"
    kubectl.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        open({str(log)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
        path = sys.argv[sys.argv.index("--raw") + 1]
        if path.startswith("/api/v1/namespaces/shop/pods"):
            sys.stdout.write(open({str(tmp_path / "pods.json")!r}).read())
        else:
            sys.stderr.write("Error from server (NotFound): the server could not find "
                             "the requested resource\\n")
            sys.exit(1)
    """)
    )
    kubectl.chmod(0o755)
    user = {"auth-provider": {"name": "oidc", "config": {"id-token": "x"}}}
    kc = write_kubeconfig(tmp_path / "config", "https://k8s.example:6443", user, name="corp")
    monkeypatch.setenv("KUBECONFIG", str(kc))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    probe = KubernetesPodsProbe(selector="app=web")
    r = await run_poll(probe)
    await probe.close()
    assert r.ok, r.error
    rows = {(c["pod"], c["container"]): c for c in r.data["containers"]}
    assert rows[("web-1", "app")]["last_reason"] == "OOMKilled"
    assert rows[("web-2", "app")]["waiting_reason"] == "CrashLoopBackOff"
    assert "metrics-server" in r.data["warning"]  # kubectl's NotFound, read as HTTP 404
    calls = log.read_text().splitlines()
    assert any("labelSelector=app%3Dweb" in c and "--context corp" in c for c in calls), calls

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no kubectl: a reading that says so
    probe = KubernetesPodsProbe()
    r = await run_poll(probe)
    await probe.close()
    assert not r.ok and "auth-provider" in r.error and "install kubectl" in r.error
