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
