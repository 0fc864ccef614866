"""The `loadtop` commands, one module each behind the `Command` protocol
(app.commands.base). `COMMANDS` is the explicit list `app.cli` parses and
dispatches, in `loadtop --help` order; importing a command module registers
nothing."""

from __future__ import annotations

from app.commands.base import Command
from app.commands.demo import Demo
from app.commands.replay import Replay
from app.commands.report import Report
from app.commands.run import Run
from app.commands.scenarios import Scenarios
from app.commands.watch import Watch

COMMANDS: tuple[Command, ...] = (Demo(), Run(), Watch(), Replay(), Report(), Scenarios())

__all__ = ["COMMANDS", "Command"]
