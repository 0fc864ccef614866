"""`loadtop scenarios`: the built-in scenarios, their targets and parameters."""

from __future__ import annotations

import argparse

from app.scenario import builtin_scenarios


class Scenarios:
    name = "scenarios"
    help = "list the built-in scenarios"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        found = builtin_scenarios()
        width = max((len(n) for n in found), default=10)
        for name, cls in sorted(found.items()):
            needs = ",".join(cls.needs)
            print(f"{name:<{width}}  [{needs}]  {cls.description}")
            declared = cls.parameters
            lines = (
                {k: p.describe() for k, p in declared.items()}
                if declared is not None
                else cls.params_help
            )
            for k, v in lines.items():
                print(f"{'':<{width}}    -p {k}: {v}")
        return 0
