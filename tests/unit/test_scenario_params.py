"""Scenario parameter declarations: every built-in declares its -p keys, the
declared defaults are themselves valid, `loadtop scenarios` prints exactly the
declarations, and a user scenario that declares nothing keeps free-form -p."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from app.scenario import Param, Scenario, ScenarioError, builtin_scenarios, check_params

BUILTINS = sorted(builtin_scenarios().items())


@pytest.mark.parametrize(("name", "cls"), BUILTINS, ids=[n for n, _ in BUILTINS])
def test_every_builtin_declares_valid_defaults(name: str, cls: type[Scenario]) -> None:
    assert cls.parameters is not None, f"{name} declares no parameters"
    for key, p in cls.parameters.items():
        assert p.type in (int, float, str, bool) and p.help, key
        if p.default not in (None, ""):
            p.validate(name, key, str(p.default))  # the default passes its own check
        check_params([cls], {key: str(p.default)} if p.default not in (None, "") else {})


def test_the_listing_is_the_declaration(capsys) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    for name, cls in BUILTINS:
        assert name in out
        for key, p in (cls.parameters or {}).items():
            assert f"-p {key}: {p.describe()}" in out, (name, key)
    assert "[safe | unsafe, default safe]" in out
    assert "[float 0..1, default 0.5]" in out  # redis-getset set_ratio


def test_a_mix_checks_each_value_against_every_scenario_that_declares_it() -> None:
    found = builtin_scenarios()
    mix = [found["hot-counter"], found["redis-queue"]]
    check_params(mix, {"mode": "unsafe", "kind": "stream"})
    with pytest.raises(ScenarioError, match="not allowed"):
        check_params(mix, {"mode": "fast"})
    with pytest.raises(ScenarioError, match="did you mean -p kind"):
        check_params(mix, {"kinds": "list"})


def test_undeclared_user_parameters_stay_free_form(tmp_path: Path) -> None:
    class Free(Scenario):
        name = "free"

        async def run(self, ctx) -> None:  # type: ignore[no-untyped-def]
            pass

    class Declared(Scenario):
        name = "declared"
        parameters = {"rows": Param(int, 10, "rows to read", min=1, max=100)}

        async def run(self, ctx) -> None:  # type: ignore[no-untyped-def]
            pass

    check_params([Free], {"anything": "goes"})
    check_params([Free, Declared], {"anything": "goes", "rows": "5"})
    with pytest.raises(ScenarioError, match="out of range"):
        check_params([Free, Declared], {"rows": "500"})
    with pytest.raises(ScenarioError, match="did you mean -p rows"):
        check_params([Declared], {"row": "5"})
    assert Declared.params_help == {"rows": "rows to read [int 1..100, default 10]"}
