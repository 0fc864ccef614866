"""A fault as given: its kind, when, its parameters; the one-line error for
a spec that cannot be used. Below the actions, so they can share it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["FaultError", "FaultSpec", "parse_seconds"]


class FaultError(ValueError):
    """A fault that cannot be injected as given: one line that says what to fix."""


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    at: float | None = None  # seconds after the load started (None: now, from the console)
    params: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        parts = [f"kind={self.kind}"] + [f"{k}={v}" for k, v in self.params.items()]
        if self.at is not None:
            parts.insert(0, f"at={self.at:g}s")
        return ",".join(parts)


def parse_seconds(text: str, what: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", str(text))
    if not m:
        raise FaultError(f"{what} {text!r} is not a duration: use e.g. 30s, 500ms or 2m")
    return float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m[2]]
