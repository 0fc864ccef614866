"""What a live session keeps in memory of its own timeline: a bounded window.

The recording on disk has every tick; the session keeps only the most recent
ones (`RECENT_TICKS`), each with its histograms in the compressed encoding
(`LazyHist`, ~1 KB a scenario instead of 139 KB), decoded again only when
read. So a session's memory does not grow with its length, and an export or
the end-of-run report streams the recording file instead of a list.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from typing import Any, overload

from app.tick import LazyHist, Tick, tick_from_json

RECENT_TICKS = 300  # 5 min at the default 1 s tick


def compact_tick(tick: Tick, as_json: dict[str, Any] | None = None) -> Tick:
    """The same tick with every histogram held encoded (from `as_json`, the
    tick's recording line, when the caller already made it)."""
    if as_json is not None:
        return tick_from_json(as_json)
    return dataclasses.replace(
        tick,
        scenarios=tuple(
            dataclasses.replace(s, hist=LazyHist.of(s.hist))  # type: ignore[arg-type]
            if not isinstance(s.hist, LazyHist)
            else s
            for s in tick.scenarios
        ),
    )


class RecentTicks:
    """The last `maxlen` ticks, compact; a read-only sequence (index, slice,
    iterate, len) over what is kept, and `total`: every tick ever added."""

    def __init__(self, maxlen: int = RECENT_TICKS) -> None:
        self._d: deque[Tick] = deque(maxlen=maxlen)
        self.total = 0

    @property
    def maxlen(self) -> int:
        return self._d.maxlen or 0

    def append(self, tick: Tick, as_json: dict[str, Any] | None = None) -> None:
        self._d.append(compact_tick(tick, as_json))
        self.total += 1

    def __len__(self) -> int:
        return len(self._d)

    def __bool__(self) -> bool:
        return bool(self._d)

    def __iter__(self) -> Iterator[Tick]:
        return iter(list(self._d))

    @overload
    def __getitem__(self, i: int) -> Tick: ...
    @overload
    def __getitem__(self, i: slice) -> list[Tick]: ...
    def __getitem__(self, i: int | slice) -> Tick | list[Tick]:
        if isinstance(i, slice):
            return list(self._d)[i]
        return self._d[i]


# ---- giving freed memory back -------------------------------------------------------

TRIM_EVERY = 60  # ticks


def _libc_trim() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_trim: Any = None
_trim_loaded = False


def release_free_memory() -> None:
    """Hand memory malloc keeps free back to the system (glibc's
    malloc_trim). Each tick allocates a 139 KB histogram per scenario on the
    engine thread and frees it on another (the console's) a little later;
    glibc keeps such freed chunks in per-thread arenas, so without this the
    process's RSS creeps up although what it holds does not grow."""
    global _trim, _trim_loaded
    if not _trim_loaded:
        _trim, _trim_loaded = _libc_trim(), True
    if _trim is not None:
        _trim(0)
