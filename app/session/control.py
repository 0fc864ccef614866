"""What a front end (the console, signal handlers, tests) may ask of a running
session. Every method is safe to call from any thread and returns at once; the
engine applies the change on its own loop and records it as a `ControlEvent`
in the next tick, so charts mark it and the report lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from app.tick import Tick

TickListener = Callable[[Tick], None]


class SessionOutcome(Protocol):
    """How a finished session ended (`app.session.runner.Outcome` is one)."""

    @property
    def reason(self) -> str: ...

    @property
    def exit_code(self) -> int: ...

    @property
    def report_path(self) -> str | None: ...

    @property
    def record_path(self) -> str | None: ...

    @property
    def verdict(self) -> str:
        """PASS | FAIL | INCOMPLETE | ERROR (app.session.report.verdict)."""
        ...

    @property
    def why(self) -> str:
        """The verdict in one line."""
        ...


class SessionControl(Protocol):
    # ---- facts for the header --------------------------------------------
    @property
    def targets(self) -> dict[str, str]:
        """{"postgres": "postgresql://app@db:5432/shop", ...}, secrets redacted."""
        ...

    @property
    def plan(self) -> list[int]:
        """The ramp plan's concurrency steps ([] when there is none)."""
        ...

    @property
    def max_concurrency(self) -> int: ...

    @property
    def readonly(self) -> bool: ...

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration as recorded in the header (secrets redacted)."""
        ...

    # ---- ticks ----------------------------------------------------------------
    def subscribe(self, listener: TickListener) -> None:
        """`listener(tick)` is called on the engine's thread once per tick.
        A console must hand the tick over to its own loop (call_from_thread /
        post_message) and return quickly."""
        ...

    # ---- load controls --------------------------------------------------------
    def set_concurrency(self, n: int, source: str = "key") -> None:
        """Closed model: target worker count (clamped to 0..max_concurrency).
        A manual change while the ramp plan runs pauses the plan."""
        ...

    def step_concurrency(self, delta: int, source: str = "key") -> None: ...

    def set_rate(self, rate: float, source: str = "key") -> None:
        """Open model: intended operations per second."""
        ...

    def pause(self, source: str = "key") -> None: ...

    def resume(self, source: str = "key") -> None: ...

    def panic(self, source: str = "key") -> None:
        """Stop all load within a second: running operations are cancelled and
        their transactions roll back. `resume()` brings the load back."""
        ...

    def start_plan(self, source: str = "key") -> None: ...

    def stop_plan(self, source: str = "key") -> None: ...

    def note(self, kind: str, note: str, source: str = "key") -> None:
        """Record a front-end event (e.g. kind="export", note=path)."""
        ...

    # ---- backends (absent effect with --readonly: returns an error string) ----
    def cancel_backend(self, pid: int) -> str:
        """pg_cancel_backend(pid) on the monitor connection; returns a one-line
        result ("cancelled 4242" / "not permitted: ...")."""
        ...

    def terminate_backend(self, pid: int) -> str: ...

    # ---- faults (issue 15; app/faults): --allow-faults, never with --readonly ----
    def fault_disabled(self) -> str | None:
        """None when faults may be injected; else one line saying why not and how
        to enable them (the console's menu shows it instead of the actions)."""
        ...

    def fault_actions(self) -> dict[str, str | None]:
        """kind -> None when the configured targets allow it, else why not
        ({} when faults are disabled)."""
        ...

    def fault_suggestions(self) -> dict[str, str]:
        """kind -> a spec to pre-fill, e.g. "kind=pg-terminate,app=demo-shop"."""
        ...

    def describe_fault(self, spec: str) -> tuple[bool, str]:
        """(True, exactly what `inject_fault(spec)` would hit: pod name, backend
        pids, client ids, key), resolved now; (False, why not). Blocks briefly."""
        ...

    def inject_fault(self, spec: str, source: str = "key") -> str:
        """Inject it (the match shown by the last describe_fault of the same
        spec); marked on the timeline as a "fault" event; returns one line."""
        ...

    # ---- start and end -------------------------------------------------------
    def start_thread(self) -> None:
        """Start the session on its own thread and loop; returns once it has
        started, or failed to (then `error` says why)."""
        ...

    @property
    def error(self) -> str | None:
        """Why the session never started (bad target, failed setup), one
        line, secrets redacted; None once it has started."""
        ...

    @property
    def outcome(self) -> SessionOutcome | None:
        """How it ended; None until it has finished."""
        ...

    @property
    def messages(self) -> Sequence[str]:
        """Status lines for the end (embedded servers, faults, teardown)."""
        ...

    def export_report(self, path: str | None = None) -> str:
        """Write the Markdown summary of the ticks so far; returns the path."""
        ...

    def stop(self, reason: str = "quit") -> None:
        """Stop the load, run teardown, close the recording. Returns at once;
        `wait()` blocks until the session has finished."""
        ...

    def wait(self, timeout: float | None = None) -> bool: ...
