"""The recording: JSONL, one header line, one line per tick, one end line.

Each tick line is written and flushed when its tick closes, so a SIGKILL loses
at most the tick in progress. Histograms are stored in HdrHistogram's encoded
form so a report merges them exactly. A recording whose end line is missing
(a killed run) or whose last line is cut off is still read; a corrupted line
in the middle, a file that is not a recording, or one from a future version is
a `RecordingError` with one line that says so.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import stat
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, overload

from app import __version__
from app.session import recording_index
from app.tick import (
    RECORDING_VERSION,
    Anomaly,
    ControlEvent,
    Tick,
    _anomaly_from_json,
    tick_from_json,
    tick_p95_ms,
    tick_to_json,
)


class RecordingError(ValueError):
    pass


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("loadtop", "asyncpg", "redis", "aiohttp", "textual"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def check_output_path(path: str | os.PathLike[str], flag: str = "--record") -> None:
    """Fail at start, in one line, when an output file cannot be written: a
    directory, a missing directory, no permission, a full disk (or /dev/full).
    Leaves an empty file behind when it created one (the writer truncates it)."""
    p = Path(path)
    if p.is_dir():
        raise RecordingError(f"{flag} {p} is a directory: give a file name")
    if not p.parent.exists():
        raise RecordingError(
            f"{flag} {p}: directory {p.parent} does not exist: create it or choose another path"
        )
    try:
        existed = p.exists()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            st = os.fstat(fd)
            if stat.S_ISCHR(st.st_mode) and not os.isatty(fd):
                os.write(fd, b"\n")  # a device: only a write says whether it takes data
            elif stat.S_ISREG(st.st_mode) and not existed:
                vfs = os.statvfs(p.parent)
                if vfs.f_bavail * vfs.f_frsize < 64 * 1024:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            os.close(fd)
    except OSError as e:
        raise RecordingError(
            f"{flag} {p} cannot be written ({e.strerror}): free some space or choose another path"
        ) from None


class Recorder:
    """Appends ticks to a JSONL file. Opened (and so checked) before the load
    starts: an unwritable path is an error at start, not a lost session."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        header: dict[str, Any],
        *,
        scrub: Callable[[str], str] | None = None,
    ) -> None:
        self.path = Path(path)
        # the last line of defence for secrets: masks known values in every line
        self._scrub: Callable[[str], str] = scrub or str
        if self.path.is_dir():
            raise RecordingError(f"--record {self.path} is a directory: give a file name")
        parent = self.path.parent
        if not parent.exists():
            raise RecordingError(
                f"--record {self.path}: directory {parent} does not exist: create it or choose another path"
            )
        try:
            self._f: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise RecordingError(
                f"--record {self.path} cannot be written ({e.strerror}): choose another path"
            ) from None
        line = {
            "type": "header",
            "version": RECORDING_VERSION,
            "loadtop_version": __version__,
            "versions": _versions(),
            **header,
        }
        try:
            text = self._scrub(json.dumps(line, separators=(",", ":"), default=str)) + "\n"
            self._f.write(text)
            self._f.flush()
        except OSError as e:
            # a full disk is found now, at start, not as a lost session at the end
            self.close_quietly()
            raise RecordingError(
                f"--record {self.path} cannot be written ({e.strerror}): free some space or"
                " choose another path"
            ) from None
        self.ticks = 0
        self.error = ""
        self.bytes = len(text.encode("utf-8"))  # written and flushed: a reader may read this far

    def _write(self, obj: dict[str, Any]) -> None:
        assert self._f is not None
        try:
            text = self._scrub(json.dumps(obj, separators=(",", ":"), default=str)) + "\n"
            self._f.write(text)
            self._f.flush()
            self.bytes += len(text.encode("utf-8"))
        except OSError as e:
            # a full disk mid-run: keep the load going, say so, stop writing
            self.error = f"recording stopped: {e.strerror} writing {self.path}"
            self.close_quietly()
            raise RecordingError(self.error) from None

    def write_tick(self, tick: Tick) -> None:
        if self._f is None:
            return
        self._write(tick_to_json(tick))
        self.ticks += 1

    def write_tick_json(self, obj: dict[str, Any]) -> None:
        """`write_tick` for a tick already in its JSON form (`tick_to_json`)."""
        if self._f is None:
            return
        self._write(obj)
        self.ticks += 1

    @property
    def is_file(self) -> bool:
        """The recording goes to a regular file (one that can be read back)."""
        try:
            return stat.S_ISREG(os.stat(self.path).st_mode)
        except OSError:
            return False

    def close(self, end: dict[str, Any]) -> None:
        if self._f is None:
            return
        try:
            self._write({"type": "end", **end})
            try:
                os.fsync(self._f.fileno())
            except OSError:  # a pipe or a device (/dev/stdout) cannot be synced
                pass
        finally:
            self.close_quietly()

    def close_quietly(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None


@dataclass
class Recording:
    """A recording: its header, its ticks and its end line. `ticks` is a list
    for a recording built in memory (tests, tools) and a `TickFile` for one
    read from disk: a sequence that decodes ticks from the file on demand, so
    a day-long recording is never held decoded."""

    header: dict[str, Any]
    ticks: Sequence[Tick] = field(default_factory=list)
    end: dict[str, Any] | None = None
    truncated: bool = False  # the last line was cut off (a killed run)

    @property
    def complete(self) -> bool:
        return self.end is not None


class TickFile(Sequence[Tick]):
    """The ticks of a recording file, by position, decoded on demand.

    Built by `read_recording`, which scans the file once and keeps per tick
    only its byte offset and three floats (elapsed, ops/s, p95), plus the
    control events that change the load and the anomalies that cleared: what
    a replay needs to seek anywhere and chart the whole session without
    decoding it. Iterating streams the file from the start (each pass re-reads
    it); indexing seeks to the line. A few recently decoded ticks are cached.
    """

    CACHE = 8

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets = array("q")  # byte offset of each tick's line
        self.lengths = array("q")
        self.elapsed = array("d")
        self.ops = array("d")  # operations per second, all scenarios
        self.p95 = array("d")  # ms, all scenarios merged; nan: not in the line
        self.changes: list[tuple[int, ControlEvent]] = []
        self.cleared: list[tuple[int, Anomaly]] = []
        self._cache: OrderedDict[int, Tick] = OrderedDict()

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, i: int) -> Tick: ...
    @overload
    def __getitem__(self, i: slice) -> list[Tick]: ...
    def __getitem__(self, i: int | slice) -> Tick | list[Tick]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self.offsets)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("tick index out of range")
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            raw = f.read(self.lengths[i])
        tick = self._decode(raw, i)
        self._cache[i] = tick
        if len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return tick

    def __iter__(self) -> Iterator[Tick]:
        if not self.offsets:
            return
        with open(self.path, "rb") as f:
            for k in range(len(self.offsets)):
                if f.tell() != self.offsets[k]:
                    f.seek(self.offsets[k])
                yield self._decode(f.read(self.lengths[k]), k)

    def _decode(self, raw: bytes, k: int) -> Tick:
        try:
            return tick_from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RecordingError(
                f"{self.path}: tick {k} can no longer be read ({type(e).__name__}): the file"
                " changed after it was opened, or is damaged"
            ) from None

    def p95_at(self, i: int) -> float:
        """p95 (ms) of tick i; decoded from its histograms for a recording
        written before lines carried it."""
        v = self.p95[i]
        if math.isnan(v):
            t = self[i]
            v = self.p95[i] = tick_p95_ms(t) if t.scenarios else 0.0
        return v


def _not_a_recording(p: Path, why: str) -> RecordingError:
    return RecordingError(
        f"{p} is not a loadtop recording ({why}): give a .jsonl file written by --record"
    )


def read_recording(
    path: str | os.PathLike[str], *, limit: int | None = None, index_file: bool = False
) -> Recording:
    """Open a recording: check it and index it in one streaming pass (every
    line parsed, no histogram decoded, nothing kept but the index); its ticks
    are then read from the file on demand (`TickFile`). `limit`: read only the
    first `limit` bytes (a recording still being written). `index_file`: reuse
    the index saved beside the recording when it still matches it, and save
    one after a pass (`recording_index`: what a replay opens with)."""
    p = Path(path)
    if not p.exists():
        raise RecordingError(f"recording {p} does not exist: check the path")
    if p.is_dir():
        raise RecordingError(f"recording {p} is a directory: give a .jsonl file")
    try:
        f = open(p, "rb")  # noqa: SIM115
    except OSError as e:
        raise RecordingError(f"recording {p} cannot be read ({e.strerror})") from None
    with f:
        first = f.readline(limit or -1)
        try:
            first_text = first.decode("utf-8")
        except UnicodeDecodeError:
            raise _not_a_recording(p, "not UTF-8 text") from None
        if not first_text.strip() and not f.read(1 << 16).strip():
            raise RecordingError(
                f"recording {p} is empty: the run ended before its header was written;"
                " there is nothing to report"
            )
        try:
            header = json.loads(first_text)
        except json.JSONDecodeError:
            raise _not_a_recording(p, "its first line is not JSON") from None
        if not isinstance(header, dict) or header.get("type") != "header":
            raise _not_a_recording(p, "no header line")
        version = header.get("version")
        if not isinstance(version, int):
            raise RecordingError(
                f"{p}: the header has no version: not a loadtop recording, or a damaged one;"
                " check the file"
            )
        if version > RECORDING_VERSION:
            raise RecordingError(
                f"{p} was written by a newer loadtop (format {version}, this one reads"
                f" {RECORDING_VERSION}): upgrade loadtop"
            )
        ticks = TickFile(p)
        rec = Recording(header=header, ticks=ticks)
        st = os.fstat(f.fileno())
        cached = index_file and limit is None and stat.S_ISREG(st.st_mode)
        if cached:
            found = recording_index.load(p, first, st, ticks)
            if found is not None:
                rec.end, rec.truncated = found
                return rec
        _index(f, p, rec, ticks, len(first), limit)
        if cached and st.st_size >= recording_index.MIN_BYTES:
            after = os.fstat(f.fileno())
            if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                # not while it is being written: that index would be stale at once
                recording_index.save(p, first, st, ticks, rec.end, rec.truncated)
    return rec


def _index(
    f: IO[bytes], p: Path, rec: Recording, ticks: TickFile, pos: int, limit: int | None
) -> None:
    n = 1
    pending: tuple[int, bytes] | None = None  # a bad line: an error unless it is the last

    def fail(n: int, e: Exception) -> RecordingError:
        return RecordingError(
            f"{p}: line {n} is corrupted ({type(e).__name__}): the recording was edited"
            " or damaged; `loadtop report` reads a recording cut off at the end, not one"
            f" damaged in the middle: restore it, or cut it before line {n} to report"
            " what precedes"
        )

    while True:
        if limit is not None and pos >= limit:
            break
        line = f.readline() if limit is None else f.readline(limit - pos)
        if not line:
            break
        start, pos = pos, pos + len(line)
        n += 1
        if not line.strip():
            continue
        if pending is not None:  # a bad line followed by more: damaged in the middle
            raise fail(*pending)  # type: ignore[arg-type]
        try:
            _index_line(rec, ticks, line, start)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            pending = (n, e)  # type: ignore[assignment]
    if pending is not None:
        # the tick in progress when the run was killed: cut off mid-line
        rec.truncated = True


# control events a chart marks (kept for the whole recording; they are few)
CHANGE_KINDS = ("concurrency", "rate", "pause", "resume", "panic")
# cleared anomalies kept in a recording's index for the replay's feed
MAX_CLEARED = 2000


def _index_line(rec: Recording, ticks: TickFile, line: bytes, start: int) -> str:
    """One line after the header into the index (a tick) or `rec.end`; returns
    its type. A line that is not one of ours raises (ValueError and the like):
    the caller says what that means where it reads."""
    obj = json.loads(line)
    kind = obj.get("type")
    if kind == "tick":
        _index_tick(ticks, obj, start, len(line))
    elif kind == "end":
        rec.end = obj
    else:
        raise ValueError(f"unknown line type {kind!r}")
    return str(kind)


def _index_tick(ticks: TickFile, d: dict[str, Any], start: int, length: int) -> None:
    """One tick line into the index, read from its JSON (no Tick built, no
    histogram touched: the open of a long recording is one JSON pass)."""
    k = len(ticks.offsets)
    interval = float(d["interval"])
    elapsed = float(d["elapsed"])
    int(d["index"])
    events = [
        ControlEvent(
            float(e["t"]),
            e["kind"],
            e["source"],
            e.get("before"),
            e.get("after"),
            e.get("note", ""),
        )  # fmt: skip
        for e in d.get("events", [])
    ]
    done = sum(int(s["ok"]) + int(s["failed"]) for s in d.get("scenarios", []))
    iv = interval if interval > 0 else 1.0
    if any(e.kind == "stop" for e in events):  # the drain (Tick.is_drain)
        iv = max(iv, 1.0)
    p95 = d.get("p95_ms")
    ticks.offsets.append(start)
    ticks.lengths.append(length)
    ticks.elapsed.append(elapsed)
    ticks.ops.append(done / iv)
    ticks.p95.append(float(p95) if isinstance(p95, int | float) else math.nan)
    for e in events:
        if e.kind in CHANGE_KINDS:
            ticks.changes.append((k, e))
    for a in d.get("cleared", []):
        ticks.cleared.append((k, _anomaly_from_json(a)))
    if len(ticks.cleared) > 2 * MAX_CLEARED:
        del ticks.cleared[:MAX_CLEARED]


class RecordingTail:
    """A recording still being written, followed as it grows (`replay --follow`).

    `open()` waits for the header; `poll()` indexes the complete lines written
    since the last poll into the same `TickFile` a replay reads, and returns how
    many ticks were added. A line without its newline yet (the writer is
    mid-line, or was killed mid-line) is left for the next poll; the end
    record, when it arrives, sets `recording.end`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.recording: Recording | None = None
        self._pos = 0
        self._line = 1  # lines read, for messages

    @property
    def ended(self) -> bool:
        return self.recording is not None and self.recording.end is not None

    def open(self) -> Recording | None:
        """The recording once its header line is complete; None until then.
        Raises RecordingError for a file that is not a recording."""
        if self.recording is not None:
            return self.recording
        try:
            with open(self.path, "rb") as f:
                first = f.readline()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RecordingError(f"recording {self.path} cannot be read ({e.strerror})") from None
        if not first.endswith(b"\n"):
            return None  # not written yet, or mid-line
        rec = read_recording(self.path, limit=len(first))
        self.recording = rec
        self._pos = len(first)
        return rec

    def poll(self) -> int:
        """Index the complete lines written since the last poll; the number of
        ticks added."""
        rec = self.recording if self.recording is not None else self.open()
        if rec is None or rec.end is not None:
            return 0
        ticks = rec.ticks
        assert isinstance(ticks, TickFile)
        before = len(ticks)
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except OSError:
            return 0  # removed at the end of a run: what was read stays
        with f:
            f.seek(self._pos)
            while True:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break  # nothing more, or a line the writer has not finished
                start = self._pos
                self._pos += len(line)
                self._line += 1
                if not line.strip():
                    continue
                try:
                    if _index_line(rec, ticks, line, start) == "end":
                        break
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    raise RecordingError(
                        f"{self.path}: line {self._line} is corrupted ({type(e).__name__}):"
                        " the recording being followed is not a loadtop recording being written"
                    ) from None
        return len(ticks) - before
