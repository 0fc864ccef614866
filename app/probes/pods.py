"""The pods probe: CPU, memory, limits, restarts and the last termination
reason of every container of the system under test, from one of three sources
behind one reading (`PodsReading` in `app.probes.schema`):

- `KubernetesPodsProbe`: core v1 pods + metrics.k8s.io PodMetrics for a
  namespace and label selector, through `app.probes.kube` (kubeconfig or
  in-cluster credentials). No metrics-server, or RBAC forbidding metrics, is a
  reading with a `warning` that says so, and the pod status still shows;
- `PrometheusPodsProbe`: the same figures through PromQL (cAdvisor and
  kube-state-metrics series);
- `LocalProcessesProbe`: local processes by pid or name through psutil (the
  demo's own Postgres, Redis and service).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import psutil

from app.probes.base import Probe, ProbeError, describe_exception
from app.probes.kube import KubeClient, KubeConfig, KubectlClient, connect, cores, nbytes
from app.probes.schema import PodContainer

# ---- Kubernetes -----------------------------------------------------------------------


def merge_pods(pod_list: dict[str, Any], metrics: dict[str, Any] | None) -> list[PodContainer]:
    """One row per container from a PodList and (optionally) a PodMetricsList."""
    usage: dict[tuple[str, str], dict[str, Any]] = {}
    for item in (metrics or {}).get("items") or []:
        pod = (item.get("metadata") or {}).get("name", "")
        for c in item.get("containers") or []:
            usage[(pod, c.get("name", ""))] = c.get("usage") or {}
    out: list[PodContainer] = []
    for item in pod_list.get("items") or []:
        meta, spec, status = (
            item.get("metadata") or {},
            item.get("spec") or {},
            item.get("status") or {},
        )
        pod = meta.get("name", "")
        statuses = {s.get("name"): s for s in status.get("containerStatuses") or []}
        for c in spec.get("containers") or []:
            name = c.get("name", "")
            limits = (c.get("resources") or {}).get("limits") or {}
            st = statuses.get(name) or {}
            last = ((st.get("lastState") or {}).get("terminated") or {}).get("reason")
            u = usage.get((pod, name))
            out.append(
                {
                    "pod": pod,
                    "container": name,
                    "cpu_cores": cores(u.get("cpu")) if u else None,
                    "memory_bytes": nbytes(u.get("memory")) if u else None,
                    "cpu_limit_cores": cores(limits.get("cpu")),
                    "memory_limit_bytes": nbytes(limits.get("memory")),
                    "restarts": int(st.get("restartCount") or 0),
                    "last_reason": last,
                    "ready": st.get("ready") if st else None,
                    "waiting_reason": ((st.get("state") or {}).get("waiting") or {}).get("reason"),
                    "phase": status.get("phase"),
                }
            )
    out.sort(key=lambda c: (c["pod"], c["container"]))
    return out


def _api_error(resp: httpx.Response, what: str, ns: str) -> str:
    code = resp.status_code
    if code == 401:
        return f"the API server rejected the credentials (HTTP 401) for {what}: log in again or refresh the token"
    if code == 403:
        return f"forbidden (HTTP 403) to list {what} in namespace {ns}: grant get,list on {what} to this user"
    if code == 404:
        return f"{what} not found (HTTP 404) in namespace {ns}: check --k8s-namespace"
    return f"the API server answered HTTP {code} for {what}: it will retry"


class KubernetesPodsProbe(Probe):
    name = "pods"

    def __init__(
        self,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        context: str | None = None,
        config: KubeConfig | None = None,
        interval: float = 5.0,
        timeout: float | None = None,
    ) -> None:
        super().__init__(interval=interval, timeout=timeout)
        self.namespace = namespace
        self.selector = selector
        self.context = context
        self._config = config
        self._client: KubeClient | KubectlClient | None = None
        self.page_size = 500

    async def _kube(self) -> KubeClient | KubectlClient:
        if self._client is None:
            self._client = await connect(self.context, config=self._config, timeout=self.timeout)
        return self._client

    async def poll(self) -> dict[str, Any]:
        kube = await self._kube()
        ns = self.namespace or kube.cfg.namespace
        params = {"labelSelector": self.selector} if self.selector else None
        pods_l: tuple[httpx.Response, list[dict[str, Any]]] | BaseException
        metrics_l: tuple[httpx.Response, list[dict[str, Any]]] | BaseException
        pods_l, metrics_l = await asyncio.gather(
            kube.list_items(f"/api/v1/namespaces/{ns}/pods", params, page=self.page_size),
            kube.list_items(
                f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", params, page=self.page_size
            ),
            return_exceptions=True,
        )
        if isinstance(pods_l, BaseException):
            raise pods_l
        pods_r, pod_items = pods_l
        if pods_r.status_code != 200:
            raise ProbeError(_api_error(pods_r, "pods", ns))
        data: dict[str, Any] = {"source": "kubernetes", "namespace": ns}
        metrics = None
        if isinstance(metrics_l, BaseException):
            data["warning"] = f"pod metrics unavailable ({describe_exception('pods', metrics_l)})"
        else:
            metrics_r, metric_items = metrics_l
            if metrics_r.status_code == 200:
                metrics = {"items": metric_items}
            elif metrics_r.status_code in (404, 503):
                data["warning"] = (
                    f"metrics.k8s.io is not available (HTTP {metrics_r.status_code}): install "
                    "metrics-server; CPU and memory are not shown"
                )
            elif metrics_r.status_code == 403:
                data["warning"] = (
                    f"forbidden (HTTP 403) to read pod metrics in namespace {ns}: grant get,list on "
                    "pods in the metrics.k8s.io API group; CPU and memory are not shown"
                )
            else:
                data["warning"] = (
                    f"pod metrics: HTTP {metrics_r.status_code}; CPU and memory are not shown"
                )
        data["containers"] = merge_pods({"items": pod_items}, metrics)
        if self.selector:
            data["selector"] = self.selector
        return data

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, httpx.ConnectError):
            server = self._client.cfg.server if self._client else "the API server"
            return f"cannot reach the Kubernetes API at {server} ({exc}): check the kubeconfig context and the network"
        if isinstance(exc, httpx.TimeoutException):
            return "the Kubernetes API did not answer in time: it will retry"
        return describe_exception("pods", exc)

    async def reset(self) -> None:
        pass  # credentials and the connection pool survive a failed poll

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


# ---- Prometheus -----------------------------------------------------------------------


def _selector_matchers(selector: str | None) -> str:
    """`app=web,tier=api` -> kube_pod_labels matchers (equality selectors only)."""
    if not selector:
        return ""
    out = []
    for part in selector.split(","):
        part = part.strip()
        m = re.fullmatch(r"([A-Za-z0-9_./-]+)\s*==?\s*([A-Za-z0-9_.-]*)", part)
        if not m:
            raise ProbeError(
                f"label selector {part!r} cannot be used with Prometheus: use key=value terms"
            )
        label = "label_" + re.sub(r"[^A-Za-z0-9_]", "_", m[1])
        out.append(f'{label}="{m[2]}"')
    return ",".join(out)


class PrometheusPodsProbe(Probe):
    name = "pods"

    def __init__(
        self,
        url: str,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        interval: float = 5.0,
        timeout: float | None = None,
    ) -> None:
        super().__init__(interval=interval, timeout=timeout)
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.selector = selector
        self._http: httpx.AsyncClient | None = None

    def queries(self) -> dict[str, str]:
        ns = f'namespace="{self.namespace}"' if self.namespace else 'namespace!=""'
        c = f'{ns},container!="",container!="POD"'
        by = "sum by (namespace,pod,container)"
        return {
            "cpu": f"{by}(rate(container_cpu_usage_seconds_total{{{c}}}[2m]))",
            "memory": f"{by}(container_memory_working_set_bytes{{{c}}})",
            "cpu_limit": f'{by}(kube_pod_container_resource_limits{{{ns},resource="cpu"}})',
            "memory_limit": f'{by}(kube_pod_container_resource_limits{{{ns},resource="memory"}})',
            "restarts": f"{by}(kube_pod_container_status_restarts_total{{{ns}}})",
            "last_reason": f"kube_pod_container_status_last_terminated_reason{{{ns}}} == 1",
            "waiting": f"kube_pod_container_status_waiting_reason{{{ns}}} == 1",
            "ready": f"{by}(kube_pod_container_status_ready{{{ns}}})",
        }

    async def _query(self, q: str) -> list[dict[str, Any]]:
        assert self._http is not None
        resp = await self._http.get("/api/v1/query", params={"query": q})
        try:
            body = resp.json()
        except ValueError:
            raise ProbeError(
                f"Prometheus at {self.url} answered HTTP {resp.status_code} without JSON: "
                "check --prometheus (the server's base URL)"
            ) from None
        if body.get("status") != "success":
            raise ProbeError(
                f"Prometheus query failed ({body.get('errorType')}: {body.get('error')}): "
                "check that the cAdvisor and kube-state-metrics series exist"
            )
        return (body.get("data") or {}).get("result") or []

    async def poll(self) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.url, timeout=self.timeout, trust_env=False)
        qs = self.queries()
        pods_allowed: set[tuple[str, str]] | None = None
        names = list(qs)
        calls = [self._query(qs[k]) for k in names]
        if self.selector:
            ns = f'namespace="{self.namespace}",' if self.namespace else ""
            calls.append(self._query(f"kube_pod_labels{{{ns}{_selector_matchers(self.selector)}}}"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        if all(isinstance(r, BaseException) for r in results):
            first = results[0]
            assert isinstance(first, BaseException)  # all of them are
            raise first
        if self.selector:
            lab = results[-1]
            pods_allowed = (
                set()
                if isinstance(lab, BaseException)
                else {(r["metric"].get("namespace", ""), r["metric"].get("pod", "")) for r in lab}
            )
        rows: dict[tuple[str, str, str], PodContainer] = {}
        failed = []
        for key, res in zip(names, results, strict=False):
            if isinstance(res, BaseException):
                failed.append(key)
                continue
            for s in res:
                m = s.get("metric") or {}
                ident = (m.get("namespace", ""), m.get("pod", ""), m.get("container", ""))
                if not ident[1] or not ident[2]:
                    continue
                if pods_allowed is not None and ident[:2] not in pods_allowed:
                    continue
                row = rows.setdefault(
                    ident,
                    {"pod": ident[1], "container": ident[2], "cpu_cores": None,
                     "memory_bytes": None, "cpu_limit_cores": None, "memory_limit_bytes": None,
                     "restarts": 0, "last_reason": None, "ready": None, "waiting_reason": None},
                )  # fmt: skip
                try:
                    v = float(s["value"][1])
                except (KeyError, IndexError, TypeError, ValueError):
                    continue
                if key == "cpu":
                    row["cpu_cores"] = v
                elif key == "memory":
                    row["memory_bytes"] = int(v)
                elif key == "cpu_limit":
                    row["cpu_limit_cores"] = v
                elif key == "memory_limit":
                    row["memory_limit_bytes"] = int(v)
                elif key == "restarts":
                    row["restarts"] = int(v)
                elif key == "last_reason":
                    row["last_reason"] = m.get("reason")
                elif key == "waiting":
                    row["waiting_reason"] = m.get("reason")
                elif key == "ready":
                    row["ready"] = v >= 1
        data: dict[str, Any] = {
            "source": "prometheus",
            "namespace": self.namespace or "",
            "containers": sorted(rows.values(), key=lambda c: (c["pod"], c["container"])),
        }
        if failed:
            data["warning"] = f"Prometheus queries failed for: {', '.join(failed)}"
        return data

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, httpx.ConnectError):
            return f"cannot reach Prometheus at {self.url}: check --prometheus and the network"
        if isinstance(exc, httpx.TimeoutException):
            return f"Prometheus at {self.url} did not answer in time: it will retry"
        return describe_exception("pods", exc)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


# ---- local processes ----------------------------------------------------------------------


class LocalProcessesProbe(Probe):
    """Processes on this machine, by pid or by name (matched against the process
    name or its command line), or a mapping label -> pid or name. A name whose
    process is replaced by a new one counts a restart. The "pod" is "local";
    the "container" is the label, the name given, or a pid's process name."""

    name = "pods"

    def __init__(
        self,
        targets: Sequence[int | str] | Mapping[str, int | str],
        *,
        interval: float = 5.0,
        timeout: float | None = None,
    ) -> None:
        super().__init__(interval=interval, timeout=timeout)
        if isinstance(targets, Mapping):
            self.targets: list[tuple[str | None, int | str]] = list(targets.items())
        else:
            self.targets = [(None, t) for t in targets]
        self._labels: dict[int | str, str] = {}
        self._procs: dict[str, psutil.Process] = {}
        self._restarts: dict[str, int] = {}
        self._children: dict[int, psutil.Process] = {}
        self._last_reason: dict[str, str] = {}

    def _label(self, given: str | None, t: int | str) -> str:
        if given:
            return given
        if t not in self._labels:
            label = str(t)
            if isinstance(t, int) or str(t).isdigit():
                try:
                    label = f"{psutil.Process(int(t)).name()} ({t})"
                except psutil.Error:
                    return label  # not cached: named once the process is seen
            self._labels[t] = label
        return self._labels[t]

    def _find(self, t: int | str) -> psutil.Process | None:
        if isinstance(t, int) or (isinstance(t, str) and t.isdigit()):
            try:
                return psutil.Process(int(t))
            except psutil.Error:
                return None
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                name = p.info.get("name") or ""
                cmd = " ".join(p.info.get("cmdline") or [])
            except psutil.Error:
                continue
            if p.pid != psutil.Process().pid and (name == t or (t in cmd and t)):
                return p
        return None

    def _sample(self) -> list[PodContainer]:
        out: list[PodContainer] = []
        seen_children: set[int] = set()
        for given, t in self.targets:
            label = self._label(given, t)
            p = self._procs.get(label)
            alive = p is not None and p.is_running()
            if not alive:
                q = self._find(t)
                if q is not None and p is not None and q.pid != p.pid:
                    self._restarts[label] = self._restarts.get(label, 0) + 1
                    self._last_reason[label] = "Exited"
                if q is not None:
                    try:
                        q.cpu_percent(None)  # first call primes the counter
                    except psutil.Error:
                        q = None
                if q is not None:
                    self._procs[label] = q
                p = q
            row: PodContainer = {
                "pod": "local",
                "container": label,
                "cpu_cores": None,
                "memory_bytes": None,
                # a process on this machine has no limit; the machine's size is not
                # one (it made "0% of limit" readings for every small process)
                "cpu_limit_cores": None,
                "memory_limit_bytes": None,
                "restarts": self._restarts.get(label, 0),
                "last_reason": self._last_reason.get(label),
                "ready": False,
                "waiting_reason": None,
            }
            if p is not None:
                try:
                    with p.oneshot():
                        children = p.children(recursive=True)
                        cpu = p.cpu_percent(None) / 100.0
                        rss = p.memory_info().rss
                        row["pid"] = p.pid
                    for ch in children:  # e.g. postgres backends: the tree counts
                        known = self._children.setdefault(ch.pid, ch)
                        try:
                            if known is ch:
                                ch.cpu_percent(None)  # primes; counts from the next poll
                            else:
                                cpu += known.cpu_percent(None) / 100.0
                            mi = ch.memory_info()
                            # private memory only: shared pages (e.g. postgres's shared
                            # buffers) are already in the parent's RSS
                            rss += max(0, mi.rss - getattr(mi, "shared", 0))
                        except psutil.Error:
                            self._children.pop(ch.pid, None)
                        seen_children.add(ch.pid)
                    row["cpu_cores"] = round(cpu, 4)
                    row["memory_bytes"] = int(rss)
                    row["ready"] = True
                except psutil.NoSuchProcess:
                    row["last_reason"] = "Exited"
                except psutil.Error:
                    pass
            else:
                row["last_reason"] = "NotFound" if label not in self._procs else "Exited"
            out.append(row)
        for pid in [x for x in self._children if x not in seen_children]:
            del self._children[pid]
        return out

    async def poll(self) -> dict[str, Any]:
        containers = await asyncio.to_thread(self._sample)
        return {"source": "local", "namespace": "", "containers": containers}
