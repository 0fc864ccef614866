"""Probes: what Postgres, Redis and the pods say about themselves under load.

The session runner builds them with `app.probes.factory.build_probes(...)`, starts
them with `await probe_set.start()`, and the engine puts `probe_set.latest()`
(probe name -> `app.tick.Reading`) into every tick. The readings' data shapes
are in `app.probes.schema`; `app.probes.summary` turns them into the headless
line and the report's per-step section.

Modules: base (framework), factory (the probes for the configured targets),
postgres, redis, pods (Kubernetes, Prometheus, local processes), kube
(kubeconfig and a thin httpx client, quantities), summary.
"""
