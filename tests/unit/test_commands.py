"""The command layer's seams, no server: the explicit command tuple is the
parser, and flags, loadtop.toml and the demo all get their RunConfig from the
one `build_run_config`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from app.cli import build_parser
from app.commands import COMMANDS
from app.commands.demo import DEMO_PLAN, demo_config
from app.session.config import UsageError, build_run_config


def test_the_parser_is_the_command_tuple() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [c.name for c in COMMANDS]
    assert [c.name for c in COMMANDS] == ["demo", "run", "watch", "replay", "report", "scenarios"]
    for c in COMMANDS:
        assert c.help and callable(c.run) and callable(c.add_arguments)


def _run_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


def _comparable(cfg: object) -> dict[str, object]:
    d = dataclasses.asdict(cfg)  # type: ignore[call-overload]
    d.pop("run_id")
    d["scenarios"] = [(cls.name, w) for cls, w in cfg.scenarios]  # type: ignore[attr-defined]
    return d


def test_flags_and_loadtop_toml_build_the_same_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("LOADTOP_PG_DSN", "LOADTOP_REDIS_URL", "LOADTOP_HTTP_URL"):
        monkeypatch.delenv(var, raising=False)
    flags = _run_args(
        "-s", "pg-select=2", "-s", "hot-counter", "--pg", "postgresql://u@127.0.0.1:5/db",
        "--steps", "1,2,4", "--step-seconds", "10s", "--abort-on", "p95>500ms",
        "--slo", "p95=300ms", "--max-concurrency", "32", "-p", "mode=unsafe", "--headless",
    )  # fmt: skip
    (tmp_path / "loadtop.toml").write_text(
        'pg = "postgresql://u@127.0.0.1:5/db"\nscenario = ["pg-select=2", "hot-counter"]\n'
        'steps = [1, 2, 4]\nstep_seconds = "10s"\nabort_on = "p95>500ms"\n'
        'max_concurrency = 32\n[params]\nmode = "unsafe"\n[slo]\np95_ms = 300.0\n',
        encoding="utf-8",
    )
    from_toml = build_run_config(_run_args("--headless"))
    assert _comparable(build_run_config(flags)) == _comparable(from_toml)
    assert from_toml.engine.plan == [1, 2, 4] and from_toml.engine.concurrency == 1


def test_redis_pattern_flags_give_the_same_config_as_loadtop_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOADTOP_REDIS_URL", raising=False)
    flags = _run_args(
        "-s", "redis-getset", "--redis", "redis://127.0.0.1:6379/3",
        "--redis-queue-pattern", "jobs:*", "--redis-queue-pattern", "mail:*:q",
        "--redis-lock-pattern", "*:lock:*",
    )  # fmt: skip
    by_flag = build_run_config(flags)
    assert by_flag.redis_queue_patterns == ["jobs:*", "mail:*:q"]
    assert by_flag.redis_lock_patterns == ["*:lock:*"]
    (tmp_path / "loadtop.toml").write_text(
        'redis = "redis://127.0.0.1:6379/3"\nscenario = "redis-getset"\n'
        'redis_queue_patterns = ["jobs:*", "mail:*:q"]\nredis_lock_patterns = "*:lock:*"\n',
        encoding="utf-8",
    )
    from_toml = build_run_config(_run_args())
    assert _comparable(from_toml) == _comparable(by_flag)
    # the flag overrides the toml, like every other key
    over = build_run_config(_run_args("--redis-queue-pattern", "other:*"))
    assert over.redis_queue_patterns == ["other:*"]
    assert over.redis_lock_patterns == ["*:lock:*"]


def test_toml_and_flags_fail_with_the_same_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as by_flag:
        build_run_config(_run_args("-s", "pg-select", "--max-concurrency", "many"))
    (tmp_path / "loadtop.toml").write_text('max_concurrency = "many"\n', encoding="utf-8")
    with pytest.raises(UsageError) as by_toml:
        build_run_config(_run_args("-s", "pg-select"))
    assert (
        str(by_flag.value)
        == str(by_toml.value)
        == ("--max-concurrency 'many' is not a whole number: give e.g. 8")
    )


def test_the_demo_config_is_validated_and_ignores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a loadtop.toml here must not reach the demo
    (tmp_path / "loadtop.toml").write_text("readonly = true\n", encoding="utf-8")
    monkeypatch.setenv("LOADTOP_PG_DSN", "postgresql://someone@staging.example/db")
    cfg = demo_config(None, None, None, duration="90s")
    assert cfg.pg_dsn is None and not cfg.readonly
    assert cfg.engine.duration == 90.0 and cfg.engine.plan == DEMO_PLAN
    with pytest.raises(UsageError, match="--duration must be positive"):
        demo_config(None, None, None, duration="0s")


def test_watch_takes_pg_monitor_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A pg_monitor role is all a watch needs: the probe reads through it."""
    monkeypatch.chdir(tmp_path)
    for var in ("LOADTOP_PG_DSN", "LOADTOP_PG_MONITOR_DSN", "LOADTOP_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    args = build_parser().parse_args(["watch", "--pg-monitor", "postgresql://mon@127.0.0.1:5/db"])
    cfg = build_run_config(args, watch=True)
    assert cfg.pg_monitor_dsn == "postgresql://mon@127.0.0.1:5/db" and cfg.pg_dsn is None
    with pytest.raises(UsageError, match="watch needs a target: give --pg, --pg-monitor"):
        build_run_config(build_parser().parse_args(["watch"]), watch=True)


@pytest.mark.parametrize(("given", "seconds"), [("10ms", 0.01), ("0.05s", 0.05), ("250ms", 0.25)])
def test_sub_100ms_intervals_down_to_10ms_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, seconds: float
) -> None:
    """A benchmark compresses time with a short tick (issue 10): the floor is
    10 ms, from the flag and from loadtop.toml alike."""
    monkeypatch.chdir(tmp_path)
    cfg = build_run_config(_run_args("--headless", "-s", "pg-select", "--interval", given))
    assert cfg.engine.interval == pytest.approx(seconds)
    (tmp_path / "loadtop.toml").write_text(
        f'scenario = "pg-select"\ninterval = "{given}"\n', encoding="utf-8"
    )
    assert build_run_config(_run_args("--headless")).engine.interval == pytest.approx(seconds)


@pytest.mark.parametrize(("given", "shown"), [("9ms", "9ms"), ("0.005s", "5ms"), ("1ms", "1ms")])
def test_interval_below_the_floor_is_one_line_that_says_what_to_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, shown: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as e:
        build_run_config(_run_args("--headless", "-s", "pg-select", "--interval", given))
    msg = str(e.value)
    assert msg == f"--interval {shown} is too short: give between 10ms and 60s (1s is the default)"
    assert "\n" not in msg
