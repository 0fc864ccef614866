"""The replay console: the shared `Console` over a recording.

The recording's ticks go through the same panes, timeline and feed as live
ones; this subclass only owns a position in the recording (`ReplayCursor`,
an index over a recording streamed from disk, so a long one is never held
whole) and the keys that move it: space plays / pauses, ← → step, home /
end, g seeks to a time.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textual.binding import Binding

from app import fmt
from app.session.recording import Recording, TickFile
from app.session.retention import TRIM_EVERY, release_free_memory
from app.tick import Anomaly, ControlEvent
from app.ui.console import Clock, Console
from app.ui.screens import REPLAY_KEYS, SeekScreen
from app.ui.timeline import (
    CHANGE_KINDS,
    MAX_CHANGES,
    Overview,
    Point,
    point_of,
)


class ReplayCursor:
    """Position in a recording, and what a seek needs, in bounded memory.

    A recording read from disk (`TickFile`) is indexed once when opened:
    byte offset, elapsed, ops/s and p95 per tick, the load changes and the
    cleared anomalies. A seek decodes only the target tick and the few
    before it that the sparklines show; their points are cached (LRU). A
    recording built in memory (a list of ticks) gets the same index, computed
    from the list.

    What a seek costs is bounded by `WINDOW` ticks decoded (their histograms
    decoded, their percentiles computed), whatever the recording's length and
    wherever the seek lands: there is no merged state to rebuild, since the
    charts read the index. (A smaller point cache, tried to spare the garbage
    collector, decoded more on seeks back and kept RSS ~25 MB higher between
    malloc trims; the collector is spared by the console's frozen start-up
    heap and capped table caches instead.)"""

    WINDOW = 40  # full points rebuilt on a seek at most: the sparklines show fewer
    POINT_CACHE = 4096  # ~6 MB: a hundred seek windows stay decoded

    def __init__(self, rec: Recording) -> None:
        self.rec = rec
        self.ticks = rec.ticks
        self.pos = 0
        self.playing = False
        self.seeks = 0
        self._points: OrderedDict[int, Point] = OrderedDict()
        if isinstance(rec.ticks, TickFile):
            self.file: TickFile | None = rec.ticks
            self.elapsed: Sequence[float] = rec.ticks.elapsed
            self.ops: Sequence[float] = rec.ticks.ops
            self.changes = rec.ticks.changes
            self.cleared = rec.ticks.cleared
        else:
            self.file = None
            pts = [point_of(t) for t in rec.ticks]
            self.elapsed = [p.elapsed for p in pts]
            self.ops = [p.ops for p in pts]
            self._p95 = [p.p95 for p in pts]
            self.changes = [
                (k, e) for k, t in enumerate(rec.ticks) for e in t.events if e.kind in CHANGE_KINDS
            ]
            self.cleared = [(k, a) for k, t in enumerate(rec.ticks) for a in t.cleared]

    def __len__(self) -> int:
        return len(self.ticks)

    def p95(self, k: int) -> float:
        return self.file.p95_at(k) if self.file is not None else self._p95[k]

    def point(self, i: int) -> Point:
        p = self._points.get(i)
        if p is None:
            tick = self.ticks[i]
            p = self._points[i] = point_of(tick, self.p95(i))
            if len(self._points) > self.POINT_CACHE:
                self._points.popitem(last=False)
        else:
            self._points.move_to_end(i)
        return p

    def points_to(self, i: int) -> list[Point]:
        """Full points of the ticks up to i that the panes show (the newest)."""
        return [self.point(k) for k in range(max(0, i + 1 - self.WINDOW), i + 1)]

    def overview_to(self, i: int) -> Overview:
        ov = Overview()
        n = i + 1
        stride = 1
        while n > ov.cap * stride:
            stride *= 2
        ks = range(0, n, stride)
        ov.stride, ov.n = stride, n
        ov.xs = [self.elapsed[k] for k in ks]
        ov.ops = [self.ops[k] for k in ks]
        ov.p95 = [self.p95(k) for k in ks]
        return ov

    def changes_to(self, i: int) -> list[tuple[float, ControlEvent]]:
        out = [(self.elapsed[k], e) for k, e in self.changes if k <= i]
        return out[-MAX_CHANGES:]

    def cleared_to(self, i: int) -> list[Anomaly]:
        return [a for k, a in self.cleared if k <= i]

    def seek_elapsed(self, seconds: float) -> int:
        i = bisect.bisect_left(self.elapsed, seconds - 1e-6)
        return min(i, len(self.ticks) - 1)


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
        self._frozen = False  # gc.freeze() in effect (see started)

    # ---- the Console hooks ----------------------------------------------------------
    def header_facts(self) -> tuple[dict[str, str], list[int]]:
        h = self.replay.rec.header
        return dict(h.get("targets") or {}), list((h.get("load") or {}).get("plan") or [])

    def started(self) -> None:
        # (every table's render caches are capped by Console on mount: long
        # seeks through a recording do not pile up stale entries either)
        if self.replay.ticks:
            self.seek(0)
        if self.autoplay:
            self.toggle_play()
        self._replay_status()
        # Everything built so far (Textual's DOM, styles and caches: ~100k
        # objects) lives as long as the console: out of the collector's
        # reach, a full collection walks only what came later, and a seek
        # that sets one off no longer pays ~0.2 s for the whole heap. Undone
        # on exit. Collected first, so no garbage is kept (frozen without it,
        # start-up's garbage held 12 MB more); what is frozen is fixed now.
        gc.collect()
        gc.freeze()
        self._frozen = True

    def on_unmount(self) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

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
        rp.seeks += 1
        if rp.seeks % TRIM_EVERY == 0:
            release_free_memory()
        tick = rp.ticks[i]
        fresh = []
        if forward_one:  # as live: one more point on the timeline, one more tick in the feed
            self.timeline.push(rp.point(i))
            fresh = self.feed.ingest(tick)
        else:  # the timeline and the feed as they stood at tick i, from the cursor's index
            self.timeline.set_state(
                rp.points_to(i), rp.overview_to(i), rp.changes_to(i), total=i + 1
            )
            self.feed.reset()
            self.feed.restore(rp.cleared_to(i), tick.anomalies)
            for pane in (self.pg, self.redis, self.pods, self.feed):
                pane.reveal(False)  # shown again by render_tick if data is there
        self.render_tick(tick)
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
        end = fmt.clock(rp.elapsed[-1]) if n else "00:00"
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
