"""The live console's fault menu (`f`, app/ui/faults.py) over the fake session:
only the kinds the targets allow, what it will hit before `y`, the injection
as a fault event; without --allow-faults it says how; --readonly has no menu.
A real injection from a real session is in tests/test_chaos_faults.py."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import Input, OptionList

from app.ui.faults import FaultScreen
from app.ui.textshot import screen_text
from tests.unit.test_ui_live import Live

pytestmark = pytest.mark.timeout(60)


async def _settle(live: Live, pilot: Any) -> None:
    await live.app.workers.wait_for_complete()
    await pilot.pause()


async def test_choose_see_what_it_hits_then_y_injects() -> None:
    live = Live(allow_faults=True)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("f")
        screen = live.app.screen
        assert isinstance(screen, FaultScreen)
        kinds = screen.query_one("#fault-kinds", OptionList)
        assert [kinds.get_option_at_index(i).id for i in range(kinds.option_count)] == ["pod-kill"]
        await pilot.press("enter")  # choose pod-kill: the spec, pre-filled
        assert screen.query_one("#fault-spec", Input).value == "kind=pod-kill"
        await pilot.press("y")  # nothing described yet: y types into the spec box
        assert live.fake.called("inject_fault") == []
        screen.query_one("#fault-spec", Input).value = "kind=pod-kill"
        screen.query_one("#fault-spec", Input).focus()
        await pilot.press("enter")
        await _settle(live, pilot)
        assert live.fake.called("describe_fault") == [("kind=pod-kill",)]
        assert "will hit: SIGKILL demo-service (pid 4242)" in screen_text(live.app)
        await pilot.press("y")
        await _settle(live, pilot)
        assert live.fake.called("inject_fault") == [("kind=pod-kill", "key")]
        assert not isinstance(live.app.screen, FaultScreen)
        assert any("killed demo-service pid 4242" in n for n in live.notes())
        t = await live.tick(pilot)
        assert [e.kind for e in t.events] == ["fault"]


async def test_refused_match_offers_no_y() -> None:
    live = Live(allow_faults=True)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f")
        screen = live.app.screen
        await pilot.press("enter")
        box = screen.query_one("#fault-spec", Input)
        box.value = "kind=pod-kill,pod=db-0"
        await pilot.press("enter")
        await _settle(live, pilot)
        assert "refused" in screen_text(live.app)
        await pilot.press("y")
        await _settle(live, pilot)
        assert live.fake.called("inject_fault") == []


async def test_without_allow_faults_the_menu_says_how() -> None:
    live = Live()
    async with live.app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f")
        assert isinstance(live.app.screen, FaultScreen)
        text = screen_text(live.app)
        assert "--allow-faults" in text and "allow_faults = true" in text
        assert not live.app.screen.query(OptionList)
        await pilot.press("escape")
        assert not isinstance(live.app.screen, FaultScreen)


async def test_readonly_has_no_fault_menu() -> None:
    live = Live(readonly=True, allow_faults=True)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        assert "f fault" not in screen_text(live.app)
        await pilot.press("f")
        assert not isinstance(live.app.screen, FaultScreen)
        assert live.fake.called("describe_fault") == []
