"""Detectors on the redis probe's readings (see app/probes/schema.py)."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.detect.base import Detector, Finding, Options, TickView
from app.detect.stats import median, slope
from app.tick import Tick

_DIGITS = re.compile(r"[0-9a-fA-F]{8,}|\d+")


def lock_family(key: str) -> str:
    """Locks of one kind share a family: ids and hex tokens become '#'."""
    return _DIGITS.sub("#", key)


# ---- redis-lock ------------------------------------------------------------------


@dataclass
class RedisLockOptions(Options):
    no_ttl_after_s: float = 10.0  # a lock with no expiry held this long
    hold_factor: float = 5.0  # held this many times its family's usual hold ...
    min_excess_s: float = 2.0  # ... and at least this many seconds more than usual
    min_samples: int = 5  # completed holds seen before "usual" means anything
    max_hold_s: float = 60.0  # held this long is too long whatever the usual (0 = off)
    expiry_slack_s: float = 0.25
    # error classes an application reports when its lock expired under it
    not_owned_classes: tuple[str, ...] = ("LockNotOwned", "NotAcquired", "lock not owned",
                                          "LockError")  # fmt: skip
    lookback_ticks: int = 10  # how far apart the expiry and the error may be
    event_hold_ticks: int = 10  # how long an "expired while held" stays raised


@dataclass
class _Held:
    holder: str
    first_t: float
    last_t: float
    age_s: float
    pttl_ms: int | None
    renewed: bool = False
    no_ttl: bool = False


@dataclass
class _Suspect:
    key: str
    old: str
    new: str
    old_age_s: float
    expired_at: float
    tick: int


@dataclass
class _LockState:
    last_t: float = -1.0
    held: dict[str, _Held] = field(default_factory=dict)
    gone: dict[str, tuple[_Held, float]] = field(default_factory=dict)  # key -> (held, seen gone)
    holds: dict[str, deque[float]] = field(default_factory=dict)  # family -> hold seconds
    suspects: deque[_Suspect] = field(default_factory=lambda: deque(maxlen=64))
    events: dict[str, tuple[_Suspect, int, list[str]]] = field(default_factory=dict)


class RedisLockDetector(Detector):
    """Lock keys with no TTL held N s, held far past their usual hold, or taken
    over by a new holder after expiring while the old holder still worked."""

    kind = "redis-lock"
    Options = RedisLockOptions
    raise_ticks = 1
    clear_ticks = 2
    opt: RedisLockOptions
    MAX_KEYS = 2000
    MAX_FAMILIES = 256

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._st: dict[str, _LockState] = {}
        self._errors: deque[tuple[int, dict[str, int]]] = deque(maxlen=32)

    def _sample(self, st: _LockState, key: str, hold_s: float) -> None:
        fam = lock_family(key)
        d = st.holds.get(fam)
        if d is None:
            if len(st.holds) >= self.MAX_FAMILIES:
                del st.holds[next(iter(st.holds))]
            d = st.holds[fam] = deque(maxlen=64)
        d.append(hold_s)

    def _update(self, st: _LockState, t: float, locks: list, tick: Tick) -> None:
        o = self.opt
        seen: set[str] = set()
        for lk in locks:
            key = str(lk.get("key", ""))
            if not key or key in seen:
                continue
            seen.add(key)
            holder = str(lk.get("holder", ""))
            pttl = lk.get("pttl_ms")
            pttl = None if not isinstance(pttl, int) or pttl < 0 else pttl
            no_ttl = bool(lk.get("no_ttl", pttl is None))
            prev = st.held.get(key)
            if prev is None and key in st.gone:
                prev = st.gone.pop(key)[0]
            age = lk.get("age_s")
            if prev is not None and prev.holder == holder:
                renewed = prev.renewed or (
                    pttl is not None and prev.pttl_ms is not None and pttl > prev.pttl_ms + 50
                )
                age = age if isinstance(age, int | float) else t - prev.first_t
                st.held[key] = _Held(holder, prev.first_t, t, float(age), pttl, renewed, no_ttl)
                continue
            if prev is not None:  # a new holder: the old hold ended between two polls
                self._sample(st, key, prev.age_s + max(0.0, t - prev.last_t) / 2)
                if prev.pttl_ms is not None:
                    expired_at = prev.last_t + prev.pttl_ms / 1000.0
                    if expired_at <= t + o.expiry_slack_s:
                        st.suspects.append(
                            _Suspect(key, prev.holder, holder, prev.age_s, expired_at, tick.index)
                        )
            age = float(age) if isinstance(age, int | float) else 0.0
            st.held[key] = _Held(holder, t - age, t, age, pttl, no_ttl=no_ttl)
        for key in [k for k in st.held if k not in seen]:
            h = st.held.pop(key)
            self._sample(st, key, h.age_s + max(0.0, t - h.last_t) / 2)
            st.gone[key] = (h, t)
        for key in [k for k, (_, tg) in st.gone.items() if t - tg > 60]:
            del st.gone[key]
        while len(st.held) > self.MAX_KEYS:
            del st.held[next(iter(st.held))]
        while len(st.gone) > self.MAX_KEYS:
            del st.gone[next(iter(st.gone))]

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        hits = {}
        for s in tick.scenarios:
            for c, n in s.errors.items():
                if n and any(p.lower() in c.lower() for p in o.not_owned_classes):
                    hits[f"{s.name}: {c}"] = hits.get(f"{s.name}: {c}", 0) + n
        if hits:
            self._errors.append((tick.index, hits))
        out: list[Finding] = []
        for name, t, data in view.readings("redis"):
            st = self._st.get(name)
            if st is None:
                st = self._st[name] = _LockState()
            if t > st.last_t:
                st.last_t = t
                self._update(st, t, list(data.get("locks") or ()), tick)
            # corroborate expiries with the application's "lock not owned" errors
            for sus in list(st.suspects):
                if tick.index - sus.tick > o.lookback_ticks:
                    st.suspects.remove(sus)
                    continue
                errs = [
                    f"{c} x{n}"
                    for i, e in self._errors
                    if i >= sus.tick - o.lookback_ticks
                    for c, n in e.items()
                ]
                if errs:
                    st.suspects.remove(sus)
                    st.events[sus.key] = (sus, tick.index, errs[:5])
            for key in [
                k for k, (_, i, _) in st.events.items() if tick.index - i >= o.event_hold_ticks
            ]:
                del st.events[key]
            out.extend(self._findings(name, st))
        return out

    def _findings(self, name: str, st: _LockState) -> list[Finding]:
        o = self.opt
        out = []
        keys = set(st.events) | {
            k for k, h in st.held.items() if h.no_ttl or h.age_s >= o.min_excess_s
        }
        for key in keys:
            h = st.held.get(key)
            problems: list[str] = []
            ev: dict = {"key": key}
            severity = "warning"
            if h is not None:
                ev.update(holder=h.holder, age_s=round(h.age_s, 1), pttl_ms=h.pttl_ms,
                          renewing=h.renewed)  # fmt: skip
                if h.no_ttl and h.age_s >= o.no_ttl_after_s:
                    problems.append(
                        f"lock {key} held by {h.holder} for {h.age_s:.0f}s with no TTL: a crashed "
                        f"holder keeps it forever; give it an expiry"
                    )
                    severity = "critical"
                usual = st.holds.get(lock_family(key))
                if usual is not None and len(usual) >= o.min_samples:
                    med = median(usual)
                    ev["usual_hold_s"] = round(med, 2)
                    too_long = h.age_s >= max(o.hold_factor * med, med + o.min_excess_s)
                else:
                    med = None
                    too_long = False
                if not too_long and o.max_hold_s > 0 and h.age_s >= o.max_hold_s:
                    too_long = True
                if too_long:
                    usual_txt = f" (usually {med:.1f}s)" if med is not None else ""
                    alive = "; the holder renews it, so it is alive but slow" if h.renewed else ""
                    problems.append(
                        f"lock {key} held by {h.holder} for {h.age_s:.0f}s{usual_txt}{alive}"
                    )
            if key in st.events:
                sus, _, errs = st.events[key]
                problems.insert(
                    0,
                    f"lock {key} expired under {sus.old} after {sus.old_age_s:.1f}s and was taken "
                    f"by {sus.new} while the old holder still worked ({errs[0]}): two holders at "
                    f"once; lengthen the TTL, renew it, or fence the writes",
                )
                ev.update(expired_holder=sus.old, new_holder=sus.new,
                          expired_after_s=round(sus.old_age_s, 2), errors=errs)  # fmt: skip
                severity = "critical"
            if not problems:
                continue
            ev["problems"] = problems
            out.append(Finding(f"{name}:lock:{key}", problems[0], severity, ev))
        return out


# ---- queue-backlog ---------------------------------------------------------------


@dataclass
class QueueBacklogOptions(Options):
    window_s: float = 30.0  # least-squares slope of depth over this window
    floor: int = 100  # depth below this is never a backlog
    min_growth_per_s: float = 1.0  # slope above this (items per second)
    min_samples: int = 3


@dataclass
class _Queue:
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=600))
    drain_per_s: float = 0.0  # the fastest drain seen (items per second)
    layout: str = ""
    growth: float = 0.0  # least-squares slope over the window
    short: float = 0.0  # slope of the last few samples


class QueueBacklogDetector(Detector):
    """Depth growing (arrivals above service), and consumers gone."""

    kind = "queue-backlog"
    Options = QueueBacklogOptions
    raise_ticks = 2
    clear_ticks = 3
    opt: QueueBacklogOptions
    MAX_QUEUES = 500

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._q: dict[tuple[str, str], _Queue] = {}
        self._blocked: dict[str, deque[tuple[float, int, int | None]]] = {}
        self._last_t: dict[str, float] = {}

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, t, data in view.readings("redis"):
            fresh = t > self._last_t.get(name, -1.0)
            self._last_t[name] = t
            blocked = data.get("blocked_clients")
            connected = data.get("connected_clients")
            bl = self._blocked.setdefault(name, deque(maxlen=600))
            if fresh and isinstance(blocked, int):
                bl.append((t, blocked, connected if isinstance(connected, int) else None))
            while bl and t - bl[0][0] > o.window_s:
                bl.popleft()
            # consumers gone: the clients that sat blocked (BRPOP, XREADGROUP) are
            # not blocked any more AND have disconnected. Busy consumers of a growing
            # backlog are not blocked either, but they stay connected.
            _, peak, peak_conn = max(bl, key=lambda x: (x[1], x[0]), default=(0, 0, None))
            gone = (
                isinstance(blocked, int)
                and blocked == 0
                and peak > 0
                and (
                    not isinstance(connected, int)
                    or peak_conn is None
                    or connected <= peak_conn - max(1, (peak + 1) // 2)
                )
            )
            for q in data.get("queues") or ():
                qname, depth = str(q.get("name", "")), q.get("depth")
                if not qname or not isinstance(depth, int):
                    continue
                st = self._q.get((name, qname))
                if st is None:
                    if len(self._q) >= self.MAX_QUEUES:
                        continue
                    st = self._q[(name, qname)] = _Queue()
                st.layout = str(q.get("layout", ""))
                if fresh:
                    st.samples.append((t, depth))
                while st.samples and t - st.samples[0][0] > o.window_s:
                    st.samples.popleft()
                if len(st.samples) < o.min_samples:
                    continue
                if fresh:  # slopes change only with a new sample
                    n = len(st.samples)
                    recent = [st.samples[j] for j in range(max(0, n - 5), n)]
                    st.short = slope(recent)
                    if st.short < 0:
                        st.drain_per_s = max(st.drain_per_s, -st.short)
                    st.growth = slope(list(st.samples)) if depth >= o.floor / 2 else 0.0
                growth, short = st.growth, st.short
                # a plateau is not growth: the last few samples must still rise
                if depth < o.floor / 2 or growth <= 0 or short <= 0:
                    continue
                growing = depth >= o.floor and growth >= o.min_growth_per_s
                drain = depth / st.drain_per_s if st.drain_per_s > 0 else None
                drain_txt = (
                    f"~{drain:.0f}s to drain if arrivals stopped"
                    if drain is not None
                    else "time to drain unknown (never seen draining)"
                )
                if gone:
                    summary = (
                        f"queue {qname}: consumers gone (blocked clients {peak} -> 0) while "
                        f"depth grows +{growth:.1f}/s to {depth}; restart the workers"
                    )
                else:
                    summary = (
                        f"queue {qname} backlog grows +{growth:.1f}/s, depth {depth}: arrivals "
                        f"exceed service; {drain_txt}; add consumers or slow the producers"
                    )
                out.append(
                    Finding(
                        subject=f"{name}:queue:{qname}",
                        severity="critical" if gone else "warning",
                        summary=summary,
                        evidence={
                            "queue": qname,
                            "layout": st.layout,
                            "depth": depth,
                            "growth_per_s": round(growth, 2),
                            "window_s": round(st.samples[-1][0] - st.samples[0][0], 1),
                            "time_to_drain_s": None if drain is None else round(drain, 1),
                            "drain_per_s": round(st.drain_per_s, 2) or None,
                            "blocked_clients": blocked,
                            "blocked_clients_peak": peak,
                            "connected_clients": connected,
                            "consumers_gone": gone,
                            "in_flight": q.get("in_flight"),
                            "oldest_age_s": q.get("oldest_age_s"),
                        },
                        sustain=not growing,
                    )
                )
        return out


# ---- redis-pressure --------------------------------------------------------------


@dataclass
class RedisPressureOptions(Options):
    memory_ratio: float = 0.90
    clients_ratio: float = 0.90


class RedisPressureDetector(Detector):
    """Evictions or rejected connections rising, memory >= 90% of maxmemory."""

    kind = "redis-pressure"
    Options = RedisPressureOptions
    raise_ticks = 1
    clear_ticks = 3
    opt: RedisPressureOptions

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, _t, d in view.readings("redis"):
            reasons, severity = [], "warning"
            ev = d.get("evicted_keys_delta") or 0
            rej = d.get("rejected_connections_delta") or 0
            used, cap = d.get("used_memory"), d.get("maxmemory")
            mem = used / cap if isinstance(used, int) and isinstance(cap, int) and cap > 0 else None
            clients, maxc = d.get("connected_clients"), d.get("maxclients")
            cl = (
                clients / maxc
                if isinstance(clients, int) and isinstance(maxc, int) and maxc
                else None
            )
            if ev > 0:
                reasons.append(f"{ev} keys evicted (an evicted lock is a lost lock)")
                severity = "critical"
            if rej > 0:
                reasons.append(f"{rej} connections rejected (maxclients)")
                severity = "critical"
            if mem is not None and mem >= o.memory_ratio:
                reasons.append(f"memory {mem * 100:.0f}% of maxmemory")
            if cl is not None and cl >= o.clients_ratio:
                reasons.append(f"{clients} of {maxc} clients")
            if not reasons:
                continue
            out.append(
                Finding(
                    subject=name,
                    severity=severity,
                    summary=f"Redis under pressure: {'; '.join(reasons)}; "
                    f"raise maxmemory/maxclients or cut the load",
                    evidence={
                        "reasons": reasons,
                        "evicted_keys_delta": ev,
                        "rejected_connections_delta": rej,
                        "used_memory": used,
                        "maxmemory": cap,
                        "memory_ratio": None if mem is None else round(mem, 3),
                        "maxmemory_policy": d.get("maxmemory_policy"),
                        "connected_clients": clients,
                        "maxclients": maxc,
                    },
                )
            )
        return out
