"""`loadtop replay --follow F.jsonl`: the replay console over a recording
that is still being written.

It starts at the live end and shows each tick as the writer flushes it
(polled a few times per tick). ← / home / g look back while the run goes on;
`end` (or space) returns to live. A follow console is read-only: it has no
load keys, and no export (it may run for a browser on the operator's
machine: `loadtop report F.jsonl` writes the report). When the end record
arrives the header says the run ended.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from textual.binding import Binding

from app import fmt
from app.session.recording import RecordingError, RecordingTail
from app.ui.console import Clock
from app.ui.replay import ReplayConsole

FOLLOW_KEYS = [
    ("end", "back to live (the newest tick, following)"),
    ("space", "hold here / back to live"),
    ("← / →", "one tick back / forward (stops following)"),
    ("home", "the first tick"),
    ("g", "seek to a time (seconds, or m:ss)"),
    ("tab", "move between panes"),
    ("?", "this help"),
    ("q", "quit (the run goes on)"),
]

POLL_S = 0.2  # how often the file is checked for new ticks


class FollowConsole(ReplayConsole):
    BINDINGS = [
        Binding("end", "live", "live", key_display="end", priority=True),
        Binding("space", "play", "hold/live", key_display="space", priority=True),
        Binding("left", "seek_step(-1)", "back", key_display="←", priority=True),
        Binding("right", "seek_step(1)", "fwd", key_display="→", priority=True),
        Binding("home", "seek_to(0)", "start", show=False, priority=True),
        Binding("g", "seek", "seek"),
        Binding("e", "export", "export", show=False),
    ]
    HELP_TITLE = "loadtop follow keys (read-only)"
    HELP_KEYS = FOLLOW_KEYS

    def __init__(
        self,
        tail: RecordingTail,
        *,
        clock: Clock = time.monotonic,
        viewers_file: str | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        assert tail.recording is not None, "open the tail first"
        super().__init__(tail.recording, clock=clock, autoplay=False)
        self.tail = tail
        self.live = True
        self.viewers_file = viewers_file
        self.poll_s = poll_s
        self.error = ""
        self._poll_timer: Any = None

    # ---- the Console hooks --------------------------------------------------------
    def started(self) -> None:
        if self.replay.ticks:
            self.seek(len(self.replay.ticks) - 1)
        self._poll_timer = self.set_interval(self.poll_s, self.poll)
        self._replay_status()

    def write_report(self) -> str:  # never called: export is off (action_export)
        raise OSError("export is off in a follow view")

    # ---- following ------------------------------------------------------------------
    def poll(self) -> int:
        """Read what the writer flushed since the last poll; when live, show it."""
        try:
            added = self.tail.poll()
        except RecordingError as e:
            self.error = str(e)
            added = 0
            self._stop_polling()
        rp = self.replay
        if added and self.live:
            for i in range(rp.pos + 1, len(rp.ticks)):
                self.seek(i)  # one tick forward at a time: the live path
        if self.tail.ended:
            self._stop_polling()
        self._replay_status()
        return added

    def _stop_polling(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None

    def go_live(self) -> None:
        self.live = True
        rp = self.replay
        if rp.ticks and rp.pos != len(rp.ticks) - 1:
            self.seek(len(rp.ticks) - 1)
        self._replay_status()

    def viewers(self) -> int | None:
        if not self.viewers_file:
            return None
        try:
            return int(Path(self.viewers_file).read_text().strip() or 0)
        except (OSError, ValueError):
            return None

    def _replay_status(self) -> None:
        rp = self.replay
        n = len(rp.ticks)
        at = fmt.clock(rp.elapsed[rp.pos]) if n else "00:00"
        if not n:
            state = "● waiting for the first tick"
        elif self.live:
            state = f"● live  tick {rp.pos + 1}/{n}  {at}"
        else:
            state = f"❚❚ held at tick {rp.pos + 1}/{n}  {at}  (end: back to live)"
        status = f"FOLLOW {state}"
        if self.tail.ended:
            end = rp.rec.end or {}
            status += f"  ■ ended: {end.get('reason', '?')}"
        if self.error:
            status += f"  ({self.error})"
        viewers = self.viewers()
        if viewers is not None:
            status += f"  · {viewers} watching"
        self.set_status(status)

    # ---- keys (read-only) -------------------------------------------------------------
    def toggle_play(self) -> None:
        if self.live:
            self.live = False
            self._replay_status()
        else:
            self.go_live()

    def action_live(self) -> None:
        self.go_live()

    def action_seek_step(self, delta: int) -> None:
        self.live = False
        super().action_seek_step(delta)

    def action_seek_to(self, where: int) -> None:
        self.live = False
        super().action_seek_to(where)

    def action_seek(self) -> None:
        self.live = False
        super().action_seek()

    def action_export(self) -> None:
        self.notify(
            "export is off in a follow view: `loadtop report` over the recording writes it",
            title="read-only",
            timeout=6,
        )


def wait_for_header(tail: RecordingTail, timeout: float, say: Any = None) -> bool:
    """Wait until the recording's header is written (a viewer may connect
    before the run has started). False on timeout."""
    deadline = time.monotonic() + timeout
    told = False
    while tail.open() is None:
        if time.monotonic() >= deadline:
            return False
        if not told and say is not None:
            say(f"waiting for {tail.path} to be written…")
            told = True
        time.sleep(0.1)
    return True


def run_follow(path: str, *, viewers_file: str | None = None, wait_s: float = 120.0) -> int:
    """`loadtop replay --follow F.jsonl`."""

    def say(msg: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"loadtop: {msg}", file=sys.stderr, flush=True)

    tail = RecordingTail(path)
    if not wait_for_header(tail, wait_s, say):
        say(f"{path}: no recording appeared within {wait_s:.0f} s: check the path")
        return 2
    tail.poll()
    return int(FollowConsole(tail, viewers_file=viewers_file).run() or 0)
