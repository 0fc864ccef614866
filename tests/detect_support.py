"""Helpers for the detector tests: constructed ticks and a runner that records
when each anomaly was raised. (No tests here.)"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.detect import DetectorSet
from app.session.runner import RunConfig, Session
from app.tick import Anomaly, GeneratorStats, Reading, ScenarioWindow, Tick, new_histogram


def window(
    name: str = "s",
    *,
    target: int = 4,
    ok: int = 100,
    failed: int = 0,
    errors: Mapping[str, int] | None = None,
    lat_ms: float = 5.0,
    spread: float = 0.2,
    seed: int = 0,
    lag_ms: float = 0.0,
    concurrency: int | None = None,
    last_error: str = "",
) -> ScenarioWindow:
    """A scenario window whose latencies are lat_ms * (1 +- spread), seeded."""
    h = new_histogram()
    rng = random.Random(seed)
    for _ in range(ok + failed):
        h.record_value(max(1, int(lat_ms * 1000 * (1 + spread * (2 * rng.random() - 1)))))
    return ScenarioWindow(
        name=name,
        concurrency=target if concurrency is None else concurrency,
        target=target,
        started=ok + failed,
        ok=ok,
        failed=failed,
        errors=dict(errors or {}),
        hist=h,
        lag_ms=lag_ms,
        last_error=last_error,
    )


T0 = 1_700_000_000.0


def tick(
    i: int,
    scenarios: Iterable[ScenarioWindow] = (),
    *,
    readings: Mapping[str, Reading] | None = None,
    target: int | None = None,
    mode: str = "workers",
    interval: float = 1.0,
    generator: GeneratorStats | None = None,
    paused: bool = False,
    t: float | None = None,
) -> Tick:
    scs = tuple(scenarios)
    tgt = target if target is not None else (scs[0].target if scs else 0)
    return Tick(
        index=i,
        t=T0 + (i + 1) * interval if t is None else t,
        elapsed=(i + 1) * interval,
        interval=interval,
        mode=mode,
        target_concurrency=tgt,
        concurrency=sum(s.concurrency for s in scs) if scs else tgt,
        paused=paused,
        scenarios=scs,
        readings=dict(readings or {}),
        generator=generator or GeneratorStats(),
    )


def reading(probe: str, data: Mapping[str, Any], *, t: float, ok: bool = True) -> Reading:
    return Reading(probe=probe, t=t, ok=ok, duration_ms=1.0, data=dict(data))


@dataclass
class Run:
    """Feeds ticks to a DetectorSet and keeps what came out."""

    dset: DetectorSet
    active: list[tuple[Anomaly, ...]] = field(default_factory=list)
    cleared: list[tuple[Anomaly, ...]] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)

    def feed(self, tk: Tick) -> tuple[Anomaly, ...]:
        import dataclasses

        a, c = self.dset.evaluate(tk)
        self.active.append(a)
        self.cleared.append(c)
        self.ticks.append(dataclasses.replace(tk, anomalies=a, cleared=c))
        return a

    def kinds_ever(self) -> set[str]:
        return {a.kind for act in self.active for a in act}

    def first_raised(self, kind: str) -> int | None:
        """The tick index at which `kind` was first active."""
        for tk, act in zip(self.ticks, self.active, strict=True):
            if any(a.kind == kind for a in act):
                return tk.index
        return None

    def first_cleared(self, kind: str) -> int | None:
        for tk, c in zip(self.ticks, self.cleared, strict=True):
            if any(a.kind == kind for a in c):
                return tk.index
        return None

    def of(self, kind: str, at: int = -1) -> list[Anomaly]:
        return [a for a in self.active[at] if a.kind == kind]

    def raise_count(self, kind: str) -> int:
        """How many separate times `kind` went from inactive to active."""
        n, prev = 0, set()
        for act in self.active:
            now = {a.key for a in act if a.kind == kind}
            n += len(now - prev)
            prev = now
        return n


def only(config: Mapping[str, Any] | None = None, *kinds: str) -> DetectorSet:
    from app.detect import build_detectors

    cfg = dict(config or {})
    cfg["enabled"] = list(kinds)
    return build_detectors(cfg)


TTD: dict[str, int] = {}  # kind -> ticks from onset to raise, measured by the real tests


def record_ttd(kind: str, onset_tick: int, raised_tick: int | None, limit: int = 5) -> int:
    assert raised_tick is not None, f"{kind} was never raised"
    ttd = raised_tick - onset_tick
    print(f"\ntime-to-detect {kind}: {ttd} ticks")
    TTD[kind] = ttd
    assert 0 <= ttd <= limit, f"{kind} raised {ttd} ticks after onset (limit {limit})"
    return ttd


# ---- driving a real session -----------------------------------------------------


def next_tick(session: Session) -> int:
    return session.ticks[-1].index + 1 if session.ticks else 0


async def wait_ticks(session: Session, n: int, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while len(session.ticks) < n:
            await asyncio.sleep(0.05)


async def drive(
    cfg: RunConfig | Session, fault: Callable[[Session], Awaitable[Any]] | None = None
) -> tuple[Session, Any]:
    """Run the session and, alongside it, the fault (which returns its onset);
    the session stops when the fault is done. Without a fault it runs its course."""
    session = cfg if isinstance(cfg, Session) else Session(cfg)
    out: dict[str, Any] = {}
    if fault is None:
        await session.run()
        return session, None

    async def go() -> None:
        try:
            out["onset"] = await fault(session)
        finally:
            with contextlib.suppress(Exception):
                session.stop("test")

    task = asyncio.create_task(go())
    await session.run()
    # the fault stops the session when it is done; a session that ended on its
    # own (its duration ran out) leaves the fault waiting for ticks that never come
    done, _ = await asyncio.wait([task], timeout=15)
    if not done:
        task.cancel()
        await asyncio.wait([task], timeout=5)
        raise AssertionError(
            f"the session ended after {len(session.ticks)} ticks while the fault was still "
            f"running: give the session a longer duration"
        )
    if task.exception():
        raise task.exception()  # type: ignore[misc]
    return session, out.get("onset")


def first(ticks: list[Tick], kind: str) -> tuple[int | None, Anomaly | None]:
    for tk in ticks:
        for a in tk.anomalies:
            if a.kind == kind:
                return tk.index, a
    return None, None


def kinds(ticks: list[Tick]) -> set[str]:
    return {a.kind for tk in ticks for a in tk.anomalies}
