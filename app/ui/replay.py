"""The replay console: the shared `Console` over a recording.

The recording's ticks go through the same panes, timeline and feed as live
ones; this subclass only owns a position in the recording (`ReplayCursor`)
and the keys that move it: space plays / pauses, ← → step, home / end, g
seeks to a time.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from textual.binding import Binding

from app.session.recording import Recording
from app.ui.console import Clock, Console
from app.ui.screens import REPLAY_KEYS, SeekScreen
from app.ui.timeline import Point, fmt_elapsed, point_of


class ReplayCursor:
    """Position in a recording, and its points computed once, lazily."""

    def __init__(self, rec: Recording) -> None:
        self.rec = rec
        self.ticks = rec.ticks
        self.pos = 0
        self.playing = False
        self._points: list[Point] = []

    def points_to(self, i: int) -> list[Point]:
        while len(self._points) <= i:
            self._points.append(point_of(self.ticks[len(self._points)]))
        return self._points[: i + 1]

    def seek_elapsed(self, seconds: float) -> int:
        for i, t in enumerate(self.ticks):
            if t.elapsed >= seconds - 1e-6:
                return i
        return len(self.ticks) - 1


class ReplayConsole(Console):
    BINDINGS = [
        Binding("space", "play", "play/pause", key_display="space", priority=True),
        Binding("left", "seek_step(-1)", "back", key_display="←", priority=True),
        Binding("right", "seek_step(1)", "fwd", key_display="→", priority=True),
        Binding("home", "seek_to(0)", "start", show=False, priority=True),
        Binding("end", "seek_to(-1)", "end", show=False, priority=True),
        Binding("g", "seek", "seek"),
        *Console.SHARED_BINDINGS,
    ]
    HELP_TITLE = "loadtop replay keys"
    HELP_KEYS = REPLAY_KEYS
    LIVE = False

    def __init__(
        self,
        recording: Recording,
        *,
        clock: Clock = time.monotonic,
        autoplay: bool = True,
        export_dir: str | None = None,
    ) -> None:
        super().__init__(clock=clock, export_dir=export_dir)
        self.replay = ReplayCursor(recording)
        self.autoplay = autoplay
        self._play_timer: Any = None

    # ---- the Console hooks ----------------------------------------------------------
    def header_facts(self) -> tuple[dict[str, str], list[int]]:
        h = self.replay.rec.header
        return dict(h.get("targets") or {}), list((h.get("load") or {}).get("plan") or [])

    def started(self) -> None:
        if self.replay.ticks:
            self.seek(0)
        if self.autoplay:
            self.toggle_play()
        self._replay_status()

    def write_report(self) -> str:
        from app.session.export import write_report

        run = self.replay.rec.header.get("run_id", "replay")
        base = Path(self.export_dir or ".")
        return write_report(self.replay.rec, str(base / f"loadtop-{run}-replay.md"))

    # ---- moving through the recording ----------------------------------------------
    def seek(self, i: int) -> None:
        rp = self.replay
        if not rp.ticks:
            return
        i = max(0, min(len(rp.ticks) - 1, i))
        forward_one = i == rp.pos + 1
        rp.pos = i
        if forward_one:  # the live path: one more tick on the timeline and the feed
            fresh = self.take([rp.ticks[i]])
        else:  # rebuilt from the cursor's points, the feed from the ticks up to i
            self.timeline.points = deque(rp.points_to(i), maxlen=self.timeline.points.maxlen)
            self.feed.reset()
            for t in rp.ticks[: i + 1]:
                self.feed.ingest(t)
            for pane in (self.pg, self.redis, self.pods, self.feed):
                pane.reveal(False)  # shown again by render_tick if data is there
            self.render_tick(rp.ticks[i])
            fresh = []
        self._replay_status()
        if forward_one and rp.playing:
            self.toast(fresh)

    def toggle_play(self) -> None:
        rp = self.replay
        rp.playing = not rp.playing
        if rp.playing:
            if rp.pos >= len(rp.ticks) - 1:
                self.seek(0)
            interval = float((rp.rec.header.get("load") or {}).get("interval_s") or 1.0)
            self._play_timer = self.set_interval(interval, self._play_next)
        elif self._play_timer is not None:
            self._play_timer.stop()
            self._play_timer = None
        self._replay_status()

    def _play_next(self) -> None:
        rp = self.replay
        if rp.pos >= len(rp.ticks) - 1:
            self.toggle_play()
            return
        self.seek(rp.pos + 1)

    def _replay_status(self) -> None:
        rp = self.replay
        n = len(rp.ticks)
        end = fmt_elapsed(rp.ticks[-1].elapsed) if rp.ticks else "00:00"
        state = "▶ playing" if rp.playing else "❚❚ paused"
        status = f"REPLAY {state}  tick {rp.pos + 1 if n else 0}/{n}  of {end}"
        if not rp.rec.complete:
            status += "  (recording cut off)"
        self.set_status(status)

    # ---- keys ------------------------------------------------------------------
    def action_play(self) -> None:
        self.toggle_play()

    def action_seek_step(self, delta: int) -> None:
        if self.replay.playing:
            self.toggle_play()
        self.seek(self.replay.pos + delta)

    def action_seek_to(self, where: int) -> None:
        self.seek(len(self.replay.ticks) - 1 if where < 0 else where)

    def action_seek(self) -> None:
        rp = self.replay

        def done(seconds: float | None) -> None:
            if seconds is not None:
                self.seek(rp.seek_elapsed(seconds))

        self.push_screen(SeekScreen(), done)
