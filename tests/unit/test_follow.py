"""`loadtop replay --follow`: a recording followed while it is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.session.recording import Recorder, RecordingError, RecordingTail
from app.tick import ScenarioWindow, Tick, new_histogram, tick_to_json


def make_tick(i: int, ops: int = 10) -> Tick:
    h = new_histogram()
    for v in range(ops):
        h.record_value(1000 + 10 * v + i)
    w = ScenarioWindow(name="s", concurrency=2, target=2, started=ops, ok=ops, failed=0,
                       errors={}, hist=h)  # fmt: skip
    return Tick(index=i, t=1_700_000_000.0 + i + 1, elapsed=i + 1.0, interval=1.0,
                mode="workers", target_concurrency=2, concurrency=2, scenarios=(w,))  # fmt: skip


HEADER = {"run_id": "f1", "started": 1_700_000_000.0, "scenarios": [{"name": "s"}],
          "targets": {"postgres": "postgresql://x@h/db"}}  # fmt: skip


def test_tail_reads_complete_lines_only_and_sees_the_end(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    tail = RecordingTail(path)
    assert tail.open() is None and tail.poll() == 0  # not there yet
    path.write_text('{"type":"header","ver')  # the header, half written
    assert tail.open() is None
    rec = Recorder(path, HEADER)
    rec.write_tick(make_tick(0))
    assert tail.poll() == 1 and tail.recording is not None
    assert tail.recording.ticks[0].index == 0
    line = json.dumps(tick_to_json(make_tick(1)), separators=(",", ":"))
    with open(path, "a") as f:  # a writer mid-line: nothing new yet
        f.write(line[:50])
    assert tail.poll() == 0
    with open(path, "a") as f:
        f.write(line[50:] + "\n")
    assert tail.poll() == 1
    assert [t.index for t in tail.recording.ticks] == [0, 1]
    assert tail.recording.ticks[1].scenarios[0].ok == 10
    assert not tail.ended
    with open(path, "a") as f:
        f.write(json.dumps({"type": "end", "reason": "duration", "exit_code": 0}) + "\n")
    assert tail.poll() == 0 and tail.ended
    assert tail.recording.end["reason"] == "duration"


def test_tail_refuses_a_file_that_is_not_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("hello\n")
    with pytest.raises(RecordingError, match="not a loadtop recording"):
        RecordingTail(path).open()
    path.write_text(json.dumps({"type": "header", "version": 1}) + "\nnot json\n")
    tail = RecordingTail(path)
    with pytest.raises(RecordingError, match="line 2 is corrupted"):
        tail.poll()


async def test_follow_console_shows_each_tick_within_a_tick(tmp_path: Path) -> None:
    """A writer appends a tick every 0.4 s (the recording's interval) while a
    Pilot-driven follow console runs: each one is on screen before the next
    is written; looking back holds the position, `end` returns to live; the
    load keys do nothing; the end record shows "ended"."""
    import asyncio

    from app.ui.follow import FollowConsole
    from app.ui.textshot import screen_text

    interval = 0.4
    path = tmp_path / "live.jsonl"
    writer = Recorder(path, {**HEADER, "load": {"interval_s": interval}})
    for i in range(3):
        writer.write_tick(make_tick(i))
    tail = RecordingTail(path)
    tail.poll()
    app = FollowConsole(tail, poll_s=0.1)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        rp = app.replay
        assert app.live and rp.pos == 2 and app.last_tick.index == 2  # the live end
        assert "FOLLOW" in screen_text(app) and "live" in screen_text(app)
        lags = []
        for i in range(3, 9):
            writer.write_tick(make_tick(i, ops=10 + i))
            t0 = asyncio.get_running_loop().time()
            while app.last_tick.index != i:
                assert asyncio.get_running_loop().time() - t0 < interval, f"tick {i} not shown"
                await asyncio.sleep(0.02)
            lags.append(asyncio.get_running_loop().time() - t0)
            await asyncio.sleep(max(interval - lags[-1], 0))
        assert "tick 9/9" in screen_text(app)
        # a half-written line is not a tick (nor an error)
        line = json.dumps(tick_to_json(make_tick(9)), separators=(",", ":"))
        f = writer._f  # the writer's own file: what it has flushed so far
        assert f is not None
        f.write(line[:40])
        f.flush()
        await asyncio.sleep(0.3)
        assert len(rp.ticks) == 9 and not app.error
        f.write(line[40:] + "\n")
        f.flush()
        await asyncio.sleep(0.3)
        assert app.last_tick.index == 9
        # look back: the position holds while ticks arrive
        await pilot.press("left", "left")
        assert not app.live and rp.pos == 7
        writer.write_tick(make_tick(10))
        await asyncio.sleep(0.3)
        assert len(rp.ticks) == 11 and rp.pos == 7 and "held" in screen_text(app)
        # no load keys: pause, workers, panic, plan do nothing and raise nothing
        await pilot.press("p", "plus", "minus", "x", "s")
        assert rp.pos == 7
        await pilot.press("end")
        assert app.live and rp.pos == 10 and app.last_tick.index == 10
        writer.close({"reason": "duration", "exit_code": 0})
        await asyncio.sleep(0.3)
        assert tail.ended and "ended: duration" in screen_text(app)
        await pilot.press("q")
    assert max(lags) < interval


def test_follow_of_a_path_that_cannot_exist_is_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "app.cli", "replay", "--follow",
                        str(tmp_path / "no-dir" / "x.jsonl")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2 and "does not exist" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
