"""Bad input over every subcommand and every loadtop.toml key: exit code 2,
exactly one line on stderr that names the problem, and no traceback. Nothing
here reaches a server: every case is refused before a connection, so the
cases run in-process through `app.cli.main` (a handful run the real
`loadtop` entry point in a subprocess, to prove the same holds there).

The -p cases are derived from each built-in scenario's declared parameters
(`Scenario.parameters`): every declared number gets a value that is not one
and values outside its range, every choice a value that is not allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from app.scenario import builtin_scenarios

RUN = ["run", "--headless", "-s", "pg-select"]
RUN_R = ["run", "--headless", "-s", "redis-getset"]
WATCH = ["watch", "--headless", "--pg", "postgresql://u@127.0.0.1:1/db"]
HEADER = {"type": "header", "version": 1, "run_id": "x", "started": 1.0, "scenarios": []}

# (id, argv, loadtop.toml text or None, LOADTOP_* variables, what the line must say)
Case = tuple[str, list[str], str | None, dict[str, str], str]
CASES: list[Case] = []


def case(name: str, argv: list[str], needle: str, toml: str | None = None, **env: str) -> None:
    CASES.append((name, argv, toml, env, needle))


# ---- run: every flag -----------------------------------------------------------------
for flag, bad, needle in [
    ("--concurrency", "many", "not a whole number"),
    ("--concurrency", "-3", "at least 0"),
    ("--concurrency", "1.5", "not a whole number"),
    ("--concurrency", "20000", "at most 10000"),
    ("--concurrency", "", "--concurrency is empty"),
    ("-c", "-1", "at least 0"),
    ("--max-concurrency", "0", "at least 1"),
    ("--max-concurrency", "-5", "at least 1"),
    ("--max-concurrency", "10000000", "at most 10000"),
    ("--max-concurrency", "lots", "not a whole number"),
    ("--max-concurrency", "", "is empty"),
    ("--steps", "1,x", "--steps"),
    ("--steps", "-1,2", "non-negative"),
    ("--steps", "1,20000", "at most 10000"),
    ("--steps", ",", "non-negative"),
    ("--steps", "", "is empty"),
    ("--step-seconds", "0", "must be positive"),
    ("--step-seconds", "-3s", "must be positive"),
    ("--step-seconds", "soon", "not a duration"),
    ("--step-seconds", "30d", "at most 7d"),
    ("--rate", "fast", "not a rate"),
    ("--rate", "0/s", "not a rate"),
    ("--rate", "-5/s", "not a rate"),
    ("--rate", "2000000/s", "at most 100000/s"),
    ("--rate", "10/h", "not a rate"),
    ("--rate", "", "is empty"),
    ("--duration", "soon", "not a duration"),
    ("--duration", "0s", "must be positive"),
    ("--duration", "-5s", "must be positive"),
    ("--duration", "-1", "must be positive"),
    ("--duration", "8d", "at most 7d"),
    ("--duration", "1y", "not a duration"),
    ("--duration", "", "--duration is empty"),
    ("-d", " ", "is empty"),
    ("--interval", "5ms", "between 10ms and 60s"),
    ("--interval", "2m", "at most 1m"),
    ("--interval", "-1s", "must be positive"),
    ("--interval", "", "is empty"),
    ("--abort-on", "latency>5", "not a threshold"),
    ("--abort-on", "p95>>1", "not a threshold"),
    ("--abort-on", "errors>5ms", "percentage"),
    ("--abort-on", "", "not a threshold"),
    ("--processes", "0", "at least 1"),
    ("--processes", "two", "whole number"),
    ("--processes", "65", "too many"),
    ("--processes", "-2", "at least 1"),
    ("--seed", "x", "invalid int value"),
    ("--slo", "p95=fast", "--slo"),
    ("--slo", "errors=3ms", "percentage"),
    ("--slo", "dropped=2s", "dropped takes a percentage"),
    ("--slo", "p99=5%", "takes ms or s"),
    ("--slo", "p50=1s", "--slo"),
    ("--slo", "", "--slo is empty"),
    ("--detect", "nosuch.k=1", "unknown detector kind"),
    ("--detect", "novalue", "KIND.OPTION=VALUE"),
    ("--pg", "", "--pg is empty"),
    ("--pg", "mysql://u@h/db", "not a PostgreSQL DSN"),
    ("--pg", "postgresql://h:99999/db", "invalid port"),
    ("--pg", "postgresql://[::1/x", "not a valid DSN"),
    ("--pg", "postgresql://u:Zz@Leak99@127.0.0.1/db", "percent-encode it as %40"),
    ("--pg", "postgresql://u:a\x01b@127.0.0.1/db", "control character"),
    ("--pg", "host=x user=y", "not a PostgreSQL DSN"),
    ("--pg-monitor", "", "--pg-monitor is empty"),
    ("--pg-monitor", "http://x", "--pg-monitor"),
    ("--redis", "", "--redis is empty"),
    ("--redis", "http://x", "not a Redis URL"),
    ("--redis", "redis://127.0.0.1:6379/abc", "database 'abc' is not a number"),
    ("--redis", "redis://127.0.0.1:6379/0?db=x", "Invalid value for 'db'"),
    ("--redis", "redis://127.0.0.1:99999/0", "not a valid URL"),
    ("--redis", "redis://:a/b@host/0", "percent-encode"),
    ("--http", "", "--http is empty"),
    ("--http", "ftp://host/x", "not an HTTP URL"),
    ("--http", "http://", "not an HTTP URL"),
    ("--http", "http://h:0x1/", "not a valid URL"),
    ("--prometheus", "prom:9090", "--prometheus"),
    ("--prometheus", "", "--prometheus is empty"),
    ("--k8s-namespace", "", "--k8s-namespace is empty"),
    ("--k8s-selector", "a=b\nc", "control character"),
    ("--k8s-namespace", "ns\udcff", "not UTF-8"),
    ("--config", "", "--config is empty"),
    ("--config", "/nonexistent.toml", "does not exist"),
    ("--profile", "", "--profile is empty"),
    ("--profile", "prod", "no loadtop.toml"),
    ("--record", "", "--record is empty"),
    ("--record", "/nonexistent/dir/r.jsonl", "does not exist"),
    ("--record", "/", "is a directory"),
    ("--export", "", "--export is empty"),
    ("--export", "/proc/x.md", "cannot be written"),
    ("--export", "/nonexistent/r.md", "does not exist"),
    ("-s", "", "empty --scenario"),
    ("-s", "no-such-thing", "unknown scenario"),
    ("-s", "pg-selekt", "did you mean pg-select"),
    ("-p", "novalue", "key=value"),
    ("-p", "=x", "key=value"),
    ("-p", "", "key=value"),
    ("--redis-lock-pattern", "", "--redis-lock-pattern is empty"),
    ("--redis-queue-pattern", " ", "--redis-queue-pattern is empty"),
]:
    case(f"run {flag} {bad!r}", [*RUN, f"{flag}={bad}" if flag.startswith("--") else flag, *(
        [] if flag.startswith("--") else [bad])], needle)  # fmt: skip
# the same flags, value as the next word (argparse's "expected one argument" before)
for flag, bad, needle in [
    ("--concurrency", "-3", "at least 0"),
    ("--max-concurrency", "-1", "at least 1"),
    ("--duration", "-5s", "must be positive"),
    ("--rate", "-1/s", "not a rate"),
    ("--steps", "-1,2", "non-negative"),
    ("--interval", "-1s", "must be positive"),
    ("--processes", "-4", "at least 1"),
    ("-d", "-2m", "must be positive"),
]:
    case(f"run {flag} {bad} (a separate word)", [*RUN, flag, bad], needle)

case("run no scenario", ["run", "--headless"], "no scenario")
case("run unknown flag", ["run", "--bogus-flag"], "unrecognized arguments")
case("run flag without value", [*RUN, "--duration"], "expected one argument")
case("run zero weight", ["run", "--headless", "-s", "pg-select=0"], "weight must be positive")
case("run weight not a number", ["run", "--headless", "-s", "pg-select=abc"], "weight")
case("run scenario twice", [*RUN, "-s", "pg-select"], "given twice")
case("run rate and steps", [*RUN, "--rate", "10/s", "--steps", "1,2"], "do not mix")
case("run processes over max", [*RUN, "--processes", "9", "--max-concurrency", "4"], "too many")
case("run processes unable", ["run", "--headless", "-s", "redis-queue", "--processes", "2"],
     "drop --processes")  # fmt: skip
case("run readonly writer", ["run", "--headless", "-s", "hot-counter", "--readonly"],
     "--readonly")  # fmt: skip
case("run readonly http POST", ["run", "--headless", "-s", "http", "--http", "http://h:1",
                                 "-p", "method=POST", "--readonly"], "--readonly")  # fmt: skip
case("run record is export", [*RUN, "--record", "same.out", "--export", "same.out"],
     "the same file")  # fmt: skip
case("run record is export via ./", [*RUN, "--record", "same2.out", "--export", "./same2.out"],
     "the same file")  # fmt: skip
case("run bad LOADTOP_PG_DSN", RUN, "not a PostgreSQL DSN", LOADTOP_PG_DSN="mysql://x@h/db")
case("run bad LOADTOP_REDIS_URL", RUN_R, "is not a number",
     LOADTOP_REDIS_URL="redis://127.0.0.1:6379/x")  # fmt: skip
case("run bad LOADTOP_HTTP_URL", RUN, "not an HTTP URL", LOADTOP_HTTP_URL="gopher://x")

# ---- -p: unknown keys and every declared parameter of every built-in --------------
case("-p typo", ["run", "--headless", "-s", "stock-reservation", "-p", "modee=unsafe"],
     "did you mean -p mode")  # fmt: skip
case("-p unknown for a scenario that takes none", [*RUN, "-p", "rows=10"], "takes none")
case("-p unknown in a mix", ["run", "--headless", "-s", "hot-counter", "-s", "opposite-order",
                             "-p", "zzz=1"], "use one of")  # fmt: skip
case("-p hot-counter mode=x", ["run", "--headless", "-s", "hot-counter", "-p", "mode=x"],
     "use safe or unsafe")  # fmt: skip
case("-p opposite-order order=random", ["run", "--headless", "-s", "opposite-order", "-p",
                                        "order=random"], "use opposite or sorted")  # fmt: skip
case("-p http headers not Name: value", ["run", "--headless", "-s", "http", "--http",
                                         "http://h:1", "-p", "headers=oops"], "Name: value")  # fmt: skip
case("-p http body not JSON", ["run", "--headless", "-s", "http", "--http", "http://h:1",
                               "-p", "body={x"], "not valid JSON")  # fmt: skip
case("-p http expect", ["run", "--headless", "-s", "http", "--http", "http://h:1",
                        "-p", "expect=ok"], "expect")  # fmt: skip
case("-p http method", ["run", "--headless", "-s", "http", "--http", "http://h:1",
                        "-p", "method=FETCH"], "unknown")  # fmt: skip
case("-p http-reserve products", ["run", "--headless", "-s", "http-reserve", "--http",
                                  "http://h:1", "-p", "products=0"], "count or a list")  # fmt: skip

_TARGET = {"postgres": [], "redis": [], "http": ["--http", "http://h:1"]}
for _name, _cls in sorted(builtin_scenarios().items()):
    _base = ["run", "--headless", "-s", _name] + [a for n in _cls.needs for a in _TARGET[n]]
    for _key, _p in (_cls.parameters or {}).items():
        if _p.type in (int, float):
            case(f"-p {_name} {_key} not a number", [*_base, "-p", f"{_key}=abc"], "not a valid")
            if _p.min is not None:
                below = _p.min - (1 if _p.type is int else max(abs(_p.min) * 0.5, 0.5))
                case(f"-p {_name} {_key} below range", [*_base, "-p", f"{_key}={below:g}"],
                     "out of range")  # fmt: skip
            if _p.max is not None:
                above = int(_p.max * 2) if _p.type is int else _p.max * 2
                case(f"-p {_name} {_key} above range", [*_base, "-p", f"{_key}={above}"],
                     "out of range")  # fmt: skip
            if _p.type is int:
                case(f"-p {_name} {_key} not whole", [*_base, "-p", f"{_key}=1.5"], "valid int")
        if _p.choices:
            case(f"-p {_name} {_key} not allowed", [*_base, "-p", f"{_key}=bogus"], "not allowed")

# ---- loadtop.toml: every key with a wrong type, and the file itself ------------------
for key, bad, needle in [
    ("pg", "5", "must be a string"),
    ("pg", '""', "pg is empty"),
    ("pg", '"mysql://u@h/db"', "not a PostgreSQL DSN"),
    ("pg_monitor", "true", "must be a string"),
    ("redis", "6379", "must be a string"),
    ("redis", '"redis://h/abc"', "not a number"),
    ("http", "[1]", "must be a string"),
    ("prometheus", "{a = 1}", "must be a string"),
    ("k8s_namespace", "1", "must be a string"),
    ("k8s_selector", "false", "must be a string"),
    ("k8s_context", '" "', "is empty"),
    ("scenario", "5", "must be a string or a list"),
    ("scenario", '["pg-select", 3]', "must hold only strings"),
    ("scenario", "[]", "empty list"),
    ("scenario", '"nope"', "unknown scenario"),
    ("concurrency", '"many"', "not a whole number"),
    ("concurrency", "1.5", "must be a whole number"),
    ("concurrency", "-1", "at least 0"),
    ("concurrency", "true", "must be a whole number"),
    ("max_concurrency", "1.5", "must be a whole number"),
    ("max_concurrency", "10000000", "at most 10000"),
    ("max_concurrency", "0", "at least 1"),
    ("processes", "1.0", "must be a whole number"),
    ("processes", "100", "too many"),
    ("steps", '[1, "2"]', "must hold only whole numbers"),
    ("steps", "[1, -2]", "non-negative"),
    ("steps", "{a = 1}", "must be a list or a string"),
    ("steps", "[]", "empty list"),
    ("step_seconds", "0", "must be positive"),
    ("step_seconds", "[30]", "a duration"),
    ("duration", "-1", "must be positive"),
    ("duration", "true", "a duration"),
    ("duration", '"forever"', "not a duration"),
    ("duration", "1e9", "at most 7d"),
    ("interval", "0.005", "between 10ms and 60s"),
    ("rate", '"3000000/s"', "at most 100000/s"),
    ("rate", "[1]", "a rate"),
    ("rate", "0", "not a rate"),
    ("abort_on", "5", "must be a string or a list"),
    ("abort_on", '"p95>>1"', "not a threshold"),
    ("abort_on", "[1]", "must hold only strings"),
    ("params", '"mode=unsafe"', "must be a table"),
    ("params", '["a"]', "must be a table"),
    ("params", "{x = [1]}", "must be a string or a number"),
    ("params", '{modee = "unsafe"}', "not a parameter"),
    ("readonly", '"no"', "must be true or false"),
    ("readonly", "1", "must be true or false"),
    ("detect", "5", "must be a table"),
    ("detect", "{nosuch = 1}", "unknown key"),
    ("slo", "5", "must be a table or a string"),
    ("slo", '"p95=fast"', "--slo"),
    ("slo", "{p95 = 5}", "did you mean p95_ms"),
    ("slo", '{p95_ms = "x"}', "positive number"),
    ("probe_intervals", '"x"', "must be a table"),
    ("probe_intervals", "{pgs = 1}", "no probe 'pgs'"),
    ("probe_intervals", "{pods = 0}", "between 0.1 and 3600"),
    ("redis_lock_patterns", "5", "must be a list or a string"),
    ("redis_queue_patterns", "[5]", "must hold only strings"),
    ("concurency", "3", "did you mean concurrency"),
    ("colour", "1", "unknown key 'colour'"),
    ("profile", "1", "must hold tables"),
]:
    case(f"toml {key} = {bad}", ["run", "--headless"] + ([] if key == "scenario" else
         ["-s", "hot-counter"]), needle, toml=f"{key} = {bad}\n")  # fmt: skip
case("toml syntax", RUN, "invalid TOML", toml="pg = [unclosed\n")
case("toml not UTF-8", RUN, "not UTF-8", toml="\udcff")
case("toml profile unknown key", [*RUN, "--profile", "x"], "unknown key 'speed'",
     toml="[profile.x]\nspeed = 3\n")  # fmt: skip
case("toml profile bad type", [*RUN, "--profile", "x"], "must be true or false",
     toml='[profile.x]\nreadonly = "yes"\n')  # fmt: skip
case("toml missing profile", [*RUN, "--profile", "prod"], "no [profile.prod]",
     toml="[profile.staging]\n")  # fmt: skip
case("toml profile not a table", [*RUN, "--profile", "x"], "must hold tables",
     toml="[profile]\nx = 3\n")  # fmt: skip

# ---- watch, demo, report, replay, scenarios ------------------------------------------
case("watch without target", ["watch", "--headless", "-d", "1s"], "watch needs a target")
case("watch empty pg", ["watch", "--headless", "--pg", ""], "--pg is empty")
case("watch bad redis db", ["watch", "--headless", "--redis", "redis://h/db1"], "not a number")
case("watch duration", [*WATCH, "-d", "0"], "must be positive")
case("watch negative duration", [*WATCH, "-d", "-1s"], "must be positive")
case("watch interval", [*WATCH, "--interval", "1ms"], "between 10ms and 60s")
case("watch record is export", [*WATCH, "--record", "w.out", "--export", "w.out"], "same file")
case("watch export unwritable", [*WATCH, "--export", "/proc/w.md"], "cannot be written")
case("watch slo", [*WATCH, "--slo", "p95="], "--slo")
case("watch unknown flag", ["watch", "--scenario", "x"], "unrecognized arguments")
case("demo empty duration", ["demo", "--headless", "--duration", ""], "--duration is empty")
case("demo duration", ["demo", "--headless", "-d", "0s"], "must be positive")
case("demo negative duration", ["demo", "--headless", "-d", "-5s"], "must be positive")
case("demo long duration", ["demo", "--headless", "-d", "9d"], "at most 7d")
case("demo export /proc", ["demo", "--headless", "--export", "/proc/x.md"], "cannot be written")
case("demo record empty", ["demo", "--headless", "--record", ""], "--record is empty")
case("demo record is export", ["demo", "--headless", "--record", "d.out", "--export", "d.out"],
     "same file")  # fmt: skip
case("demo unknown flag", ["demo", "--pg", "x"], "unrecognized arguments")
case("report missing", ["report", "/tmp/definitely-missing.jsonl"], "does not exist")
case("report empty path", ["report", ""], "empty text")
case("report no path", ["report"], "required")
case("report -o empty", ["report", "ok.jsonl", "-o", ""], "-o is empty")
case("report -o is the recording", ["report", "ok.jsonl", "-o", "ok.jsonl"], "overwrite")
case("report -o unwritable", ["report", "ok.jsonl", "-o", "/nonexistent/r.md"], "cannot be written")
case("report not a recording", ["report", "not.jsonl"], "not a loadtop recording")
case("report directory", ["report", "/"], "is a directory")
case("replay missing", ["replay", "/tmp/definitely-missing.jsonl"], "does not exist")
case("replay empty path", ["replay", ""], "empty text")
case("scenarios extra", ["scenarios", "x"], "unrecognized arguments")
case("unknown command", ["frobnicate"], "invalid choice")


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 150, len(CASES)
    assert len({c[0] for c in CASES}) == len(CASES), "case names must be unique"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith("LOADTOP_")]:
        monkeypatch.delenv(var)
    (tmp_path / "ok.jsonl").write_text(json.dumps(HEADER) + "\n")
    (tmp_path / "not.jsonl").write_text("hello\n")
    yield tmp_path


@pytest.mark.parametrize(
    ("name", "argv", "toml", "env", "needle"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys, name, argv, toml, env, needle
) -> None:
    if toml is not None:
        data = toml.encode("utf-8", "surrogateescape")
        (workdir / "loadtop.toml").write_bytes(data)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = main(argv)
    out = capsys.readouterr()
    err = out.err.strip()
    assert code == 2, (argv, err, out.out[-300:])
    assert "Traceback" not in out.err + out.out
    assert len(err.splitlines()) == 1, err
    assert err.startswith("loadtop: "), err
    assert needle in err, err
    assert "ops/s" not in out.out  # no load ran
    assert not list(workdir.glob("*.out")), "an output file was created for a refused run"


# ---- the real entry point -------------------------------------------------------------

LOADTOP = Path(sys.executable).with_name("loadtop")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([*RUN, "--concurrency", "-3"], b"at least 0"),
        ([*RUN, "--pg", ""], b"--pg is empty"),
        ([*RUN, "--pg", b"postgresql://u:p\xffw@127.0.0.1/db"], b"not UTF-8"),
        ([*RUN_R, "--redis", "redis://:Zz@Leak99@127.0.0.1/abc"], b"is not a number"),
        (["run", "--headless", "-s", "hot-counter", "-p", "mode=x"], b"use safe or unsafe"),
        (["demo", "--export", "/proc/x.md"], b"cannot be written"),
    ],
    ids=["negative", "empty pg", "non-utf8 password", "redis db", "-p choice", "demo export"],
)
def test_bad_input_through_the_entry_point(tmp_path: Path, argv: list, needle: bytes) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADTOP_")}
    proc = subprocess.run(
        [str(LOADTOP), *argv], capture_output=True, timeout=60, cwd=tmp_path, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count(b"\n") == 1 and proc.stderr.startswith(b"loadtop: "), proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr + proc.stdout
    assert b"Leak99" not in proc.stderr and b"p\xffw" not in proc.stderr
