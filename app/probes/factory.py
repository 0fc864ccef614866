"""Builds a session's probes from its configured targets.

The one place that knows every concrete probe: `app.probes.base` holds the
framework only, so the concrete probes import it and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.probes.base import DEFAULT_INTERVALS, Probe, ProbeSet
from app.probes.pg_queues import pg_queues_probe
from app.probes.pods import KubernetesPodsProbe, LocalProcessesProbe, PrometheusPodsProbe
from app.probes.postgres import PostgresProbe
from app.probes.redis import RedisProbe


def build_probes(
    pg_dsn: str | None = None,
    redis_url: str | None = None,
    k8s_namespace: str | None = None,
    k8s_selector: str | None = None,
    k8s_context: str | None = None,
    prometheus_url: str | None = None,
    local_pids: Sequence[int | str] | Mapping[str, int | str] | None = None,
    intervals: Mapping[str, float] | None = None,
    redis_lock_patterns: Sequence[str] | None = None,
    redis_queue_patterns: Sequence[str] | None = None,
    pg_sql_queues: Sequence[Any] | None = None,
) -> ProbeSet:
    """The probes for a session's targets (none given -> an empty set).

    pg_dsn: the monitoring DSN (`--pg-monitor`, else `--pg`). redis_url: `--redis`.
    Pods come from Prometheus when `prometheus_url` is given (filtered by
    `k8s_namespace`), else from Kubernetes when `k8s_namespace` or `k8s_context`
    is, else from local processes
    (`local_pids`: pids or process names, or a mapping label -> pid or name). intervals: {"postgres": 1, "redis": 1,
    "pods": 5} seconds by default. pg_sql_queues: `[[queue.sql]]` queues for the
    pg_queues probe (which runs whenever pg_dsn is given). Nothing connects until `start()`.
    """
    iv = {**DEFAULT_INTERVALS, **(intervals or {})}
    probes: list[Probe] = []
    if pg_dsn:
        probes.append(PostgresProbe(pg_dsn, interval=iv["postgres"]))
        probes.append(pg_queues_probe(pg_dsn, iv, pg_sql_queues))
    if redis_url:
        probes.append(
            RedisProbe(
                redis_url,
                interval=iv["redis"],
                lock_patterns=redis_lock_patterns,
                queue_patterns=redis_queue_patterns,
            )
        )
    if prometheus_url:
        probes.append(
            PrometheusPodsProbe(
                prometheus_url, namespace=k8s_namespace, selector=k8s_selector, interval=iv["pods"]
            )
        )
    elif k8s_namespace or k8s_context:
        probes.append(
            KubernetesPodsProbe(
                namespace=k8s_namespace,
                selector=k8s_selector,
                context=k8s_context,
                interval=iv["pods"],
            )
        )
    elif local_pids:
        probes.append(LocalProcessesProbe(local_pids, interval=iv["pods"]))
    return ProbeSet(probes)
