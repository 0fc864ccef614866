"""Words for probe readings' shapes (app/probes/schema.py), shared by the
probes, the detectors and the console, which sit side by side in the layers
and so cannot import each other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe_wait(w: Mapping[str, Any]) -> str:
    """'wants ShareLock on transaction 812 (a row it changed) held ExclusiveLock by 3831'."""
    held = [h for h in w.get("holders") or () if h.get("granted")]
    queued = [h for h in w.get("holders") or () if not h.get("granted")]
    s = f"wants {w.get('mode')} on {w.get('object')}"
    if held:
        s += "; held " + ", ".join(f"{h['mode']} by {h['pid']}" for h in held)
    if queued:
        s += "; queued behind " + ", ".join(f"{h['mode']} of {h['pid']}" for h in queued)
    return s
