"""Runs faults on the session's loop: scheduled ones (`--fault at=...`) and
the console's; marks each injection and heal as a ControlEvent; heals every
fault still active when the session ends, however it ends.

Events: kind "fault" (before = the fault's number, after = its planned
duration in s, 0 for one that heals itself; note "#N kind: what was hit"),
"fault-heal" (before = the number), "fault-failed" (note: why).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from app.faults.actions import ACTIONS, Action, FaultTargets
from app.faults.spec import FaultError, FaultSpec

EventFn = Callable[..., None]


class FaultScheduler:
    def __init__(
        self, targets: FaultTargets, event: EventFn, specs: Iterable[FaultSpec] = ()
    ) -> None:
        self.targets = targets
        self.event = event
        self.specs = list(specs)
        self.active: dict[int, Action] = {}
        self.count = 0
        self.results: list[str] = []  # one line per injection / failure, for the end messages
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heals: dict[int, asyncio.TimerHandle | asyncio.Task[Any]] = {}
        self._waiting: set[asyncio.Task[Any]] = set()  # scheduled, not yet injected
        self.closed = False

    # ---- what the console asks --------------------------------------------------
    def available(self) -> dict[str, str | None]:
        """kind -> None when the configured targets allow it, else why not."""
        return {k: a.available(self.targets) for k, a in ACTIONS.items()}

    def suggestions(self) -> dict[str, str]:
        """kind -> a spec to start from, for each kind the targets allow."""
        return {k: a.suggest(self.targets) for k, a in ACTIONS.items()
                if a.available(self.targets) is None}  # fmt: skip

    def build(self, spec: FaultSpec) -> Action:
        action = ACTIONS[spec.kind](spec.params, self.targets)
        why = action.available(self.targets)
        if why:
            raise FaultError(why)
        return action

    async def describe(self, spec: FaultSpec) -> tuple[Action, str]:
        action = self.build(spec)
        return action, await asyncio.wait_for(action.describe(), 10)

    # ---- injecting ------------------------------------------------------------------
    def start(self) -> None:
        """Schedule every `at=` fault from now (the load's start)."""
        loop = asyncio.get_running_loop()
        for spec in self.specs:
            if spec.at is not None:
                self._waiting.add(self._spawn(self._at(loop.time() + spec.at, spec)))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _at(self, when: float, spec: FaultSpec) -> None:
        await asyncio.sleep(max(when - asyncio.get_running_loop().time(), 0))
        self._waiting.discard(asyncio.current_task())  # type: ignore[arg-type]
        await self.inject(spec, source="cli")

    async def inject(
        self, spec: FaultSpec, source: str = "key", action: Action | None = None
    ) -> str:
        """Inject now (describe first unless `action` was described already);
        a failure is an event and a line, never an exception out of here."""
        if self.closed:
            return "the session is ending: no new faults"
        n = self.count + 1
        try:
            if action is None:
                action, _ = await self.describe(spec)
            result = await asyncio.wait_for(action.inject(), 15)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            why = str(e) if isinstance(e, FaultError) else f"{type(e).__name__}: {str(e)[:160]}"
            self.event("fault-failed", source, None, None, f"{spec.kind}: {why}")
            self.results.append(f"fault {spec.kind} failed: {why}")
            return f"{spec.kind} failed: {why}"
        self.count = n
        dur = action.duration
        if dur is not None:
            dur = min(dur, action.max_duration or dur)
            self.active[n] = action
            loop = asyncio.get_running_loop()
            self._heals[n] = loop.call_later(dur, lambda: self._spawn(self.heal(n, "system")))
        self.event("fault", source, float(n), float(dur or 0.0), f"#{n} {spec.kind}: {result}")
        self.results.append(f"fault #{n} {spec.kind}: {result}")
        return f"#{n} {spec.kind}: {result}"

    async def heal(self, n: int, source: str = "system", why: str = "") -> None:
        action = self.active.pop(n, None)
        h = self._heals.pop(n, None)
        if isinstance(h, asyncio.TimerHandle):
            h.cancel()
        if action is None:
            return
        try:
            result = await asyncio.wait_for(action.heal(), 10) or "healed"
        except Exception as e:
            result = f"heal failed: {type(e).__name__}: {str(e)[:120]}"
            self.results.append(f"fault #{n} {action.name}: {result}")
        note = f"#{n} {action.name}: {result}" + (f" ({why})" if why else "")
        self.event("fault-heal", source, float(n), None, note)

    async def heal_active(self, why: str) -> None:
        """Heal what is active now (panic); scheduled faults still come."""
        await asyncio.gather(*[self.heal(n, "system", why) for n in list(self.active)],
                             return_exceptions=True)  # fmt: skip

    async def heal_all(self, why: str = "session ending") -> None:
        """Every active fault healed now; no scheduled fault will start."""
        self.closed = True
        current = asyncio.current_task()
        for t in list(self._waiting):  # heals under way are awaited, never cancelled
            if t is not current and not t.done():
                t.cancel()
        others = [t for t in self._tasks if t is not current]
        await asyncio.gather(*others, return_exceptions=True)  # injections under way end first
        await asyncio.gather(*[self.heal(n, "system", why) for n in list(self.active)],
                             return_exceptions=True)  # fmt: skip
