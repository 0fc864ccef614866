"""Numbers a person reads at a glance, one way everywhere: the console, the
headless line, the report and the chart axes all format through here.

- rates and counts: `950`, `12.3k`, `1.2M` (`rate`);
- durations: `950µs`, `12.3ms`, `1.2s`, `2m03s`, `1h02m` (`ms`, `seconds`, `age`);
- bytes: `46.6 MiB` (`size`);
- a share of a limit: `12%`, or `no limit` when there is none (`share`);
- elapsed time on a clock: `02:03`, `1:02:03` (`clock`).

Rules every function keeps: a value rounded to zero never shows a minus sign;
a value that rounds up to the next unit is shown in that unit (`999.96` is
`1.0k`, not `1000`); None and NaN are `NONE`. Pure Python, no imports from the
rest of loadtop, so any layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

NONE = "-"  # what a missing figure reads as

_SI = (("", 1.0), ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12))
_BIN = (("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40))


def _missing(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fixed(x: float, decimals: int) -> str:
    """`x` with `decimals` places, without a minus sign on a rounded zero."""
    s = f"{x:.{decimals}f}"
    if s.startswith("-") and float(s) == 0:
        s = s[1:]
    return s


def _sig3(x: float) -> tuple[str, bool]:
    """Three significant figures at most (1.23, 12.3, 123), and whether the
    rounded value reached 1000 (so the caller moves to the next unit)."""
    a = abs(x)
    decimals = 2 if a < 10 else 1 if a < 100 else 0
    s = _fixed(x, decimals)
    r = abs(float(s))
    if r >= 1000:
        return s, True
    if decimals and r >= (10 if decimals == 2 else 100):  # 9.996 -> 10.0, 99.96 -> 100
        s = _fixed(x, decimals - 1)
    return s, False


def rate(v: float | None, none: str = NONE) -> str:
    """Operations per second, or any count that grows large: `0`, `0.25`, `3.5`,
    `70` (a whole number stays whole), `950`, `12.3k`, `1.2M`."""
    if _missing(v):
        return none
    assert v is not None
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if float(v).is_integer() and abs(v) < 1000:  # a count: 70, not 70.0
        return str(int(v))  # int(-0.0) is 0
    for i, (unit, div) in enumerate(_SI):
        x = v / div
        a = abs(x)
        decimals = (2 if a < 1 else 1 if a < 100 else 0) if not unit else (1 if a < 100 else 0)
        s = _fixed(x, decimals)
        if decimals and abs(float(s)) >= (1 if decimals == 2 else 100):  # 0.999, 99.96
            s = _fixed(x, decimals - 1)
        elif decimals == 2 and s.endswith("0"):  # 0.4, not 0.40
            s = s[:-1]
        if abs(float(s)) < 1000 or i == len(_SI) - 1:
            return "0" if float(s) == 0 else s + unit
    return str(v)  # not reached


def num(v: float | None, none: str = NONE) -> str:
    """A setting or a count shown as given: `8`, `2.5`, `12.5k` (large ones shortened)."""
    if _missing(v):
        return none
    assert v is not None
    if abs(v) >= 10_000 or math.isinf(v):
        return rate(v, none)
    if float(v).is_integer():
        return str(int(v))
    s = f"{v:.4g}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def ms(v: float | None, none: str = NONE) -> str:
    """A duration given in milliseconds: `950µs`, `1.23ms`, `12.3ms`, `123ms`,
    `1.2s`, `12.3s`, `2m03s`, `1h02m`, `3d04h`."""
    if _missing(v):
        return none
    assert v is not None
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    sign = "-" if v < 0 else ""
    a = abs(v)
    if a < 1:
        us = _fixed(a * 1000, 0)
        if us == "0":
            return "0ms"
        if float(us) < 1000:
            return f"{sign}{us}µs"
        a = 1.0
    if a < 1000:
        s, over = _sig3(a)
        if not over:
            return f"{sign}{s}ms"
    return sign + _long(a / 1000.0)


def _long(s: float) -> str:
    """s >= ~1: `1.2s`, `59.9s`, `2m03s`, `1h02m`, `3d04h`."""
    if s < 60:
        t = _fixed(s, 1)
        if float(t) < 60:
            return f"{t}s"
    total = round(s)
    if total < 3600:
        m, sec = divmod(total, 60)
        return f"{m}m{sec:02d}s"
    total_m = round(s / 60)
    if total_m < 24 * 60:
        h, m = divmod(total_m, 60)
        return f"{h}h{m:02d}m"
    d, h = divmod(round(s / 3600), 24)
    return f"{d}d{h:02d}h"


def seconds(v: float | None, none: str = NONE) -> str:
    """A duration given in seconds (see `ms`)."""
    if _missing(v):
        return none
    assert v is not None
    return ms(v * 1000.0)


def age(v: float | None, none: str = NONE) -> str:
    """How long something has lasted, in seconds. An age is never negative:
    clocks a little apart (server vs. here) read as 0."""
    if _missing(v):
        return none
    assert v is not None
    return seconds(max(0.0, v))


def size(n: float | None, none: str = NONE) -> str:
    """Bytes: `512 B`, `1.5 KiB`, `46.6 MiB`, `1.2 GiB`."""
    if _missing(n):
        return none
    assert n is not None
    for i, (unit, div) in enumerate(_BIN):
        x = n / div
        s = _fixed(x, 0 if unit == "B" else 1)
        if abs(float(s)) < 1024 or i == len(_BIN) - 1:
            return f"{s} {unit}"
    return f"{n} B"  # not reached


def share(v: float | None, limit: float | None, none: str = NONE) -> str:
    """`v` as a percentage of `limit`: `12%`; `no limit` when there is none."""
    if _missing(v):
        return none
    assert v is not None
    if _missing(limit) or not limit:
        return "no limit"
    return f"{_fixed(100.0 * v / limit, 0)}%"


def clock(s: float | None, none: str = NONE) -> str:
    """Elapsed time on a clock: `00:00`, `02:03`, `1:02:03`. Negative reads as 0."""
    if _missing(s):
        return none
    assert s is not None
    t = max(0, int(s))
    h, rem = divmod(t, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def axis_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round positions (1, 2, 2.5 or 5 × 10^k apart) within lo..hi."""
    return _ticks(lo, hi, n, [m * 10**k for k in range(-6, 16) for m in (1, 2, 2.5, 5)])


_TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 4 * 3600]


def time_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` positions within lo..hi seconds, a round clock interval apart."""
    return _ticks(lo, hi, n, _TIME_STEPS + [d * 86400 for d in (1, 2, 7, 14, 28)])


def _ticks(lo: float, hi: float, n: int, steps: Sequence[float]) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    step = next((s for s in steps if s >= raw), steps[-1])
    k = math.ceil(lo / step - 1e-9)
    out = []
    while k * step <= hi + step * 1e-9:
        out.append(round(k * step, 9))
        k += 1
    return out
