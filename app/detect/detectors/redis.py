"""Detectors on the redis probe's readings (see app/probes/schema.py).

Long by design: the Redis detectors (lock holders and takeovers, queue backlog,
stuck, pending and consumers gone, server pressure) share the per-key tracking
and hysteresis helpers kept here; each detector is a small class.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app import fmt
from app.detect.base import Detector, Finding, Options, TickView
from app.detect.stats import median, slope
from app.tick import Tick

_DIGITS = re.compile(r"[0-9a-fA-F]{8,}|\d+")
_S = TypeVar("_S")


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

    def __init__(self, options: RedisLockOptions | None = None) -> None:
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
        hits: dict[str, int] = {}
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


# ---- queues: readings of ANY probe with a `queues` list (Redis, Postgres) ---------


def queue_readings(view: TickView) -> Iterable[tuple[str, float, Mapping[str, Any]]]:
    """(reading name, poll time, data) of every fresh ok reading with a `queues`
    list: the Redis probe's and the Postgres queue probe's alike."""
    stale = getattr(view, "_stale", 0.0)
    for name, r in view.tick.readings.items():
        if not r.ok or not isinstance(r.data.get("queues"), list):
            continue
        if stale > 0 and view.tick.t - r.t > stale:
            continue
        yield name, r.t, r.data


@dataclass
class _QSample:
    t: float
    depth: int
    consumed: float | None  # consumed_per_s measured by the probe
    oldest: float | None
    in_flight: int | None
    count: int | None  # consumers alive (evidence about this queue)


@dataclass
class _QHist:
    samples: deque[_QSample] = field(default_factory=lambda: deque(maxlen=600))
    last_t: float = -1.0
    peak: int = 0  # most consumers seen (about this queue)
    peak_t: float = 0.0
    peak_clients: int | None = None  # clients on the queue's database at that peak
    clients: int | None = None  # ... and now
    consumed_seen_t: float | None = None  # last time anything was consumed

    def add(self, t: float, q: Mapping[str, Any], keep_s: float) -> bool:
        """Append a fresh sample; False when this reading was seen already."""
        if t <= self.last_t:
            return False
        self.last_t = t
        cons = q.get("consumers")
        count = cons.get("count") if isinstance(cons, Mapping) else None
        count = count if isinstance(count, int) and not isinstance(count, bool) else None
        consumed = q.get("consumed_per_s")
        consumed = float(consumed) if isinstance(consumed, int | float) else None
        oldest = q.get("oldest_age_s")
        inf = q.get("in_flight")
        self.samples.append(
            _QSample(
                t,
                int(q.get("depth") or 0),
                consumed,
                float(oldest) if isinstance(oldest, int | float) else None,
                inf if isinstance(inf, int) else None,
                count,
            )
        )
        dbc = cons.get("db_clients") if isinstance(cons, Mapping) else None
        self.clients = dbc if isinstance(dbc, int) else None
        if count is not None and count >= self.peak:
            self.peak, self.peak_t, self.peak_clients = count, t, self.clients
        if consumed:
            self.consumed_seen_t = t
        while self.samples and t - self.samples[0].t > keep_s:
            self.samples.popleft()
        if self.peak and t - self.peak_t > keep_s * 4:  # a peak long ago is forgotten
            self.peak = max((s.count or 0) for s in self.samples)
            self.peak_t = t
        return True

    def gone(self, cons: Any, n: int = 2) -> bool:
        """Evidence about this queue says its consumers are gone. For blocked-pop
        evidence a count of 0 is not enough (a busy consumer is not blocked): the
        database must also have lost clients since the peak, or the last `n`
        polls must have measured no consumption."""
        if not isinstance(cons, Mapping) or cons.get("count") != 0:
            return False
        if cons.get("kind") != "blocked":
            return True
        if self.peak <= 0:
            return False
        if (
            self.clients is not None
            and self.peak_clients is not None
            and self.clients <= self.peak_clients - max(1, (self.peak + 1) // 2)
        ):
            return True
        tail = list(self.samples)[-n:]
        return len(tail) >= n and all(s.consumed == 0 for s in tail)

    def recent(self, t: float, window_s: float) -> list[_QSample]:
        return [s for s in self.samples if t - s.t <= window_s + 1e-6]


def _queues_of(data: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for q in data.get("queues") or ():
        if not isinstance(q, Mapping):
            continue
        qname = str(q.get("name", ""))
        if qname and isinstance(q.get("depth"), int):
            yield qname, q


def _each_queue(view: TickView) -> Iterable[tuple[str, float, str, Mapping[str, Any]]]:
    """(reading name, poll time, queue name, queue) of every queue in the fresh
    queue readings."""
    for name, t, data in queue_readings(view):
        for qname, q in _queues_of(data):
            yield name, t, qname, q


def _follow(states: dict[Any, _S], key: Any, cap: int, new: Callable[[], _S]) -> _S | None:
    """The state kept for `key`, made on first sight; None (not followed) once
    `cap` keys are: the memory stays bounded whatever the servers hold."""
    st = states.get(key)
    if st is None and len(states) < cap:
        st = states[key] = new()
    return st


class _PerQueueDetector(Detector):
    """Judges each queue of every queue reading on its own bounded history (a
    `_QHist` per queue, at most MAX_QUEUES queues); a subclass gives how long
    the history reaches back (`_keep_s`) and its rule (`_judge`)."""

    MAX_QUEUES = 500

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._q: dict[tuple[str, str], _QHist] = {}

    def _keep_s(self) -> float:
        raise NotImplementedError

    def _judge(
        self, name: str, qname: str, q: Mapping[str, Any], h: _QHist, t: float
    ) -> Finding | None:
        raise NotImplementedError

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        out = []
        keep = self._keep_s()
        for name, t, qname, q in _each_queue(view):
            h = _follow(self._q, (name, qname), self.MAX_QUEUES, _QHist)
            if h is None:
                continue
            h.add(t, q, keep)
            found = self._judge(name, qname, q, h, t)
            if found is not None:
                out.append(found)
        return out


def _consumers_txt(cons: Any) -> str:
    if not isinstance(cons, Mapping):
        return "consumers unknown"
    kind, count, ev = cons.get("kind"), cons.get("count"), cons.get("evidence")
    if count is None:
        return f"consumers: {kind} ({ev} evidence)"
    via = f" via {cons['via']}" if cons.get("via") else ""
    return f"{count} consumer(s) {kind}{via} ({ev} evidence)"


@dataclass
class QueueBacklogOptions(Options):
    window_s: float = 30.0  # least-squares slope of depth over this window
    floor: int = 100  # depth below this is never a backlog
    min_growth_per_s: float = 1.0  # slope above this (items per second)
    min_samples: int = 3
    max_drain_s: float = 60.0  # a raised backlog stays while it would take longer to drain


@dataclass
class _Queue:
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=600))
    drain_per_s: float = 0.0  # the fastest drain seen (items per second)
    layout: str = ""
    growth: float = 0.0  # least-squares slope over the window
    short: float = 0.0  # slope of the last few samples
    hist: _QHist = field(default_factory=_QHist)


class QueueBacklogDetector(Detector):
    """Depth growing (arrivals above service); stays raised while the backlog is
    still high and drains too slowly; says when the consumers are gone."""

    kind = "queue-backlog"
    Options = QueueBacklogOptions
    raise_ticks = 2
    clear_ticks = 3
    opt: QueueBacklogOptions
    MAX_QUEUES = 500

    def __init__(self, options: QueueBacklogOptions | None = None) -> None:
        super().__init__(options)
        self._q: dict[tuple[str, str], _Queue] = {}
        self._blocked: dict[str, deque[tuple[float, int, int | None]]] = {}
        self._last_t: dict[str, float] = {}

    def _legacy_gone(self, name: str, t: float, fresh: bool, data: Mapping[str, Any]) -> bool:
        """Recordings without per-queue consumer evidence: server-wide blocked
        clients dropping to 0 and disconnecting (indirect, so a warning only)."""
        o = self.opt
        blocked = data.get("blocked_clients")
        connected = data.get("connected_clients")
        bl = self._blocked.setdefault(name, deque(maxlen=600))
        if fresh and isinstance(blocked, int):
            bl.append((t, blocked, connected if isinstance(connected, int) else None))
        while bl and t - bl[0][0] > o.window_s:
            bl.popleft()
        _, peak, peak_conn = max(bl, key=lambda x: (x[1], x[0]), default=(0, 0, None))
        return (
            isinstance(blocked, int)
            and blocked == 0
            and peak > 0
            and (
                not isinstance(connected, int)
                or peak_conn is None
                or connected <= peak_conn - max(1, (peak + 1) // 2)
            )
        )

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, t, data in queue_readings(view):
            fresh = t > self._last_t.get(name, -1.0)
            self._last_t[name] = t
            legacy = self._legacy_gone(name, t, fresh, data)
            for qname, q in _queues_of(data):
                depth = int(q["depth"])
                st = _follow(self._q, (name, qname), self.MAX_QUEUES, _Queue)
                if st is None:
                    continue
                st.layout = str(q.get("layout", ""))
                st.hist.add(t, q, o.window_s)
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
                cons = q.get("consumers")
                if isinstance(cons, Mapping) and isinstance(cons.get("count"), int):
                    gone = st.hist.gone(cons)
                    direct = cons.get("evidence") == "direct"
                else:
                    gone, direct = legacy, False
                # measured consumption over the window (None when the probe cannot tell)
                rates = [s.consumed for s in st.hist.samples if s.consumed is not None]
                consumed = sum(rates) / len(rates) if rates else None
                service = consumed if consumed else (st.drain_per_s or None)
                drain = depth / service if service else None
                drain_txt = (
                    f"~{drain:.0f}s to drain at {service:.1f}/s consumed if arrivals stopped"
                    if drain is not None
                    else "nothing consumed: it will not drain"
                    if consumed == 0
                    else "time to drain unknown (never seen draining)"
                )
                rising = depth >= o.floor / 2 and growth > 0 and short > 0
                growing = rising and depth >= o.floor and growth >= o.min_growth_per_s
                # still high and draining too slowly (net drain from the depth's slope)
                net_drain = -growth
                slow = depth >= o.floor and (
                    net_drain <= 0 or depth / net_drain > o.max_drain_s or consumed == 0
                )
                if not rising and not slow:
                    continue
                now_rate = max(growth, short)
                if gone:
                    summary = (
                        f"queue {qname}: consumers gone ({_consumers_txt(cons)}; peak "
                        f"{st.hist.peak if cons else 'n/a'}) with {depth} waiting; restart the workers"
                    )
                elif rising:
                    summary = (
                        f"queue {qname} backlog grows +{now_rate:.1f}/s, depth {depth}: arrivals "
                        f"exceed service; {drain_txt}; add consumers or slow the producers"
                    )
                else:
                    summary = (
                        f"queue {qname} backlog of {depth} drains too slowly "
                        f"({net_drain:+.1f}/s net); {drain_txt}"
                    )
                out.append(
                    Finding(
                        subject=f"{name}:queue:{qname}",
                        severity="critical" if gone and direct else "warning",
                        summary=summary,
                        evidence={
                            "queue": qname,
                            "layout": st.layout,
                            "source": q.get("source", "redis"),
                            "depth": depth,
                            # the recent slope when it is steeper: a window that began
                            # before the surge understates it
                            "growth_per_s": round(now_rate if rising else growth, 2),
                            "window_s": round(st.samples[-1][0] - st.samples[0][0], 1),
                            "time_to_drain_s": None if drain is None else round(drain, 1),
                            "drain_per_s": round(st.drain_per_s, 2) or None,
                            "consumed_per_s": None if consumed is None else round(consumed, 2),
                            "blocked_clients": data.get("blocked_clients"),
                            "consumers": dict(cons) if isinstance(cons, Mapping) else None,
                            "consumers_gone": gone,
                            "in_flight": q.get("in_flight"),
                            "oldest_age_s": q.get("oldest_age_s"),
                        },
                        sustain=not growing,
                    )
                )
        return out


# ---- queue-stuck -----------------------------------------------------------------


@dataclass
class QueueStuckOptions(Options):
    floor: int = 10  # ready items at least this many ...
    window_s: float = 5.0  # ... and nothing consumed for this long
    min_samples: int = 4
    age_min_s: float = 10.0  # or the oldest ready item this old and aging with the clock
    busy_factor: float = 2.0  # consumers busy (in flight > 0): wait this many windows


class QueueStuckDetector(_PerQueueDetector):
    """A queue with ready items and no consumption, or whose oldest ready item ages
    with the wall clock; also a queue already stuck when the watch starts."""

    kind = "queue-stuck"
    Options = QueueStuckOptions
    raise_ticks = 1
    clear_ticks = 3
    opt: QueueStuckOptions

    def _keep_s(self) -> float:
        return self.opt.window_s * max(1.0, self.opt.busy_factor) + 1.0

    def _judge(
        self, name: str, qname: str, q: Mapping[str, Any], h: _QHist, t: float
    ) -> Finding | None:
        o = self.opt
        busy = any((s.in_flight or 0) > 0 for s in h.recent(t, o.window_s))
        window = o.window_s * (o.busy_factor if busy else 1.0)
        rec = h.recent(t, window)
        if len(rec) < o.min_samples or rec[-1].t - rec[0].t < window * 0.8 - 0.3:
            return None
        last = rec[-1]
        idle = all(s.consumed == 0 for s in rec[1:]) and all(s.depth >= o.floor for s in rec)
        ages = [s.oldest for s in rec if s.oldest is not None]
        aging = (
            len(ages) == len(rec)
            and last.depth >= 1
            and ages[-1] >= o.age_min_s
            and ages[-1] - ages[0] >= 0.8 * (rec[-1].t - rec[0].t)
        )
        if not (idle or aging):
            return None
        span = rec[-1].t - rec[0].t
        why = (
            f"nothing consumed for {span:.0f}s"
            if idle
            else f"its oldest ready item aged {ages[-1] - ages[0]:.0f}s in {span:.0f}s"
        )
        old = f", oldest {fmt.age(last.oldest)}" if last.oldest is not None else ""
        busy_txt = f", {last.in_flight} in flight" if last.in_flight else ""
        return Finding(
            subject=f"{name}:queue:{qname}",
            severity="critical",
            summary=(
                f"queue {qname} stuck: {last.depth} ready{old}{busy_txt}, {why}; "
                f"{_consumers_txt(q.get('consumers'))}; restart or scale the workers"
            ),
            evidence={
                "queue": qname,
                "layout": q.get("layout"),
                "source": q.get("source", "redis"),
                "depth": last.depth,
                "oldest_age_s": last.oldest,
                "in_flight": last.in_flight,
                "consumed_per_s": last.consumed,
                "no_consumption_s": round(span, 1) if idle else None,
                "aging": aging,
                "consumers": dict(q["consumers"])
                if isinstance(q.get("consumers"), Mapping)
                else None,
            },
        )


# ---- consumers-gone --------------------------------------------------------------


@dataclass
class ConsumersGoneOptions(Options):
    window_s: float = 5.0  # polling consumers: nothing consumed this long while items wait
    min_samples: int = 2


class ConsumersGoneDetector(_PerQueueDetector):
    """The consumers of THIS queue are gone while items wait: stream consumers
    idle, no worker registered or heartbeating, no client blocked on the queue's
    database (indirect: a warning), polling consumers that stopped consuming."""

    kind = "consumers-gone"
    Options = ConsumersGoneOptions
    raise_ticks = 1
    clear_ticks = 3
    opt: ConsumersGoneOptions

    def _keep_s(self) -> float:
        return 120.0

    def _judge(
        self, name: str, qname: str, q: Mapping[str, Any], h: _QHist, t: float
    ) -> Finding | None:
        o = self.opt
        cons = q.get("consumers")
        if not isinstance(cons, Mapping):
            return None
        rec = h.recent(t, o.window_s)
        last = rec[-1]
        if last.depth <= 0:
            return None
        tail = rec[-o.min_samples :]
        not_consuming = len(tail) >= o.min_samples and all(not s.consumed for s in tail)
        count, direct = cons.get("count"), cons.get("evidence") == "direct"
        severity = None
        # a busy consumer is not blocked: zero blocked clients means gone only
        # after some were seen blocked and the database lost clients or nothing
        # is consumed (_QHist.gone)
        if isinstance(count, int) and not_consuming and h.gone(cons):
            if direct:
                severity = "critical"
                why = f"no consumer left ({_consumers_txt(cons)}; {h.peak} seen before)"
            elif h.peak > 0:
                severity = "warning"
                why = (
                    f"clients blocked in a pop on its database went {h.peak} -> 0 "
                    f"(indirect: the server does not say which key they waited on)"
                )
        if severity is None and cons.get("kind") == "polling":
            # heartbeats lag (dramatiq's count stays up to 10 s after a kill):
            # consumption that stops while items wait says it sooner
            span = rec[-1].t - rec[0].t
            if (
                h.consumed_seen_t is not None
                and not last.in_flight  # busy on long jobs is not gone
                and len(rec) >= o.min_samples
                and span >= o.window_s * 0.8 - 0.3
                and all(s.consumed == 0 for s in rec[1:])
            ):
                severity = "warning"
                why = (
                    f"polling consumers stopped: nothing consumed for {span:.0f}s "
                    f"(they consumed {t - h.consumed_seen_t:.0f}s ago)"
                )
        if severity is None:
            return None
        return Finding(
            subject=f"{name}:queue:{qname}",
            severity=severity,
            summary=f"queue {qname}: consumers gone, {last.depth} waiting: {why}; "
            f"restart the workers",
            evidence={
                "queue": qname,
                "layout": q.get("layout"),
                "source": q.get("source", "redis"),
                "depth": last.depth,
                "consumers": dict(cons),
                "peak_consumers": h.peak,
                "consumed_per_s": last.consumed,
                "oldest_age_s": last.oldest,
            },
        )


# ---- queue-pending: stream groups that read but do not acknowledge -----------------


@dataclass
class QueuePendingOptions(Options):
    floor: int = 100  # pending entries at least this many ...
    min_growth_per_s: float = 1.0  # ... growing this fast over the window
    window_s: float = 10.0
    min_samples: int = 4
    idle_s: float = 30.0  # pending owned by a consumer idle this long


class QueuePendingDetector(Detector):
    """Stream consumer groups whose pending entries grow (read, never acknowledged)
    or are owned by consumers idle past a threshold; names group and consumers."""

    kind = "queue-pending"
    Options = QueuePendingOptions
    raise_ticks = 1
    clear_ticks = 3
    opt: QueuePendingOptions
    MAX_GROUPS = 500

    def __init__(self, options: QueuePendingOptions | None = None) -> None:
        super().__init__(options)
        self._g: dict[tuple[str, str, str], deque[tuple[float, int]]] = {}

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, t, qname, q in _each_queue(view):
            for g in q.get("groups") or ():
                if not isinstance(g, Mapping):
                    continue
                gname, pending = str(g.get("name", "")), g.get("pending")
                if not isinstance(pending, int):
                    continue
                k = (name, qname, gname)
                d = _follow(self._g, k, self.MAX_GROUPS, lambda: deque(maxlen=600))
                if d is None:
                    continue
                if not d or t > d[-1][0]:
                    d.append((t, pending))
                while d and t - d[0][0] > o.window_s:
                    d.popleft()
                problems = []
                growth = slope(list(d)) if len(d) >= o.min_samples else 0.0
                if pending >= o.floor and growth >= o.min_growth_per_s and d[-1][1] > d[-2][1]:
                    problems.append(
                        f"pending entries grow +{growth:.0f}/s to {pending}: consumers read "
                        f"but do not acknowledge (XACK)"
                    )
                idle_owners = [
                    c
                    for c in g.get("consumer_list") or ()
                    if isinstance(c, Mapping)
                    and (c.get("pending") or 0) > 0
                    and (c.get("idle_ms") or 0) >= o.idle_s * 1000
                ]
                if idle_owners:
                    names = ", ".join(
                        f"{c.get('name')} ({c.get('pending')} pending, idle "
                        f"{(c.get('idle_ms') or 0) / 1000:.0f}s)"
                        for c in idle_owners[:5]
                    )
                    problems.append(
                        f"{sum(c.get('pending') or 0 for c in idle_owners)} pending owned by "
                        f"consumers idle > {o.idle_s:.0f}s: {names}; claim them (XAUTOCLAIM)"
                    )
                if not problems:
                    continue
                out.append(
                    Finding(
                        subject=f"{name}:queue:{qname}:group:{gname}",
                        severity="warning",
                        summary=f"stream {qname} group {gname}: {'; '.join(problems)}",
                        evidence={
                            "queue": qname,
                            "group": gname,
                            "pending": pending,
                            "growth_per_s": round(growth, 2),
                            "idle_consumers": [dict(c) for c in idle_owners[:10]],
                            "problems": problems,
                        },
                    )
                )
        return out


# ---- lock-takeover ---------------------------------------------------------------


@dataclass
class LockTakeoverOptions(Options):
    hold_ticks: int = 10  # a takeover stays raised this many ticks after it was seen


class LockTakeoverDetector(Detector):
    """A lock whose holder changed right after its PTTL ran out (seen by the
    probe's fast watch of expiring locks, or proven by a keyspace event): the old
    holder's lease ended while it may still have been working."""

    kind = "lock-takeover"
    Options = LockTakeoverOptions
    raise_ticks = 1
    clear_ticks = 1
    opt: LockTakeoverOptions
    MAX_EVENTS = 256

    def __init__(self, options: LockTakeoverOptions | None = None) -> None:
        super().__init__(options)
        self._events: dict[tuple[str, str], tuple[Mapping[str, Any], int]] = {}
        self._seen: deque[tuple[str, str, float]] = deque(maxlen=1024)

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        for name, _t, data in view.readings("redis"):
            for tk in data.get("takeovers") or ():
                if not isinstance(tk, Mapping) or not tk.get("key"):
                    continue
                ident = (name, str(tk["key"]), float(tk.get("at") or 0.0))
                if ident in self._seen:
                    continue
                self._seen.append(ident)
                self._events[(name, str(tk["key"]))] = (tk, tick.index)
        for k in [k for k, (_, i) in self._events.items() if tick.index - i >= o.hold_ticks]:
            del self._events[k]
        while len(self._events) > self.MAX_EVENTS:
            del self._events[next(iter(self._events))]
        out = []
        for (name, key), (tk, _) in self._events.items():
            ttl = tk.get("ttl_ms")
            proof = (
                "the server reported the expiry"
                if tk.get("proof") == "keyspace-expired"
                else f"its last PTTL was {tk.get('last_pttl_ms')} ms"
            )
            out.append(
                Finding(
                    subject=f"{name}:lock:{key}",
                    severity="critical",
                    summary=(
                        f"lock {key} expired under {tk.get('old_holder')} and was taken by "
                        f"{tk.get('new_holder')} {max(0.0, float(tk.get('gap_ms') or 0)):.0f} ms "
                        f"later ({proof}; new TTL {ttl} ms): two holders at once if the old one "
                        f"still worked; lengthen the TTL, renew it, or fence the writes"
                    ),
                    evidence={
                        "key": key,
                        "old_holder": tk.get("old_holder"),
                        "new_holder": tk.get("new_holder"),
                        "ttl_ms": ttl,
                        "last_pttl_ms": tk.get("last_pttl_ms"),
                        "gap_ms": tk.get("gap_ms"),
                        "proof": tk.get("proof"),
                        "at": tk.get("at"),
                    },
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
