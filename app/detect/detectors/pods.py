"""Detector on the pods probe's readings (see app/probes/schema.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from app import fmt
from app.detect.base import Detector, Finding, Options, TickView
from app.tick import Tick


@dataclass
class PodOptions(Options):
    cpu_ratio: float = 0.90  # CPU usage / limit counted as "at its limit"
    memory_ratio: float = 0.90
    event_hold_ticks: int = 10  # how long a restart stays raised
    crash_reasons: tuple[str, ...] = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull")


@dataclass
class _Container:
    restarts: int
    last_seen: float
    events: list[tuple[int, int, int, str]] = field(default_factory=list)  # tick, from, to, reason


class PodDetector(Detector):
    """A restart, an OOM kill, CPU at its limit, memory >= 90% of its limit."""

    kind = "pod"
    Options = PodOptions
    raise_ticks = 1
    clear_ticks = 2
    opt: PodOptions

    def __init__(self, options: PodOptions | None = None) -> None:
        super().__init__(options)
        self._c: dict[str, _Container] = {}

    def check(self, tick: Tick, view: TickView) -> Iterable[Finding]:
        o = self.opt
        out = []
        for name, t, data in view.readings("pods"):
            for c in data.get("containers") or ():
                pod, cont = str(c.get("pod", "?")), str(c.get("container", "?"))
                ident = f"{name}:{pod}/{cont}"
                restarts = c.get("restarts")
                st = self._c.get(ident)
                if st is None:  # restarts before the run are history, not an anomaly
                    st = self._c[ident] = _Container(
                        restarts if isinstance(restarts, int) else 0, t
                    )
                st.last_seen = t
                reason = c.get("last_reason") or ""
                if isinstance(restarts, int) and restarts > st.restarts:
                    st.events.append((tick.index, st.restarts, restarts, reason))
                    st.restarts = restarts
                st.events = [e for e in st.events if tick.index - e[0] < o.event_hold_ticks][-5:]
                problems: list[str] = []
                severity = "warning"
                for _, a, b, why in st.events:
                    if why == "OOMKilled":
                        problems.append(
                            f"{pod}/{cont} was OOM-killed (restarts {a} -> {b}): raise its memory "
                            f"limit or find the leak"
                        )
                    else:
                        problems.append(
                            f"{pod}/{cont} restarted ({a} -> {b}, last reason {why or 'unknown'})"
                        )
                    severity = "critical"
                waiting = c.get("waiting_reason")
                if waiting in o.crash_reasons:
                    problems.append(f"{pod}/{cont} is in {waiting}")
                    severity = "critical"
                cpu, cpu_lim = c.get("cpu_cores"), c.get("cpu_limit_cores")
                cpu_r = cpu / cpu_lim if _num(cpu) and _num(cpu_lim) and cpu_lim > 0 else None
                if cpu_r is not None and cpu_r >= o.cpu_ratio:
                    problems.append(
                        f"{pod}/{cont} CPU {cpu:.2f} of its {cpu_lim:.2f}-core limit "
                        f"({cpu_r * 100:.0f}%): it is throttled"
                    )
                mem, mem_lim = c.get("memory_bytes"), c.get("memory_limit_bytes")
                mem_r = mem / mem_lim if _num(mem) and _num(mem_lim) and mem_lim > 0 else None
                if mem_r is not None and mem_r >= o.memory_ratio:
                    problems.append(
                        f"{pod}/{cont} memory {fmt.size(mem)} of its {fmt.size(mem_lim)} "
                        f"limit ({fmt.share(mem, mem_lim)}): an OOM kill is near"
                    )
                if not problems:
                    continue
                out.append(
                    Finding(
                        subject=ident,
                        severity=severity,
                        summary=problems[0],
                        evidence={
                            "pod": pod,
                            "container": cont,
                            "problems": problems,
                            "restarts": restarts,
                            "last_reason": reason or None,
                            "waiting_reason": waiting,
                            "cpu_cores": cpu,
                            "cpu_limit_cores": cpu_lim,
                            "memory_bytes": mem,
                            "memory_limit_bytes": mem_lim,
                            "source": data.get("source"),
                        },
                    )
                )
        for ident in [i for i, st in self._c.items() if tick.t - st.last_seen > 600]:
            del self._c[ident]
        return out


def _num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
