"""The live console's keys and layout, over a fake session and synthetic ticks.

Each test drives the real `LiveConsole` with Pilot, pushes ticks the way the
engine thread does (`FakeSession.tick`), and asserts on the widgets, on the
console's state and on which `SessionControl` calls the keys made. No server,
no engine: what needs a real session (a lock really held, a backend really
terminated, a recording really closed) is in tests/integration/test_ui_console.py.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from app.session.control import SessionControl
from app.session.runner import RunConfig, Session
from app.tick import Tick
from app.ui.live import LiveConsole, controls_of
from app.ui.main import make_live_app
from app.ui.panes import LatencyPane
from app.ui.probe_panes import PostgresPane
from app.ui.screens import BlockerScreen, ConfirmScreen, HelpScreen
from app.ui.textshot import screen_text
from tests.unit.fakes import FakeSession
from tests.unit.ticks import PLAN, T0, make_ticks, pg_reading, tick

pytestmark = pytest.mark.timeout(60)


class Clock:
    """Wall and monotonic time the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


class Live:
    def __init__(self, tmp_path: Path | None = None, **fake: Any) -> None:
        self.clock = Clock()
        self.fake = FakeSession(wall_clock=self.clock, **fake)
        self.app: LiveConsole = make_live_app(
            self.fake,
            clock=self.clock,
            wall_clock=self.clock,
            export_dir=str(tmp_path) if tmp_path else None,
        )

    async def tick(self, pilot: Pilot[Any], **kw: Any) -> Tick:
        """One second later, the engine closes a window; let the app draw it."""
        self.clock.advance(1.0)
        t = self.fake.tick(**kw)
        await pilot.pause()
        return t

    def screen(self) -> str:
        return screen_text(self.app)

    def notes(self) -> list[str]:
        return [str(n.message) for n in self.app._notifications]


async def open_blocker(live: Live, pilot: Pilot[Any], pid: int) -> None:
    """A tick whose pg reading has `pid` at the root of a lock chain; select
    it in the blockers table and press enter."""
    reading = pg_reading(0, waiting=2, root_pid=pid, app_name="test-holder")
    await live.tick(pilot, readings={"postgres": reading})
    pane = live.app.query_one(PostgresPane)
    assert f"r{pid}" in pane.backends
    table = live.app.query_one("#blockers", DataTable)
    table.focus()
    table.move_cursor(row=table.get_row_index(f"r{pid}"))
    await pilot.press("enter")
    assert isinstance(live.app.screen, BlockerScreen)


# ---- the protocol ---------------------------------------------------------------------


def _members(proto: type) -> dict[str, Any]:
    return {n: m for n, m in vars(proto).items() if not n.startswith("_")}


@pytest.mark.parametrize("impl", ["fake", "session"])
def test_fake_and_session_implement_the_protocol(impl: str) -> None:
    """Without a type checker in CI, this is what keeps FakeSession honest:
    every SessionControl member exists on it (and on the real Session) with
    the same parameters."""
    obj: Any = FakeSession() if impl == "fake" else Session(RunConfig(scenarios=[]))
    members = _members(SessionControl)
    assert {"start_thread", "error", "outcome", "messages", "export_report"} <= set(members)
    for name, member in members.items():
        assert hasattr(obj, name), f"{impl} has no {name}"
        if inspect.isfunction(member):
            want = list(inspect.signature(member).parameters)[1:]
            got = list(inspect.signature(getattr(obj, name)).parameters)
            assert got == want, f"{impl}.{name}{got} != SessionControl.{name}{want}"


# ---- load keys ----------------------------------------------------------------------


async def test_plus_minus_and_step_size() -> None:
    live = Live(concurrency=1)
    fake = live.fake
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        assert "workers 1/1" in live.screen()
        await pilot.press("plus")
        assert fake.called("step_concurrency") == [(1, "key")] and fake.target == 2
        await live.tick(pilot)
        assert "workers 2/2" in live.screen()
        await pilot.press("right_square_bracket", "right_square_bracket")  # 1 -> 2 -> 5
        assert live.app.step_size == 5
        assert "step ±5" in live.screen()
        await pilot.press("plus")
        assert fake.called("step_concurrency")[-1] == (5, "key") and fake.target == 7
        await pilot.press("left_square_bracket")
        assert live.app.step_size == 2
        await pilot.press("minus")
        assert fake.called("step_concurrency")[-1] == (-2, "key") and fake.target == 5
        for _ in range(8):
            await pilot.press("right_square_bracket")
        assert live.app.step_size == 100  # the top of 1,2,5,10,25,50,100
        await pilot.press("minus")
        assert fake.called("step_concurrency")[-1] == (-100, "key") and fake.target == 0
        await pilot.press("plus")  # 100, capped by the session at max_concurrency 64
        assert fake.called("step_concurrency")[-1] == (100, "key") and fake.target == 64
        await pilot.press("left_square_bracket", "left_square_bracket", "left_square_bracket")
        await pilot.press("minus", "minus")  # step 10
        assert fake.called("step_concurrency")[-2:] == [(-10, "key"), (-10, "key")]
        assert fake.target == 44
        await live.tick(pilot)
        assert "workers 44/44" in live.screen()
        # every change went through the control, from the key, and is an event
        assert len(fake.called("step_concurrency")) == 7
        assert fake.events().count(("concurrency", "key")) >= 7
        sizes = [note for kind, note, source in fake.called("note") if kind == "step-size"]
        assert sizes[:3] == ["step size 2", "step size 5", "step size 2"]
        assert ("step-size", "key") in fake.events()


async def test_pause_and_resume() -> None:
    live = Live(concurrency=3)
    fake = live.fake
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        assert "workers 3/3" in live.screen()
        await pilot.press("p")
        assert fake.called("pause") == [("key",)]
        assert live.app.paused  # at once, before the next tick says so
        await live.tick(pilot)
        assert live.app.paused
        assert "PAUSED" in live.screen()
        assert "workers 0/0" in live.screen()
        await pilot.press("p")
        assert fake.called("resume") == [("key",)]
        assert not live.app.paused
        await live.tick(pilot)
        assert "PAUSED" not in live.screen() and "workers 3/3" in live.screen()
        assert ("pause", "key") in fake.events() and ("resume", "key") in fake.events()


async def test_a_key_shows_at_once_and_the_next_tick_has_the_last_word() -> None:
    """The local mark after a key press lasts until a tick closes after it;
    from then on the console shows what the ticks say."""
    live = Live(concurrency=2)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("p")
        assert live.app.paused and not live.fake.ticks[-1].paused
        live.fake.paused = False  # the engine did not pause after all
        await live.tick(pilot)
        assert not live.app.paused


async def test_the_state_is_the_ticks_not_a_copy() -> None:
    """Whatever the keys did, once a tick closes after them the console shows
    that tick's ControlState: an engine that panicked on its own (a
    threshold) is shown panicked, and resuming asks first."""
    live = Live(concurrency=2)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        assert not live.app.panicked
        live.fake.panic(source="threshold")
        await live.tick(pilot)
        assert live.app.panicked and live.app.paused
        await pilot.press("p")
        assert isinstance(live.app.screen, ConfirmScreen)


def test_a_tick_without_control_state_says_paused_and_plan_only() -> None:
    """Ticks from before ticks carried their ControlState."""
    old = tick(3, paused=True, plan_step=1)
    assert old.control is None
    c = controls_of(old)
    assert c.paused and c.plan_running and c.plan_step == 1 and not c.panicked
    assert not controls_of(tick(4)).plan_running


async def test_panic_stops_the_load_and_resuming_asks_first() -> None:
    live = Live(concurrency=8)
    fake = live.fake
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("x")
        assert fake.called("panic") == [("key",)]
        assert live.app.panicked and live.app.paused
        assert "PANIC — load stopped" in live.screen()  # the header, not the footer's key
        assert any("PANIC: all load stopped" in n for n in live.notes())
        await live.tick(pilot)
        last = live.fake.ticks[-1].control
        assert last is not None and last.panicked  # the tick says so
        assert live.app.panicked
        assert "workers 0/0" in live.screen()
        # resuming asks first; "n" keeps the load stopped
        await pilot.press("p")
        assert isinstance(live.app.screen, ConfirmScreen)
        await pilot.press("n")
        assert fake.called("resume") == [] and fake.paused
        assert live.app.panicked
        await pilot.press("p", "y")
        assert fake.called("resume") == [("key",)]
        assert not live.app.panicked and not live.app.paused
        await live.tick(pilot)
        assert "workers 8/8" in live.screen() and "PANIC —" not in live.screen()
        assert fake.events().count(("panic", "key")) == 1
        assert ("resume", "key") in fake.events()


async def test_plan_key_and_manual_step_pauses_the_plan() -> None:
    live = Live(concurrency=1, plan=[1, 2, 3])
    fake = live.fake
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        assert live.app.plan_running
        assert "plan 1/3" in live.screen()
        await pilot.press("r")
        assert fake.called("stop_plan") == [("key",)] and not live.app.plan_running
        await live.tick(pilot)
        assert "plan paused" in live.screen()
        await pilot.press("r")
        assert fake.called("start_plan") == [("key",)] and live.app.plan_running
        await live.tick(pilot)
        assert "plan 1/3" in live.screen()
        await pilot.press("plus")  # a manual step pauses the plan, and says so
        assert fake.called("step_concurrency") == [(1, "key")]
        assert not fake.plan_running and fake.target == 2 and not live.app.plan_running
        assert any("ramp plan is paused" in n for n in live.notes())
        await live.tick(pilot)
        assert ("plan-paused", "key") in fake.events()
        assert "plan paused" in live.screen()


async def test_plan_key_without_a_plan_says_how_to_give_one() -> None:
    live = Live()
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("r")
        assert live.fake.called("start_plan") == [] and live.fake.called("stop_plan") == []
        assert any("--steps 1,2,4,8" in n for n in live.notes())


async def test_plan_key_after_a_panic_asks_first() -> None:
    live = Live(plan=[1, 2, 3])
    fake = live.fake
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("x")
        await live.tick(pilot)
        assert not live.app.plan_running and live.app.panicked
        await pilot.press("r")
        assert isinstance(live.app.screen, ConfirmScreen)
        await pilot.press("y")
        assert fake.called("start_plan") == [("key",)]
        assert live.app.plan_running and not live.app.panicked


# ---- blockers -----------------------------------------------------------------------


async def test_blocker_details_cancel_and_terminate() -> None:
    live = Live(concurrency=2)
    fake = live.fake
    pid = 4242
    async with live.app.run_test(size=(120, 40)) as pilot:
        await open_blocker(live, pilot, pid)
        text = live.screen()
        assert f"backend {pid}" in text and "root blocker" in text and "test-holder" in text
        assert "waiting behind it" in text
        await pilot.press("c")
        assert isinstance(live.app.screen, ConfirmScreen)
        await pilot.press("n")  # no: nothing happens
        assert isinstance(live.app.screen, BlockerScreen)
        assert fake.called("cancel_backend") == []
        await pilot.press("c", "y")
        assert fake.called("cancel_backend") == [(pid,)]
        assert f"cancelled backend {pid}" in live.screen()
        await pilot.press("k", "y")
        assert fake.called("terminate_backend") == [(pid,)]
        assert f"terminated backend {pid}" in live.screen()
        await pilot.press("escape")
        assert not isinstance(live.app.screen, BlockerScreen)
        await live.tick(pilot)
        assert ("backend-terminate", "key") in fake.events()


async def test_readonly_has_no_cancel_or_terminate() -> None:
    live = Live(readonly=True)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await open_blocker(live, pilot, 4242)
        screen = live.app.screen
        assert isinstance(screen, BlockerScreen) and screen.act is None
        assert "read-only" in live.screen()
        await pilot.press("k")
        assert isinstance(live.app.screen, BlockerScreen)  # no confirmation: no such key
        assert live.fake.called("terminate_backend") == []


# ---- export, quit -----------------------------------------------------------------------


async def test_export_key_writes_the_report(tmp_path: Path) -> None:
    live = Live(tmp_path)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await live.tick(pilot)
        await pilot.press("e")
        await live.app.workers.wait_for_complete()
        await pilot.pause()
        assert live.app.exports
        path = Path(live.app.exports[0])
        assert live.fake.called("export_report") == [(str(path),)]
        assert path.parent == tmp_path and path.exists()
        assert path.name.startswith("loadtop-fake0001-")
        assert "sleepy" in path.read_text()
        # its chart, written off the UI thread with a plotext figure of its own
        svg = path.with_suffix(".svg")
        assert svg.exists() and f"]({svg.name})" in path.read_text()
        assert '<path class="series" data-series="ops/s"' in svg.read_text()
        assert any(str(path) in n for n in live.notes())
        await live.tick(pilot)
        assert ("export", "key") in live.fake.events()


async def test_quit_stops_the_session_and_exits_with_its_code() -> None:
    live = Live(exit_code=3)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("q")
        assert live.fake.called("stop") == [("quit",)]
        await live.app.workers.wait_for_complete()
        await pilot.pause()
    # app.run() returns the outcome's exit code (e.g. 3: a tripped threshold)
    assert live.app.return_value == 3


async def test_quit_while_teardown_runs_second_q_leaves_at_once() -> None:
    live = Live(finish_on_stop=False)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("q")
        assert live.app.stopping and live.fake.called("stop") == [("quit",)]
        assert "stopping: load off" in live.screen()
        await pilot.press("plus", "p", "x")  # the load keys are gone once quitting
        assert live.fake.names().count("step_concurrency") == 0
        assert live.fake.called("pause") == [] and live.fake.called("panic") == []
        await pilot.press("q")
    assert live.app.return_value == 0  # no outcome yet
    assert live.fake.called("stop") == [("quit",)]  # stop asked once
    live.fake.finish("quit")  # teardown ends: the quit worker's wait returns


async def test_ctrl_c_asks_once_then_quits_like_q() -> None:
    """Issue 13: Ctrl-C quits with teardown, as q does, after one confirmation
    (it used to show Textual's "press ctrl+q" while the load kept running)."""
    live = Live(exit_code=1)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("ctrl+c")
        assert "Quit? The load stops" in live.screen()
        await pilot.press("n")  # no: the load goes on
        assert live.fake.called("stop") == [] and not live.app.stopping
        await pilot.press("ctrl+c")
        await pilot.press("y")
        assert live.fake.called("stop") == [("quit",)]
        await live.app.workers.wait_for_complete()
        await pilot.pause()
    assert live.app.return_value == 1  # the session's verdict, as with q


async def test_a_second_ctrl_c_is_the_yes() -> None:
    live = Live()
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        await pilot.press("ctrl+c", "ctrl+c")
        assert live.fake.called("stop") == [("quit",)]
        await live.app.workers.wait_for_complete()
        await pilot.pause()


async def test_session_that_never_started_exits_2() -> None:
    live = Live()
    live.fake.fail_start("cannot connect to postgres at db:5432: check --pg")
    async with live.app.run_test(size=(120, 40)) as pilot:
        for _ in range(40):
            await pilot.pause(0.05)
            if live.app.return_value is not None:
                break
    assert live.app.return_value == 2


async def test_load_that_ended_says_so_and_q_leaves() -> None:
    live = Live(exit_code=1)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        live.fake.finish("duration")
        for _ in range(40):
            await pilot.pause(0.05)
            if live.app.ended:
                break
        assert "load stopped — q quits" in live.screen()
        await pilot.press("q")
    assert live.fake.called("stop") == []  # nothing left to stop
    assert live.app.return_value == 1


async def test_no_tick_for_a_while_shows_in_the_header() -> None:
    live = Live()
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        live.clock.advance(5.0)
        for _ in range(40):
            await pilot.pause(0.05)
            if "no tick for 5s" in live.screen():
                break
        assert "no tick for 5s" in live.screen()
        await live.tick(pilot)
        for _ in range(40):
            await pilot.pause(0.05)
            if "no tick" not in live.screen():
                break
        assert "no tick" not in live.screen()


async def test_a_tick_during_shutdown_does_not_crash_the_exit() -> None:
    """The drain window's tick can arrive while the app takes its panes apart
    (q, a signal): it is dropped, not rendered into half-removed panes."""
    live = Live()
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        frames = live.app.frames
    live.app.render_tick(live.fake.ticks[-1])  # the panes' tables are gone by now
    assert live.app.frames == frames


# ---- layout ---------------------------------------------------------------------------


async def test_tab_moves_between_panes_and_help() -> None:
    live = Live(concurrency=2)
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot, readings={"postgres": pg_reading(0, waiting=2)})
        assert live.app.query_one(PostgresPane).backends
        seen = set()
        for _ in range(4):
            await pilot.press("tab")
            focused = live.app.focused
            assert focused is not None
            seen.add(focused.id)
        assert {"latency-table", "blockers"} <= seen
        await pilot.press("question_mark")
        assert isinstance(live.app.screen, HelpScreen)
        assert "panic" in live.screen()
        await pilot.press("escape")
        assert not isinstance(live.app.screen, HelpScreen)


async def test_many_ticks_in_one_frame_all_reach_the_timeline() -> None:
    """A slow frame: ticks pile up in the inbox and one render takes them all."""
    live = Live()
    async with live.app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        frames = live.app.frames
        for _ in range(5):
            live.clock.advance(1.0)
            live.fake.tick()
        await pilot.pause()
        assert len(live.app.timeline.points) == 5
        assert live.app.last_tick is live.fake.ticks[-1]
        assert live.app.frames - frames <= 2


# ---- snapshot (fixed timeline, fixed clock) ---------------------------------------------


def _seeded_live() -> tuple[FakeSession, LiveConsole]:
    """The live console over a fake session with a fixed clock; the seeded
    synthetic ticks are pushed by the caller."""
    clock = Clock()
    fake = FakeSession(
        targets={"postgres": "postgresql://app@db:5432/shop", "redis": "redis://cache:6379/0"},
        plan=PLAN,
        wall_clock=clock,
    )
    return fake, make_live_app(fake, clock=clock, wall_clock=clock)


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_live(snap_compare: Any, size: tuple[int, int]) -> None:
    fake, app = _seeded_live()

    async def go(pilot: Pilot[Any]) -> None:
        for t in make_ticks(13):  # into the lock chain, before any critical toast
            fake.push(t)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=go)


async def _trend_cells(size: tuple[int, int]) -> tuple[str, str, int, int]:
    fake, app = _seeded_live()
    async with app.run_test(size=size) as pilot:
        for t in make_ticks(13):
            fake.push(t)
        await pilot.pause()
        await pilot.pause()
        table = app.query_one("#latency-table", DataTable)
        row = table.get_row_at(0)
        p50, p99 = str(row[7]), str(row[8])
        cols = [c.key.value for c in table.columns.values()]
        assert cols[7:9] == ["p50~", "p99~"]
        # the trend columns leave no empty half: the table fills its pane
        used = sum(c.get_render_width(table) for c in table.columns.values())
        # the session chart is drawn at its widget's width
        chart = str(app.query_one("#chart", Static).render()).split("\n")
        return p50, p99, table.scrollable_content_region.width - used, max(map(len, chart))


async def test_trend_sparklines_grow_with_the_pane() -> None:
    p50_120, p99_120, spare_120, chart_120 = await _trend_cells((120, 40))
    p50_200, p99_200, spare_200, chart_200 = await _trend_cells((200, 50))
    assert chart_200 > chart_120
    assert len(p50_200) > len(p50_120) and len(p99_200) > len(p99_120)
    # the 13 ticks are all drawn, newest at the right edge
    assert len(p50_200.strip()) == 13 and p50_200[-1] != " "
    assert 0 <= spare_200 <= 2 and 0 <= spare_120 <= 2


async def test_trend_sparklines_follow_a_resize() -> None:
    fake, app = _seeded_live()
    async with app.run_test(size=(200, 50)) as pilot:
        for t in make_ticks(13):
            fake.push(t)
        await pilot.pause()
        pane = app.query_one(LatencyPane)
        wide = pane.spark_width
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        await pilot.pause()
        assert LatencyPane.SPARK_MIN <= pane.spark_width < wide
        row = app.query_one("#latency-table", DataTable).get_row_at(0)
        assert len(str(row[7])) == pane.spark_width
