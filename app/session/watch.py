"""`loadtop watch`: probes and detectors only, no load.

Someone else loads the target (a batch job, another tool, production traffic
on staging); loadtop watches it: the same tick clock, probe readings,
anomalies, headless lines, recording and report as a run, with no scenario,
no worker and nothing created on the target. It never writes: the probes'
sessions are read-only, no schema or key is created, and no backend is ever
cancelled or terminated (a watch is always read-only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from app.session.runner import RunConfig, Session
from app.targets import TargetError
from app.tick import Tick


class WatchSession(Session):
    """A Session with no scenario: ticks carry readings and anomalies only."""

    def __init__(self, cfg: RunConfig, *, printer: Callable[[Tick], None] | None = None) -> None:
        cfg = dataclasses.replace(
            cfg,
            scenarios=[],
            readonly=True,
            probes=True,
            engine=dataclasses.replace(
                cfg.engine, concurrency=0, rate=None, plan=[], thresholds=[]
            ),
        )
        super().__init__(cfg, printer=printer)

    def _make_header(self) -> dict[str, Any]:
        header = super()._make_header()
        header["load"] = {"mode": "watch", "interval_s": self.cfg.engine.interval,
                          "duration_s": self.cfg.engine.duration}  # fmt: skip
        header["watch"] = True
        return header

    async def run(self, *, install_signals: bool = False) -> Any:
        await self._preflight()
        return await super().run(install_signals=install_signals)

    async def _preflight(self) -> None:
        """A target that cannot be watched at all (wrong DSN, down, wrong
        password) is bad input at start, one line, like a run's."""
        probes = self.build_probe_set()
        if not probes.probes:
            raise TargetError("watch needs a target: give --pg, --pg-monitor, --redis, --k8s-namespace"
                              " or --prometheus")  # fmt: skip
        try:
            readings = await probes.poll_once()
        finally:
            await probes.stop()
        # a full server is something to watch, not bad input: the probe waits for a
        # slot and retries, and its readings say so (connection-saturation raises)
        failed = [
            r for r in readings.values()
            if not r.ok and "waiting for a connection slot" not in r.error
        ]  # fmt: skip
        if failed and len(failed) == len(readings):
            r = failed[0]
            raise TargetError(self.redactor(f"cannot watch {r.probe}: {r.error}"))

    # a watch has no load to change: the load controls do nothing
    def set_concurrency(self, n: int, source: str = "key") -> None:
        pass

    def step_concurrency(self, delta: int, source: str = "key") -> None:
        pass

    def set_rate(self, rate: float, source: str = "key") -> None:
        pass

    def start_plan(self, source: str = "key") -> None:
        pass
