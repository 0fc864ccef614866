"""The Scenario API: the contract user scenarios are written against.

A scenario is one kind of operation repeated by N concurrent workers::

    from app.scenario import Scenario, Context

    class Checkout(Scenario):
        name = "checkout"
        needs = ("postgres",)

        async def setup(self, ctx: Context) -> None: ...
        async def run(self, ctx: Context) -> None: ...        # raise = failed
        async def verify(self, ctx: Context) -> list[str]: ... # [] if none
        async def teardown(self, ctx: Context) -> None: ...

One instance serves all workers of a run, so shared bookkeeping (an operation
log for `verify`) lives on `self`. The engine times `run`; a scenario never
times itself. Everything a scenario creates lives under `ctx.prefix` (a
Postgres schema of that name, which the engine creates before `setup` and
drops after `teardown`, and Redis keys starting with `ctx.prefix + ":"`, which
the engine deletes after `teardown`), so cleanup holds even when `teardown`
fails or never runs.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import random
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    import aiohttp
    import asyncpg
    import redis.asyncio as aioredis

TARGET_KINDS = ("postgres", "redis", "http")
BUILTIN_MODULES = ("scenarios.postgres", "scenarios.redis", "scenarios.http")

T = TypeVar("T", int, float, str, bool)


class ScenarioError(ValueError):
    """A scenario could not be found, loaded or configured; the message is
    one line that says what to fix."""


@dataclass
class Context:
    """What a scenario's methods get. One per worker (index `worker` >= 0);
    `setup`, `verify` and `teardown` get one with `worker == -1`."""

    worker: int
    params: Mapping[str, str]
    rng: random.Random
    prefix: str
    scenario: str = ""
    pg: asyncpg.Pool | None = None
    conn: asyncpg.Connection | None = None
    redis: aioredis.Redis | None = None
    http: aiohttp.ClientSession | None = None
    http_url: str | None = None
    concurrency: int = 1  # the scenario's current target worker count
    state: dict[str, Any] = field(default_factory=dict)  # per-worker scratch space
    # set by the engine: where count() adds up (the scenario's current tick)
    _counter: Callable[[str, int], None] | None = field(default=None, repr=False, compare=False)

    def count(self, name: str, n: int = 1) -> None:
        """Count an event of your own in this tick ("redelivered", "rejected",
        "sold out"). Counters are shown per second beside the scenario in the
        console and the headless line, recorded with the tick, and totalled per
        step in the report. Up to 32 names per scenario and tick; more add up
        under "other". Outside the load (setup, teardown) it counts nothing."""
        if self._counter is not None:
            self._counter(name, n)

    def param(self, name: str, default: T) -> T:
        """`-p name=value` converted to the type of `default`; a value that does
        not convert is a ScenarioError naming the parameter."""
        raw = self.params.get(name)
        if raw is None:
            return default
        return coerce_param(self.scenario, name, raw, default)

    def key(self, *parts: object) -> str:
        """A Redis key under this scenario's prefix: ctx.key("lock", 3) ->
        "loadtop_ab12_redis_lock:lock:3"."""
        return ":".join([self.prefix, *(str(p) for p in parts)])


def coerce_param(scenario: str, name: str, raw: str, default: T) -> T:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True  # type: ignore[return-value]
            if low in ("0", "false", "no", "off"):
                return False  # type: ignore[return-value]
            raise ValueError(raw)
        return type(default)(raw)  # type: ignore[return-value]
    except ValueError:
        kind = type(default).__name__
        raise ScenarioError(
            f"scenario {scenario!r}: parameter {name}={raw!r} is not a valid {kind}"
            f" (for example -p {name}={default})"
        ) from None


@dataclass(frozen=True)
class Param:
    """One declared `-p` parameter of a scenario: its type (int, float, str or
    bool), its default, one line of help, and what values it takes: `choices`
    (for str), an inclusive `min` / `max` (for numbers), or `check`, a function
    that returns what is wrong with a raw value (None when it is fine).
    `loadtop scenarios` prints from it and `loadtop run` checks every `-p`
    against it before anything starts."""

    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    check: Callable[[str], str | None] | None = None

    def describe(self) -> str:
        """The help line, with the type, range, choices and default."""
        if self.choices:
            what = " | ".join(self.choices)
        elif self.type is bool:
            what = "true | false"
        else:
            what = self.type.__name__
            if self.min is not None and self.max is not None:
                what += f" {_num(self.min)}..{_num(self.max)}"
            elif self.min is not None:
                what += f" >= {_num(self.min)}"
            elif self.max is not None:
                what += f" <= {_num(self.max)}"
        default = "" if self.default in (None, "") else f", default {self.default}"
        return f"{self.help} [{what}{default}]"

    def validate(self, scenario: str, name: str, raw: str) -> None:
        """Raise ScenarioError (one line, says what to give) for a bad value."""
        example = self.choices[0] if self.choices else self.default
        value: Any = raw
        if self.type in (int, float, bool):
            value = coerce_param(scenario, name, raw, self.type(self.default or 0))
            if self.type is float and value != value:  # NaN
                raise ScenarioError(f"scenario {scenario!r}: parameter {name}={raw!r} is not a"
                                    f" number (for example -p {name}={example})")  # fmt: skip
        if self.choices and raw.strip() not in self.choices:
            near = difflib.get_close_matches(raw.strip(), self.choices, 1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ScenarioError(f"scenario {scenario!r}: -p {name}={raw!r} is not allowed{hint}:"
                                f" use {' or '.join(self.choices)}")  # fmt: skip
        if self.type in (int, float):
            lo, hi = self.min, self.max
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                span = (f"between {_num(lo)} and {_num(hi)}" if lo is not None and hi is not None
                        else f"at least {_num(lo)}" if lo is not None else f"at most {_num(hi)}")  # fmt: skip
                raise ScenarioError(f"scenario {scenario!r}: -p {name}={raw} is out of range:"
                                    f" give a value {span}")  # fmt: skip
        if self.check is not None and (problem := self.check(raw)):
            raise ScenarioError(f"scenario {scenario!r}: -p {name}: {problem}")


def _num(v: float | None) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def check_params(classes: list[type[Scenario]], params: Mapping[str, str]) -> None:
    """Every `-p` against the mix's declarations, before anything starts: a key
    no scenario of the mix declares is an error with a did-you-mean (unless a
    scenario in the mix declares nothing: its parameters are free-form), and a
    value is checked by every scenario that declares its key."""
    free = any(c.parameters is None for c in classes)
    known = sorted({k for c in classes for k in (c.parameters or {})})
    names = ", ".join(c.name for c in classes) or "no scenario"
    for key, raw in params.items():
        owners = [c for c in classes if c.parameters and key in c.parameters]
        if not owners:
            if free:
                continue
            near = difflib.get_close_matches(key, known, 1, 0.6)
            if near:
                hint = f"did you mean -p {near[0]}=...?"
            elif known:
                hint = f"use one of {', '.join(known)}"
            else:
                hint = "drop it (it takes none)"
            raise ScenarioError(f"-p {key}: not a parameter of {names}: {hint}")
        for c in owners:
            c.parameters[key].validate(c.name, key, str(raw))  # type: ignore[index]


class Scenario:
    """Base class. Subclasses set `name`, `needs` and implement `run`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line, shown by `loadtop scenarios`
    needs: ClassVar[tuple[str, ...]] = ()  # any of "postgres", "redis", "http"
    writes: ClassVar[bool] = True  # False: safe to run with --readonly
    # the -p parameters this scenario takes, declared: every -p is checked
    # against them before a run starts, and `loadtop scenarios` prints them.
    # None (the default) declares nothing: -p is then free-form for it.
    # (`self.params` is what was given: name -> raw value)
    parameters: ClassVar[Mapping[str, Param] | None] = None
    # name -> one-line help; derived from `params` when that is declared
    params_help: ClassVar[Mapping[str, str]] = {}
    # True when workers may run in other processes (--processes N): run() needs
    # nothing from setup() but what is on the target or built in prepare(), and
    # verify() reads the target, not this object's counters
    processes_ok: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("parameters")
        if isinstance(declared, Mapping) and "params_help" not in cls.__dict__:
            cls.params_help = {k: p.describe() for k, p in declared.items()}

    def __init__(self, params: Mapping[str, str] | None = None) -> None:
        self.params: dict[str, str] = dict(params or {})

    async def prepare(self, ctx: Context) -> None:
        """Once in every process that runs this scenario's workers, before setup
        (in the main process) and before any worker: build in-memory state here
        (parsed parameters, key lists, clients). Optional."""

    async def setup(self, ctx: Context) -> None:
        """Once, before load."""

    async def run(self, ctx: Context) -> None:
        """One operation. Raise to count it as failed."""
        raise NotImplementedError

    async def verify(self, ctx: Context) -> list[str]:
        """Invariant violations, [] if none. Runs every few seconds while load
        runs and once at the end."""
        return []

    async def teardown(self, ctx: Context) -> None:
        """Once, at the end (also after a failed or interrupted run)."""

    async def worker_stop(self, ctx: Context) -> None:
        """A worker is leaving (step down or end of run). Optional."""


# ---- loading ------------------------------------------------------------------

_SLUG = re.compile(r"[^a-z0-9]+")


def slug(name: str) -> str:
    return _SLUG.sub("_", name.lower()).strip("_")[:24] or "s"


def _check_class(cls: type[Scenario], where: str) -> type[Scenario]:
    if not cls.name:
        raise ScenarioError(f"{where}: Scenario subclass {cls.__name__} has no `name`")
    bad = [n for n in cls.needs if n not in TARGET_KINDS]
    if bad:
        raise ScenarioError(
            f"{where}: scenario {cls.name!r} needs unknown target {bad[0]!r}"
            f" (use any of {', '.join(TARGET_KINDS)})"
        )
    if cls.run is Scenario.run:
        raise ScenarioError(f"{where}: scenario {cls.name!r} does not implement run()")
    return cls


def scenarios_in_module(module: Any) -> list[type[Scenario]]:
    found = []
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if (
            issubclass(obj, Scenario)
            and obj is not Scenario
            and obj.__module__ == module.__name__
            and not inspect.isabstract(obj)
            and obj.name
        ):
            found.append(obj)
    found.sort(key=lambda c: c.name)
    return found


def builtin_scenarios() -> dict[str, type[Scenario]]:
    out: dict[str, type[Scenario]] = {}
    for modname in BUILTIN_MODULES:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        for cls in scenarios_in_module(module):
            out[cls.name] = cls
    return out


def _load_file(path: Path) -> Any:
    if not path.exists():
        raise ScenarioError(f"scenario file {path} does not exist")
    if path.suffix != ".py":
        raise ScenarioError(f"scenario file {path} is not a .py file: give path.py[:ClassName]")
    modname = f"loadtop_user_{slug(path.stem)}_{abs(hash(str(path.resolve()))) % 10**8}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ScenarioError(f"scenario file {path} cannot be imported: give a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except ScenarioError:
        raise
    except SyntaxError as e:
        raise ScenarioError(
            f"scenario file {path}: syntax error at line {e.lineno}: {e.msg}"
        ) from None
    except Exception as e:
        raise ScenarioError(
            f"scenario file {path} failed to import: {type(e).__name__}: {e}"
            " (fix the file; `python {path}` shows the traceback)".replace("{path}", str(path))
        ) from None
    return module


def check_processes(classes: list[type[Scenario]]) -> None:
    """--processes N: every scenario must say it can run in several processes,
    and be a class the worker processes can import again."""
    for cls in classes:
        if not cls.processes_ok:
            able = sorted(n for n, c in builtin_scenarios().items() if c.processes_ok)
            raise ScenarioError(
                f"scenario {cls.name!r} cannot run with --processes: it keeps state in one"
                f" process; drop --processes (built-ins that can: {', '.join(able)})"
            )
        class_ref(cls)


def class_ref(cls: type[Scenario]) -> tuple[str, str | None, str]:
    """How another process finds `cls` again: (module, file, qualname)."""
    if "<locals>" in cls.__qualname__:
        raise ScenarioError(
            f"scenario {cls.name!r} is defined inside a function: --processes needs a"
            " module-level class"
        )
    return cls.__module__, inspect.getsourcefile(cls), cls.__qualname__


def resolve_class_ref(ref: tuple[str, str | None, str]) -> type[Scenario]:
    module_name, file, qualname = ref
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        if file is None:
            raise
        obj = _load_file(Path(file))
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_scenarios(spec: str) -> list[type[Scenario]]:
    """`stock-reservation` (built-in), `path.py` (every Scenario in it) or
    `path.py:ClassName`."""
    spec = spec.strip()
    if not spec:
        raise ScenarioError("empty --scenario: give a built-in name or path.py[:Class]")
    file_part, _, cls_name = spec.partition(":")
    if file_part.endswith(".py") or "/" in file_part:
        module = _load_file(Path(file_part))
        where = file_part
        if cls_name:
            obj = getattr(module, cls_name, None)
            if obj is None:
                raise ScenarioError(f"{where} has no class {cls_name}")
            if not (inspect.isclass(obj) and issubclass(obj, Scenario)):
                raise ScenarioError(
                    f"{where}:{cls_name} is not a Scenario subclass"
                    " (subclass app.scenario.Scenario)"
                )
            return [_check_class(obj, where)]
        found = scenarios_in_module(module)
        if not found:
            raise ScenarioError(
                f"{where} defines no Scenario subclass with a name"
                " (subclass app.scenario.Scenario and set `name`)"
            )
        return [_check_class(c, where) for c in found]
    builtins = builtin_scenarios()
    if spec in builtins:
        return [builtins[spec]]
    near = [n for n in builtins if n.startswith(spec[:3])]
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise ScenarioError(
        f"unknown scenario {spec!r}{hint}: run `loadtop scenarios` for the built-ins,"
        " or give path.py[:Class]"
    )


def parse_mix(specs: list[str]) -> list[tuple[type[Scenario], float]]:
    """`--scenario a=3 --scenario b=1` -> [(A, 3.0), (B, 1.0)]."""
    out: list[tuple[type[Scenario], float]] = []
    for raw in specs:
        name, sep, weight_s = raw.rpartition("=")
        if not sep:
            name, weight = raw, 1.0
        else:
            try:
                weight = float(weight_s)
            except ValueError:
                raise ScenarioError(
                    f"--scenario {raw!r}: weight {weight_s!r} is not a number (use name=3)"
                ) from None
            if weight <= 0:
                raise ScenarioError(f"--scenario {raw!r}: weight must be positive")
        for cls in load_scenarios(name):
            out.append((cls, weight))
    names = [c.name for c, _ in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ScenarioError(f"scenario {sorted(dup)[0]!r} given twice: give each once")
    return out
