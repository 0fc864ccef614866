"""A session: targets, scenarios, probes, detectors, engine, recorder, report.

`Session.run()` is the whole lifecycle on the current event loop (headless
and tests); `Session.start_thread()` runs it on a thread with its own uvloop
loop, for the console, and the `SessionControl` methods may then be called
from any thread.

Order matters for "lose nothing, leave nothing": the recording is opened
before anything is created on a target; every prefix is removed in a
`finally`, even when `setup` failed halfway or the run was interrupted.

About 900 lines: the lifecycle (connect, setup, run, teardown, cleanup, the
end line) is one ordered sequence that reads best in one place. Around it:
the clock and enrichers in app/session/pipeline.py, removing what a run
created in app/session/cleanup.py, the clients in app/engine/clients.py. The
thread-safe control wrappers and the backend cancel/terminate are the next
candidates to move.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.engine.clients import Clients, close_clients, connect_clients
from app.engine.engine import EngineConfig, LoadEngine, allocate
from app.engine.errors import classify
from app.engine.procs import HostSpec, ProcessWorkers
from app.engine.thresholds import ThresholdError
from app.faults import FaultError, parse_fault_spec
from app.faults.actions import FaultTargets
from app.faults.proxy import FaultProxy
from app.faults.recovery import RecoveryTracker
from app.faults.scheduler import FaultScheduler
from app.scenario import Context, Scenario, ScenarioError, check_processes, class_ref, slug
from app.session.cleanup import remove_prefixes
from app.session.export import write_report
from app.session.pipeline import Pipeline, Verifier
from app.session.recording import Recorder, Recording, RecordingError, read_recording
from app.session.report import build_summary
from app.session.retention import TRIM_EVERY, RecentTicks, release_free_memory
from app.targets import Redactor, TargetError, redact_params
from app.tick import Tick, tick_to_json


class SetupError(RuntimeError):
    """A scenario's setup failed; the message is one line."""


@dataclass
class RunConfig:
    scenarios: list[tuple[type[Scenario], float]]
    pg_dsn: str | None = None
    pg_monitor_dsn: str | None = None
    redis_url: str | None = None
    http_url: str | None = None
    k8s_namespace: str | None = None
    k8s_selector: str | None = None
    k8s_context: str | None = None
    prometheus_url: str | None = None
    local_pids: dict[str, int] | None = None
    params: dict[str, str] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    record: str | None = None
    record_temporary: bool = False  # a private recording (--web without --record): not kept
    export: str | None = None
    readonly: bool = False
    probes: bool = True
    probe_intervals: dict[str, float] | None = None
    redis_lock_patterns: list[str] | None = None
    redis_queue_patterns: list[str] | None = None
    pg_sql_queues: list[Any] | None = None  # [[queue.sql]] (app.probes.pg_queues.SqlQueue)
    detect: dict[str, Any] | None = None
    slo: dict[str, float] | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    embedded: list[str] = field(default_factory=list)  # which targets are embedded
    processes: int = 1  # worker processes (--processes); 1: workers on the session's loop
    faults: list[Any] = field(default_factory=list)  # --fault (app.faults.FaultSpec)
    allow_faults: bool = False  # --allow-faults: the console's fault menu may inject
    http_via_proxy: bool = False  # --http-via-proxy: the load goes through app.faults.proxy
    # processes loadtop started that pod-kill may SIGKILL (the demo service): name -> pid
    fault_processes: dict[str, Callable[[], int | None]] = field(default_factory=dict)
    kube_config: Any = None  # tests: a KubeConfig for a loopback fake API
    fault_hints: dict[str, str] = field(default_factory=dict)  # app.faults.actions.FaultTargets
    # how long the final verify() and the cleanup each retry a target that
    # cannot be reached (with backoff, after a reconnect) before giving up
    retry_s: float = 30.0
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT
    web: tuple[str, int] | None = None  # --web HOST:PORT
    web_token: str | None = None  # --web-token (required off loopback)


@dataclass
class Outcome:
    reason: str
    exit_code: int
    ticks: int
    invariants: dict[str, list[str]]
    tripped: str | None
    report_path: str | None = None
    record_path: str | None = None
    verdict: str = "PASS"  # PASS | FAIL | INCOMPLETE | ERROR (app.session.report.verdict)
    why: str = ""  # the verdict in one line
    leftovers: list[dict[str, Any]] = field(default_factory=list)
    unverified: dict[str, str] = field(default_factory=dict)


class Session:
    def __init__(self, cfg: RunConfig, *, printer: Callable[[Tick], None] | None = None) -> None:
        self.cfg = cfg
        self.redactor = Redactor()
        for u in (cfg.pg_dsn, cfg.pg_monitor_dsn, cfg.redis_url, cfg.http_url, cfg.prometheus_url):
            self.redactor.add_url(u)
        for k, v in cfg.params.items():
            if redact_params({k: v})[k] != v:
                self.redactor.add(v)
        self.instances: list[tuple[Scenario, float]] = [
            (cls(cfg.params), w) for cls, w in cfg.scenarios
        ]
        self.prefixes = {
            inst.name: f"loadtop_{cfg.run_id}_{slug(inst.name)}" for inst, _ in self.instances
        }
        self.printer = printer
        self.engine: LoadEngine | None = None
        self.clients = Clients(http_url=cfg.http_url, pg_dsn=cfg.pg_dsn, redis_url=cfg.redis_url)
        if cfg.readonly:  # the server enforces it: a scenario that writes anyway fails
            self.clients.pg_settings["default_transaction_read_only"] = "on"
        self.recorder: Recorder | None = None
        self.header: dict[str, Any] = {}
        # the latest ticks only (bounded, compact); the recording has them all
        self.ticks = RecentTicks()
        self._spool: Recorder | None = None  # the recording exports read, when not --record
        self.probe_set: Any = None
        self.detectors: Any = None
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self._listeners: list[Callable[[Tick], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._ready = threading.Event()
        self._stop_requested: str | None = None
        self._admin_conn: Any = None
        self._admin_lock: asyncio.Lock | None = None
        self._created_prefixes: set[str] = set()
        self._error_input = False  # self.error is bad input (exit 2), not a failed run
        self.unverified: dict[str, str] = {}  # final verify() that could not run: why
        # --web: how many browsers follow this session (set by the command)
        self.web_viewers: Callable[[], int] | None = None
        self.messages: list[str] = []  # status lines (embedded servers, faults)
        self.procs: ProcessWorkers | None = None
        self.verifier: Verifier | None = None
        self.pipeline: Pipeline | None = None
        self.faults: FaultScheduler | None = None
        self.proxy: FaultProxy | None = None
        self.http_upstream = cfg.http_url
        self._described: tuple[str, Any] | None = None  # the fault the console was shown

    # ---- SessionControl: facts --------------------------------------------------
    @property
    def targets(self) -> dict[str, str]:
        out = {}
        if self.cfg.pg_dsn:
            out["postgres"] = self.redactor(self.cfg.pg_dsn)
        if self.cfg.redis_url:
            out["redis"] = self.redactor(self.cfg.redis_url)
        if self.http_upstream:
            out["http"] = self.redactor(self.http_upstream)
            if self.cfg.http_via_proxy:
                out["http"] += " (via loadtop's fault proxy)"
        if self.cfg.k8s_namespace:
            sel = f" ({self.cfg.k8s_selector})" if self.cfg.k8s_selector else ""
            out["pods"] = f"k8s {self.cfg.k8s_namespace}{sel}"
        elif self.cfg.prometheus_url:
            out["pods"] = self.redactor(self.cfg.prometheus_url)
        for name in self.cfg.embedded:
            if name in out:
                out[name] += " (embedded)"
        return out

    @property
    def plan(self) -> list[int]:
        return list(self.cfg.engine.plan)

    @property
    def max_concurrency(self) -> int:
        return self.cfg.engine.max_concurrency

    @property
    def readonly(self) -> bool:
        return self.cfg.readonly

    @property
    def config(self) -> dict[str, Any]:
        return self.header

    def subscribe(self, listener: Callable[[Tick], None]) -> None:
        self._listeners.append(listener)

    # ---- SessionControl: controls (thread-safe) --------------------------------
    def _call(self, fn: Callable[[], Any]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    def _engine_call(self, name: str, *args: Any) -> None:
        def go() -> None:
            if self.engine is not None:
                getattr(self.engine, name)(*args)

        self._call(go)

    def set_concurrency(self, n: int, source: str = "key") -> None:
        self._engine_call("set_concurrency", n, source)

    def step_concurrency(self, delta: int, source: str = "key") -> None:
        self._engine_call("step_concurrency", delta, source)

    def set_rate(self, rate: float, source: str = "key") -> None:
        self._engine_call("set_rate", rate, source)

    def pause(self, source: str = "key") -> None:
        self._engine_call("pause", source)

    def resume(self, source: str = "key") -> None:
        self._engine_call("resume", source)

    def panic(self, source: str = "key") -> None:
        self._engine_call("panic", source)
        faults = self.faults
        if faults is not None and faults.active:  # a panic lifts every fault too
            self._call(lambda: asyncio.ensure_future(faults.heal_active("panic")))

    def start_plan(self, source: str = "key") -> None:
        self._engine_call("start_plan", source)

    def stop_plan(self, source: str = "key") -> None:
        self._engine_call("stop_plan", source)

    def note(self, kind: str, note: str, source: str = "key") -> None:
        self._engine_call("event", kind, source, None, None, self.redactor(note))

    def stop(self, reason: str = "quit") -> None:
        self._stop_requested = self._stop_requested or reason
        self._engine_call("stop", reason)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _backend_call(self, fn: str, pid: int) -> str:
        if self.cfg.readonly:
            return "read-only session: cancelling and terminating backends is disabled"
        loop = self._loop
        if loop is None:
            return "session is not running"

        async def go() -> str:
            async with self._admin_ctx("admin") as ctx:
                if ctx.conn is not None:
                    ok = await ctx.conn.fetchval(f"SELECT {fn}($1)", pid)
                else:  # no load pool (watch mode): a short-lived connection
                    import asyncpg

                    dsn = self.cfg.pg_monitor_dsn or self.cfg.pg_dsn
                    if not dsn:
                        return "no PostgreSQL target"
                    conn = await asyncpg.connect(
                        dsn, timeout=5, server_settings={"application_name": "loadtop:admin"}
                    )
                    try:
                        ok = await conn.fetchval(f"SELECT {fn}($1)", pid)
                    finally:
                        await conn.close()
            verb = "cancelled" if fn == "pg_cancel_backend" else "terminated"
            if self.engine is not None:
                kind = "backend-cancel" if fn == "pg_cancel_backend" else "backend-terminate"
                self.engine.event(kind, "key", note=f"pid {pid}")
            return f"{verb} backend {pid}" if ok else f"backend {pid} not found (already gone?)"

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return "call from another thread"
        fut = asyncio.run_coroutine_threadsafe(go(), loop)
        try:
            return fut.result(timeout=5)
        except Exception as e:
            return self.redactor(f"{verb_for(fn)} failed: {classify(e)}: {str(e)[:160]}")

    def cancel_backend(self, pid: int) -> str:
        return self._backend_call("pg_cancel_backend", pid)

    def terminate_backend(self, pid: int) -> str:
        return self._backend_call("pg_terminate_backend", pid)

    # ---- SessionControl: faults (thread-safe; --allow-faults, never --readonly) ----
    def fault_actions(self) -> dict[str, str | None]:
        """kind -> None when the configured targets allow it, else why not; {}
        when faults are disabled (`fault_disabled()` says why)."""
        if self.fault_disabled() or self.faults is None:
            return {}
        return self.faults.available()

    def fault_suggestions(self) -> dict[str, str]:
        """kind -> a spec the console pre-fills (editable) for each allowed kind."""
        if self.fault_disabled() or self.faults is None:
            return {}
        return self.faults.suggestions()

    def fault_disabled(self) -> str | None:
        if self.cfg.readonly:
            return "read-only session: faults are disabled"
        if not self.cfg.allow_faults:
            return ("faults are off: start with --allow-faults (or allow_faults = true in"
                    " loadtop.toml) to inject them from here")  # fmt: skip
        return None

    def _fault_call(self, coro_fn: Callable[[], Any], timeout: float = 20) -> str:
        loop = self._loop
        if loop is None or self.faults is None:
            return "session is not running"
        fut = asyncio.run_coroutine_threadsafe(coro_fn(), loop)
        try:
            return str(fut.result(timeout=timeout))
        except FaultError as e:
            return str(e)
        except Exception as e:
            return self.redactor(f"fault failed: {type(e).__name__}: {str(e)[:160]}")

    def describe_fault(self, spec: str) -> tuple[bool, str]:
        """(True, what `inject_fault(spec)` would hit: pod name, pids, client
        ids, key), resolved now; that exact match is what a following
        inject_fault of the same spec hits. (False, why not) when refused."""
        why = self.fault_disabled()
        if why:
            return False, why
        try:
            parsed = parse_fault_spec(spec)
        except FaultError as e:
            return False, str(e)
        faults = self.faults
        if faults is None or self._loop is None:
            return False, "session is not running"
        self._described = None

        async def go() -> str:
            action, text = await faults.describe(parsed)
            self._described = (spec, action)
            return self.redactor(text)

        text = self._fault_call(go)
        shown = self._described
        return shown is not None and shown[0] == spec, text

    def inject_fault(self, spec: str, source: str = "key") -> str:
        why = self.fault_disabled()
        if why:
            return why
        try:
            parsed = parse_fault_spec(spec)
        except FaultError as e:
            return str(e)
        shown = self._described
        self._described = None
        action = shown[1] if shown is not None and shown[0] == spec else None
        faults = self.faults
        assert faults is not None
        return self._fault_call(lambda: faults.inject(parsed, source, action))

    def _report_source(self) -> Recorder | None:
        """The recording file a report is streamed from: --record when it is
        a regular file, else the session's private spool."""
        if self.recorder is not None and self.recorder.is_file:
            return self.recorder
        return self._spool

    def _report_recording(self, end: dict[str, Any] | None = None) -> Recording:
        """The session so far as `loadtop report` would read it: the recording
        as written up to now (the last complete line)."""
        src = self._report_source()
        if src is None:
            return Recording(header=self.header, ticks=list(self.ticks), end=end)
        rec = read_recording(src.path, limit=src.bytes)
        if end is not None and rec.end is None:
            rec.end = end
        return rec

    def export_report(self, path: str | None = None) -> str:
        """Write the report so far; without a path, a timestamped file next to
        `--export` when one was given (issue 13), else in the working directory."""
        if not path:
            name = f"loadtop-{self.cfg.run_id}-{time.strftime('%Y%m%d-%H%M%S')}.md"
            path = str(Path(self.cfg.export).parent / name) if self.cfg.export else name
        write_report(self._report_recording(), path, redactor=self.redactor)
        self.note("export", path)
        return path

    # ---- lifecycle ---------------------------------------------------------------
    def start_thread(self) -> None:
        """Run the session on its own thread and loop; returns when the load has
        started (or failed to: then `self.error` says why)."""

        def main() -> None:
            try:
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            with runner:
                try:
                    runner.run(self.run())
                except (TargetError, SetupError, ScenarioError, RecordingError) as e:
                    self.error = self.redactor(str(e))
                except Exception as e:  # surfaced to the front end, never lost
                    self.error = self.redactor(f"{type(e).__name__}: {e}")
                finally:
                    self._ready.set()
                    self._done.set()

        self._thread = threading.Thread(target=main, name="loadtop-engine", daemon=True)
        self._thread.start()
        self._ready.wait()

    async def run(self, *, install_signals: bool = False) -> Outcome:
        self._loop = asyncio.get_running_loop()
        self._admin_lock = asyncio.Lock()
        cfg = self.cfg
        self._check_needs()
        self.header = self._make_header()
        if cfg.record:
            self.recorder = Recorder(cfg.record, self.header, scrub=self.redactor.scrub_json)
        if self.recorder is None or not self.recorder.is_file:
            self._open_spool()
        reason = "error"
        try:
            if cfg.http_via_proxy and cfg.http_url:
                self.proxy = await FaultProxy(cfg.http_url).start()
                self.clients.http_url = cfg.http_url = self.proxy.url
            await self._connect()
            await self._setup()
            self._start_observers()
            if self.probe_set is not None:
                await self.probe_set.start()
            if cfg.processes > 1:
                names = [inst.name for inst, _ in self.instances]
                self.procs = ProcessWorkers(self._host_specs(), names)
                await self.procs.start()
            self.engine = LoadEngine(
                self.instances, self.clients, cfg.engine, prefixes=self.prefixes,
                params=cfg.params,
                readings=self.probe_set.latest if self.probe_set is not None else None,
                redact=self.redactor, workers=self.procs,
            )  # fmt: skip
            self.verifier = Verifier(
                [inst for inst, _ in self.instances], self._admin_ctx, self.engine.event,
                self.redactor,
            )  # fmt: skip
            self.pipeline = Pipeline(
                self.engine, detectors=self.detectors, verifier=self.verifier,
                recovery=RecoveryTracker(cfg.slo),
            )  # fmt: skip
            self.pipeline.subscribe(self._on_tick)
            if (cfg.faults or cfg.allow_faults) and not cfg.readonly:
                self.faults = FaultScheduler(self._fault_targets(), self.engine.event, cfg.faults)
                faults = self.faults
                self.pipeline.before_last_tick.append(lambda: faults.heal_all("session ending"))
                faults.start()
            if install_signals:
                self._install_signals()
            if self._stop_requested:
                self.engine.stop(self._stop_requested)
            self._ready.set()
            reason = await self.pipeline.run()
            self.unverified = await self.verifier.verify_final(cfg.retry_s, self._reconnect)
            for name, why in self.unverified.items():
                self.messages.append(f"final verify() of {name} could not run: {why}")
        except Exception as e:
            self.error = self.redactor(str(e))
            self._error_input = isinstance(
                e, TargetError | SetupError | ScenarioError | RecordingError | ThresholdError
            )
            raise
        finally:
            await self._finish(reason)
        assert self.outcome is not None
        return self.outcome

    def _fault_targets(self) -> FaultTargets:
        cfg = self.cfg
        return FaultTargets(
            pg_dsn=cfg.pg_dsn, redis_url=cfg.redis_url, proxy=self.proxy,
            k8s_namespace=cfg.k8s_namespace, k8s_selector=cfg.k8s_selector,
            k8s_context=cfg.k8s_context, kube_config=cfg.kube_config,
            processes=dict(cfg.fault_processes), hints=dict(cfg.fault_hints),
        )  # fmt: skip

    def _open_spool(self) -> None:
        """Without --record (or with one that cannot be read back, a pipe),
        the session still records, to a temporary file removed at the end:
        exports and the end-of-run report stream it, so memory does not grow
        with the session. A spool that cannot be written is not fatal."""
        import tempfile

        try:
            fd, name = tempfile.mkstemp(prefix=f"loadtop-{self.cfg.run_id}-", suffix=".jsonl")
            os.close(fd)
            self._spool = Recorder(name, self.header, scrub=self.redactor.scrub_json)
        except (OSError, RecordingError) as e:
            self.messages.append(f"no temporary recording ({e}): exports cover the last"
                                 f" {self.ticks.maxlen} ticks only")  # fmt: skip
            self._spool = None

    def _close_spool(self) -> None:
        sp, self._spool = self._spool, None
        if sp is not None:
            sp.close_quietly()
            with contextlib.suppress(OSError):
                os.unlink(sp.path)

    def _check_needs(self) -> None:
        cfg = self.cfg
        if cfg.processes > 1:
            check_processes([type(inst) for inst, _ in self.instances])
        have = {"postgres": cfg.pg_dsn, "redis": cfg.redis_url, "http": cfg.http_url}
        flag = {"postgres": "--pg DSN", "redis": "--redis URL", "http": "--http URL"}
        for inst, _ in self.instances:
            for need in inst.needs:
                if not have[need]:
                    raise ScenarioError(f"scenario {inst.name!r} needs {need}: give {flag[need]}")
            if cfg.readonly and inst.writes:
                raise ScenarioError(
                    f"scenario {inst.name!r} writes to its target and --readonly is set:"
                    " drop --readonly or choose a read-only scenario (e.g. pg-select)"
                )

    def _host_specs(self) -> list[HostSpec]:
        cfg, e = self.cfg, self.cfg.engine
        caps = allocate(e.max_concurrency, [1.0] * cfg.processes)
        refs = [(class_ref(type(inst)), self.prefixes[inst.name]) for inst, _ in self.instances]
        return [
            HostSpec(
                index=k,
                cap=cap,
                worker_offset=sum(caps[:k]),
                scenarios=refs,
                params=dict(cfg.params),
                pg_dsn=cfg.pg_dsn,
                redis_url=cfg.redis_url,
                http_url=cfg.http_url,
                pg_settings=dict(self.clients.pg_settings),
                seed=e.seed,
                drain_seconds=e.drain_seconds,
            )  # fmt: skip
            for k, cap in enumerate(caps)
        ]

    def _make_header(self) -> dict[str, Any]:
        e = self.cfg.engine
        return {
            "run_id": self.cfg.run_id,
            "started": time.time(),
            "targets": self.targets,
            "scenarios": [
                {
                    "name": inst.name,
                    "weight": w,
                    "needs": list(inst.needs),
                    "description": inst.description,
                }  # fmt: skip
                for inst, w in self.instances
            ],
            "params": redact_params(self.cfg.params),
            "load": {
                "mode": "rate" if e.rate else "workers",
                "concurrency": e.concurrency,
                "rate": e.rate,
                "plan": e.plan,
                "step_seconds": e.step_seconds if e.plan else None,
                "duration_s": e.duration,
                "max_concurrency": e.max_concurrency,
                "interval_s": e.interval,
                "seed": e.seed,
                "processes": self.cfg.processes,
            },
            "thresholds": [t.expr for t in e.thresholds],
            "slo": self.cfg.slo,
            "detect": dict(self.cfg.detect or {}),  # what `report --redetect` starts from
            "readonly": self.cfg.readonly,
        }

    async def _connect(self) -> None:
        needs = {n for inst, _ in self.instances for n in inst.needs}
        await connect_clients(self.clients, needs, self.redactor, self.cfg.engine.max_concurrency)

    async def _setup(self) -> None:
        for inst, _ in self.instances:
            prefix = self.prefixes[inst.name]
            if "postgres" in inst.needs and self.clients.pg is not None and not self.cfg.readonly:
                await self.clients.pg.execute(f'CREATE SCHEMA IF NOT EXISTS "{prefix}"')
            self._created_prefixes.add(inst.name)
            try:
                async with self._admin_ctx(inst.name) as ctx:
                    await asyncio.wait_for(inst.prepare(ctx), 60)
                    await asyncio.wait_for(inst.setup(ctx), 120)
            except asyncio.CancelledError:
                raise
            except ScenarioError:
                raise
            except Exception as e:
                raise SetupError(
                    self.redactor(
                        f"scenario {inst.name!r}: setup failed: {classify(e)}: {str(e)[:200]}"
                        " (fix the scenario or its -p parameters; what it created was removed)"
                    )
                ) from None

    def _start_observers(self) -> None:
        cfg = self.cfg
        if cfg.probes:
            try:
                from app.probes.factory import build_probes
            except ImportError:
                build_probes = None  # type: ignore[assignment]
            if build_probes is not None:
                self.probe_set = self.build_probe_set()
        try:
            from app.detect import build_detectors
        except ImportError:
            return
        detect = dict(cfg.detect or {})
        if cfg.slo and "slo" not in detect:
            detect["slo"] = cfg.slo
        self.detectors = build_detectors(detect)

    def build_probe_set(self) -> Any:
        """The probes for this session's targets (app.probes.ProbeSet)."""
        from app.probes.factory import build_probes

        cfg = self.cfg
        return build_probes(
            pg_dsn=cfg.pg_monitor_dsn or cfg.pg_dsn,
            redis_url=cfg.redis_url,
            k8s_namespace=cfg.k8s_namespace,
            k8s_selector=cfg.k8s_selector,
            k8s_context=cfg.k8s_context,
            prometheus_url=cfg.prometheus_url,
            local_pids=cfg.local_pids,
            intervals=cfg.probe_intervals,
            redis_lock_patterns=cfg.redis_lock_patterns,
            redis_queue_patterns=cfg.redis_queue_patterns,
            pg_sql_queues=cfg.pg_sql_queues,
        )

    @contextlib.asynccontextmanager
    async def _admin_ctx(self, name: str) -> AsyncIterator[Context]:
        """A worker -1 context for setup/verify/teardown, holding a pool
        connection as `conn` (when the scenario has Postgres)."""
        inst = next((i for i, _ in self.instances if i.name == name), None)
        prefix = self.prefixes.get(name, f"loadtop_{self.cfg.run_id}")
        ctx = Context(
            worker=-1,
            params=self.cfg.params,
            rng=__import__("random").Random(self.cfg.engine.seed),
            prefix=prefix,
            scenario=name,
            pg=self.clients.pg,
            redis=self.clients.redis,
            http=self.clients.http,
            http_url=self.cfg.http_url,
            concurrency=self.cfg.engine.concurrency,
            _counter=self.engine.counter_for(name) if self.engine is not None else None,
        )
        if self.clients.pg is not None and (inst is None or "postgres" in inst.needs):
            async with self.clients.pg.acquire(timeout=15) as conn:
                ctx.conn = conn
                yield ctx
        else:
            yield ctx

    def _on_tick(self, tick: Tick) -> None:
        line = tick_to_json(tick)  # once, for the recording(s) and the recent window
        self.ticks.append(tick, line)
        if self.ticks.total % TRIM_EVERY == 0:
            release_free_memory()
        if self.recorder is not None:
            try:
                self.recorder.write_tick_json(line)
            except RecordingError as e:
                self.messages.append(str(e))
                self.recorder = None
                if self.engine is not None:
                    self.engine.event("recording-stopped", "system", note=str(e))
                if self._spool is None:  # exports go on from a spool, from this tick on
                    self._open_spool()
        if self._spool is not None:
            try:
                self._spool.write_tick_json(line)
            except RecordingError as e:
                self.messages.append(f"temporary recording stopped: {e}: exports cover"
                                     f" the last {self.ticks.maxlen} ticks only")  # fmt: skip
                self._close_spool()
        if self.printer is not None:
            self.printer(tick)
        for listener in self._listeners:
            try:
                listener(tick)
            except Exception as e:  # a front end's bug must not stop the load
                self.messages.append(f"tick listener failed: {type(e).__name__}: {e}")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")

    async def _finish(self, reason: str) -> None:
        """Teardown, cleanup, close: runs whatever happened before."""
        if self._stop_requested and reason in ("stop", "error"):
            reason = self._stop_requested
        if self.faults is not None:  # after an error the pipeline's hook may not have run
            try:
                await asyncio.wait_for(self.faults.heal_all(f"session ending: {reason}"), 30)
            except BaseException as e:
                self.messages.append(f"healing the faults failed: {type(e).__name__}: {e}")
            self.messages.extend(self.redactor(m) for m in self.faults.results)
        if self.procs is not None:  # gone before teardown; a no-op after an orderly stop
            await self.procs.aclose()
        for inst, _ in self.instances:
            if inst.name not in self._created_prefixes:
                continue
            try:
                async with self._admin_ctx(inst.name) as ctx:
                    await asyncio.wait_for(inst.teardown(ctx), 60)
            except BaseException as e:
                self.messages.append(self.redactor(f"{inst.name}: teardown failed: {classify(e)}"))
        leftovers = await self._cleanup_prefixes()
        if self.probe_set is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.probe_set.stop(), 5)
        await self._close_clients()
        if self.proxy is not None:
            await self.proxy.aclose()
        eng = self.engine
        invariants = dict(self.verifier.violations) if self.verifier else {}
        thresholds = self.pipeline.thresholds if self.pipeline else None
        tripped = thresholds.tripped if thresholds else None
        end: dict[str, Any] = {
            "ended": time.time(),
            "reason": reason,
            "exit_code": 2 if self.error and self._error_input else None,  # the verdict's, below
            "invariants": invariants,
            "invariants_final": True,  # the final check's figures, not the first-seen
            "unverified": dict(self.unverified),
            "leftovers": leftovers,
            # an end with no reason of its own (a cancelled task) did not finish either
            "error": self.error or ("interrupted" if reason == "error" else None),
            "threshold_tripped": (
                {"expr": tripped.expr, "tick": thresholds.tripped_tick, "value": tripped.value}
                if tripped and thresholds
                else None
            ),
            "never_connected": eng.never_connected() if eng else {},
            "messages": self.messages[-50:],
        }
        # the one verdict: the same function the report uses, over the same data
        try:
            v = build_summary(self._report_recording(end))["verdict"]
        except Exception as e:  # judging must not lose the end record: fail closed
            v = {"verdict": "FAIL", "exit_code": 1, "reasons": [],
                 "why": f"the run could not be judged: {type(e).__name__}: {e}"}  # fmt: skip
        end.update(exit_code=v["exit_code"], verdict=v["verdict"], why=v["why"])
        code = v["exit_code"]
        self.end = end
        if self.recorder is not None:
            try:
                self.recorder.close(end)
            except RecordingError as e:
                self.messages.append(str(e))
        if self._spool is not None:
            with contextlib.suppress(RecordingError):
                self._spool.close(end)
        report_path = None
        try:
            if self.cfg.export and self.engine is not None:
                try:
                    report_path = write_report(
                        self._report_recording(end), self.cfg.export, redactor=self.redactor
                    )
                except (OSError, RecordingError) as e:
                    self.messages.append(
                        f"--export {self.cfg.export}: {getattr(e, 'strerror', None) or e}"
                    )
        finally:
            self._close_spool()
        self.outcome = Outcome(
            reason=reason, exit_code=code, ticks=self.ticks.total, invariants=invariants,
            tripped=tripped.expr if tripped else None, report_path=report_path,
            record_path=None if self.cfg.record_temporary else self.cfg.record,
            verdict=v["verdict"], why=self.redactor(v["why"]), leftovers=leftovers,
            unverified=dict(self.unverified),
        )  # fmt: skip

    async def _reconnect(self) -> None:
        """Drop the shared clients' connections, so the next use opens fresh
        ones (after a target restart the pooled ones are dead)."""
        if self.clients.pg is not None:
            with contextlib.suppress(Exception):
                await self.clients.pg.expire_connections()
        if self.clients.redis is not None:
            with contextlib.suppress(Exception):
                await self.clients.redis.connection_pool.disconnect()

    async def _cleanup_prefixes(self) -> list[dict[str, Any]]:
        if self.cfg.readonly:  # nothing was created (the server refused writes)
            return []
        schemas = [self.prefixes[inst.name] for inst, _ in self.instances
                   if "postgres" in inst.needs and inst.name in self._created_prefixes]  # fmt: skip
        return await remove_prefixes(
            f"loadtop_{self.cfg.run_id}_",
            pg_dsn=self.cfg.pg_dsn if self.clients.pg is not None else None,
            redis_url=self.cfg.redis_url if self.clients.redis is not None else None,
            pg_settings=self.clients.pg_settings, retry_s=self.cfg.retry_s,
            schemas=schemas, redactor=self.redactor, say=self.messages.append,
        )  # fmt: skip

    async def _close_clients(self) -> None:
        await close_clients(self.clients)


def run_sync(coro: Any) -> Any:
    """Run a session's coroutine to completion on uvloop (asyncio without it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def print_outcome(session: Session, o: Outcome) -> None:
    """The closing lines of a headless run or watch: messages on stderr, the
    outcome on stdout, every line masked."""
    scrub = session.redactor
    for m in session.messages:
        print(f"loadtop: {scrub(m)}", file=sys.stderr, flush=True)
    print(f"stopped: {o.reason} · {o.ticks} ticks", flush=True)
    if o.tripped:
        print(f"threshold tripped: {o.tripped}", flush=True)
    for name, vs in o.invariants.items():
        for v in vs[:10]:
            print(scrub(f"invariant violated: {name}: {v}"), flush=True)
    for x in o.leftovers:
        print(scrub(f"cleanup failed: {x['target']}: left {x['what']}"), flush=True)
        for c in x["commands"]:
            print(scrub(f"  remove with: {c}"), flush=True)
    if o.report_path:
        print(f"report: {o.report_path}", flush=True)
    if o.record_path:
        print(f"recording: {o.record_path}", flush=True)
    print(scrub(f"{o.verdict}: {o.why}"), flush=True)


def verb_for(fn: str) -> str:
    return "cancel" if "cancel" in fn else "terminate"


__all__ = ["Outcome", "RunConfig", "Session", "SetupError"]
