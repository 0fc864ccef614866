"""The tick pipeline: the clock, the enrichers, the outputs.

    clock ──> engine.close_window() ──> raw Tick
          ──> enrichers: invariants (verify results of this window),
                         detectors (anomalies), thresholds
          ──> outputs: recorder, headless printer, console

The engine only generates load and returns raw ticks; everything that judges
a tick is an enricher here, a function of the tick (and the detectors' own
state from earlier ticks). Because the invariant results travel in the tick,
`redetect()` can run the detectors again over a recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from app.detect import build_detectors, detect_flags
from app.engine.engine import LoadEngine
from app.engine.errors import classify, is_connection_error
from app.engine.thresholds import ThresholdSet
from app.faults.recovery import RecoveryTracker
from app.scenario import Context, Scenario
from app.session.recording import Recording
from app.tick import ControlEvent, Tick

Enricher = Callable[[Tick], Tick]
Output = Callable[[Tick], None]
AdminContext = Callable[[str], AbstractAsyncContextManager[Context]]


class Analyzer(Protocol):
    """What the detectors offer the pipeline (app.detect.DetectorSet)."""

    def evaluate(self, tick: Tick) -> tuple[tuple[Any, ...], tuple[Any, ...]]: ...


class Verifier:
    """Runs every scenario's verify() during the load and after it. Results
    are kept for the end line (`violations`) and handed to the next tick
    (`take()`), which carries them to the detectors."""

    def __init__(
        self, scenarios: Iterable[Scenario], admin: AdminContext,
        event: Callable[..., None], redact: Callable[[str], str] = str,
    ) -> None:  # fmt: skip
        self.scenarios = list(scenarios)
        self.admin = admin
        self.event = event
        self.redact = redact
        self.violations: dict[str, list[str]] = {}
        self._pending: dict[str, tuple[str, ...]] = {}
        self.closed = False

    async def verify_all(self) -> None:
        for inst in self.scenarios:
            await self._verify_one(inst)

    async def verify_final(
        self, retry_s: float, reconnect: Callable[[], Awaitable[None]] | None = None
    ) -> dict[str, str]:
        """The final verify() of every scenario. One whose target cannot be
        reached is tried again with backoff, after a reconnect, for up to
        `retry_s` in all; returns those that never ran, with why."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_s
        unverified: dict[str, str] = {}
        for inst in self.scenarios:
            delay, tries = 0.25, 0
            while True:
                tries += 1
                cls = await self._verify_one(inst)
                if cls is None:
                    break
                if loop.time() + delay > deadline:
                    unverified[inst.name] = f"{cls}, tried {tries} times over {retry_s:g} s"
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                if reconnect is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(reconnect(), 5)
        return unverified

    async def _verify_one(self, inst: Scenario) -> str | None:
        """Run `inst.verify()` once; returns the error class when its target
        could not be reached (it did not run), else None."""
        try:
            async with self.admin(inst.name) as ctx:
                found = await asyncio.wait_for(inst.verify(ctx), 30)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            cls = classify(e)
            if is_connection_error(cls) or cls == "timeout":
                # the target is down or restarting: that is an outage (counted by
                # the workers), not a broken invariant; verify runs again later
                self.event("verify-skipped", "system", note=f"{inst.name}: {cls}")
                return cls
            found = [f"verify() could not run: {cls}: {str(e)[:160]}"]
        self._found(inst, found)
        return None

    def _found(self, inst: Scenario, found: Any) -> None:
        found = [self.redact(str(v)) for v in found or []]
        if found:
            seen = self.violations.setdefault(inst.name, [])
            for v in found:
                if v not in seen and len(seen) < 100:
                    seen.append(v)
        self._pending[inst.name] = tuple(found)

    async def loop(self, every: float) -> None:
        """verify_all() every `every` seconds until `closed` (a flag as well as
        the cancel: Python 3.11's wait_for can swallow a cancel that arrives as
        verify() returns, and the loop would then run on)."""
        while not self.closed:
            await asyncio.sleep(every)
            if not self.closed:
                await self.verify_all()

    def take(self) -> dict[str, tuple[str, ...]]:
        """The results completed since the last take."""
        out, self._pending = self._pending, {}
        return out


def with_invariants(verifier: Verifier) -> Enricher:
    def enrich(tick: Tick) -> Tick:
        found = verifier.take()
        return dataclasses.replace(tick, invariants=found) if found else tick

    return enrich


def with_anomalies(detectors: Analyzer) -> Enricher:
    def enrich(tick: Tick) -> Tick:
        try:
            active, cleared = detectors.evaluate(tick)
            return dataclasses.replace(tick, anomalies=active, cleared=cleared)
        except Exception as e:  # a detector bug must not stop the run
            return dataclasses.replace(
                tick,
                events=(*tick.events, ControlEvent(tick.t, "detector-error", "system",
                                                   note=f"{type(e).__name__}: {e}")),
            )  # fmt: skip

    return enrich


def with_recovery(tracker: RecoveryTracker) -> Enricher:
    """The `fault` anomalies: each fault's baseline, impact and recovery."""

    def enrich(tick: Tick) -> Tick:
        try:
            return tracker.evaluate(tick)
        except Exception as e:  # a bug here must not stop the run
            note = f"recovery: {type(e).__name__}: {e}"
            return dataclasses.replace(
                tick,
                events=(*tick.events, ControlEvent(tick.t, "detector-error", "system", note=note)),
            )

    return enrich


def with_thresholds(thresholds: ThresholdSet) -> Enricher:
    def enrich(tick: Tick) -> Tick:
        statuses = thresholds.evaluate(tick)
        return dataclasses.replace(tick, thresholds=statuses) if statuses else tick

    return enrich


def redetect(
    ticks: Iterable[Tick], detectors: Analyzer, slo: dict[str, float] | None = None
) -> Iterator[Tick]:
    """A recording's ticks with their anomalies found again by `detectors`
    (a fresh DetectorSet, e.g. with other options) and the faults' recoveries
    measured again: both read the ticks only, so this is what a live run with
    those options would have raised."""
    enrich = with_anomalies(detectors)
    recovery = with_recovery(RecoveryTracker(slo))
    for t in ticks:
        yield recovery(enrich(dataclasses.replace(t, anomalies=(), cleared=())))


def redetect_recording(rec: Recording, flags: Iterable[str] = ()) -> Recording:
    """The recording with its anomalies found again: with the detector options
    it was recorded with (its header's `detect` and `slo`), changed by `flags`
    (`--detect KIND.OPTION=VALUE`). Raises ValueError on a bad flag."""
    config = dict(rec.header.get("detect") or {})
    if rec.header.get("slo") and "slo" not in config:
        config["slo"] = rec.header["slo"]
    config = detect_flags(flags, config)
    ticks = list(redetect(rec.ticks, build_detectors(config), config.get("slo")))
    return dataclasses.replace(rec, ticks=ticks)


class Pipeline:
    """The session's clock: closes a window every `interval`, enriches the
    engine's raw tick and hands it to the outputs; ends the run on its
    duration, a tripped threshold, or engine.stop()."""

    def __init__(
        self,
        engine: LoadEngine,
        *,
        detectors: Analyzer | None = None,
        thresholds: ThresholdSet | None = None,
        verifier: Verifier | None = None,
        recovery: RecoveryTracker | None = None,
    ) -> None:
        self.engine = engine
        self.cfg = engine.cfg
        self.thresholds = thresholds or ThresholdSet(engine.cfg.thresholds)
        self.verifier = verifier
        self.enrichers: list[Enricher] = []
        if verifier is not None:
            self.enrichers.append(with_invariants(verifier))
        if detectors is not None:
            self.enrichers.append(with_anomalies(detectors))
        if recovery is not None:
            self.enrichers.append(with_recovery(recovery))
        self.enrichers.append(with_thresholds(self.thresholds))
        self.outputs: list[Output] = []
        self.before_last_tick: list[Callable[[], Awaitable[None]]] = []
        self.ticks_emitted = 0
        self.last_tick: Tick | None = None

    def subscribe(self, output: Output) -> None:
        self.outputs.append(output)

    def enrich(self, tick: Tick) -> Tick:
        for e in self.enrichers:
            tick = e(tick)
        return tick

    def _emit(self, tick: Tick) -> None:
        self.last_tick = tick
        self.ticks_emitted += 1
        for output in self.outputs:
            output(tick)

    async def run(self) -> str:
        """Run the load until stopped; returns the stop reason."""
        loop = asyncio.get_running_loop()
        eng, cfg = self.engine, self.cfg
        stopped = asyncio.Event()
        eng.on_stop = stopped.set
        if eng.stopping:
            stopped.set()
        started = loop.time()
        await eng.start(started)
        bg = []
        if self.verifier is not None:
            bg.append(loop.create_task(self.verifier.loop(cfg.verify_every)))
        deadline = started + cfg.duration if cfg.duration is not None else None
        k = 1
        try:
            while not stopped.is_set():
                nxt = started + k * cfg.interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopped.wait(), max(nxt - loop.time(), 0))
                if stopped.is_set():
                    break
                k += 1
                tick = self.enrich(await eng.close_window(loop.time()))
                if deadline is not None and loop.time() >= deadline - 1e-3:
                    eng.stop("duration")
                tripped = self.thresholds.tripped
                if tripped is not None and not eng.stopping:
                    held = f"held for {self.thresholds.grace} ticks (value {tripped.value:.4g})"
                    eng.event("abort", "threshold", note=f"{tripped.expr} {held}")
                    tick = dataclasses.replace(
                        tick, events=(*tick.events, *eng.control.take_events())
                    )
                    eng.stop(f"threshold {tripped.expr}")
                self._emit(tick)
        finally:
            if self.verifier is not None:
                self.verifier.closed = True
            for t in bg:
                t.cancel()
            await asyncio.gather(*bg, return_exceptions=True)
            for hook in self.before_last_tick:  # e.g. heal the faults, marked in that tick
                try:
                    await hook()
                except Exception as e:
                    eng.event("detector-error", "system", note=f"{type(e).__name__}: {e}")
            # the last (partial) window, so nothing recorded is lost
            self._emit(self.enrich(await eng.wind_down(loop.time)))
        return eng.stop_reason
