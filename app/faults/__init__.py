"""Faults injected under load, and the recovery they cost.

    spec (`--fault 'at=30s,kind=pod-kill'`, or the console's menu)
      -> an action (app/faults/actions.py): name, needs, a safety check,
         describe (what will be hit), inject, heal, a hard maximum duration
      -> the scheduler (app/faults/scheduler.py) on the session's loop: the
         injection and the heal are ControlEvents ("fault", "fault-heal"), so
         every chart and the timeline mark them; heal_all() on every ending
      -> the recovery enricher (app/faults/recovery.py), a function of the
         ticks alone: baseline, impact, time to recover, as a `fault` anomaly
         (so `report --redetect` finds the same figures in a recording)

Safety: an action only touches the configured targets, through an explicit
match (an application name, a key, a table, one pod of a selector); there is
no "all pods" or "all backends"; every duration has a hard upper bound, and
the PostgreSQL faults also set a server-side timeout so even a SIGKILLed
loadtop cannot leave a lock behind.
"""

from __future__ import annotations

from typing import Any

from app.faults.actions import ACTIONS
from app.faults.spec import FaultError, FaultSpec, parse_seconds

__all__ = ["FaultError", "FaultSpec", "parse_fault_spec", "parse_seconds"]


def parse_fault_spec(text: Any) -> FaultSpec:
    """`at=30s,kind=pod-kill` or `at=60s,kind=redis-pause,ms=5000`: checked
    against the action's declared parameters (names and values), so a bad
    spec fails before anything starts."""
    raw = str(text).strip()
    if not raw:
        raise FaultError("--fault is empty: give e.g. 'at=30s,kind=pod-kill'")
    items: dict[str, str] = {}
    for part in raw.split(","):
        k, sep, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not sep or not k or not v:
            raise FaultError(
                f"--fault {raw!r}: {part.strip()!r} is not key=value (e.g. at=30s,kind=pod-kill)"
            )
        if k in items:
            raise FaultError(f"--fault {raw!r}: {k} is given twice")
        items[k] = v
    kind = items.pop("kind", None)
    if kind is None:
        raise FaultError(f"--fault {raw!r} has no kind: add kind=... (one of {', '.join(ACTIONS)})")
    if kind not in ACTIONS:
        import difflib

        near = difflib.get_close_matches(kind, list(ACTIONS), 1, 0.6)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise FaultError(f"--fault: no fault kind {kind!r}{hint}: use one of {', '.join(ACTIONS)}")
    at = None
    if "at" in items:
        at = parse_seconds(items.pop("at"), "--fault at=")
    spec = FaultSpec(kind=kind, at=at, params=items)
    ACTIONS[kind].check_params(spec.params)  # raises FaultError
    return spec
