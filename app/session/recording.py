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
import os
import platform
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from app import __version__
from app.tick import RECORDING_VERSION, Tick, tick_from_json, tick_to_json


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
            self._f.write(self._scrub(json.dumps(line, separators=(",", ":"), default=str)) + "\n")
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

    def _write(self, obj: dict[str, Any]) -> None:
        assert self._f is not None
        try:
            self._f.write(self._scrub(json.dumps(obj, separators=(",", ":"), default=str)) + "\n")
            self._f.flush()
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
    header: dict[str, Any]
    ticks: list[Tick] = field(default_factory=list)
    end: dict[str, Any] | None = None
    truncated: bool = False  # the last line was cut off (a killed run)

    @property
    def complete(self) -> bool:
        return self.end is not None


def read_recording(path: str | os.PathLike[str]) -> Recording:
    p = Path(path)
    if not p.exists():
        raise RecordingError(f"recording {p} does not exist: check the path")
    if p.is_dir():
        raise RecordingError(f"recording {p} is a directory: give a .jsonl file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecordingError(
            f"{p} is not a loadtop recording (not UTF-8 text): give a .jsonl file written by --record"
        ) from None
    except OSError as e:
        raise RecordingError(f"recording {p} cannot be read ({e.strerror})") from None
    lines = text.split("\n")
    if not text.strip():
        raise RecordingError(
            f"recording {p} is empty: the run ended before its header was written;"
            " there is nothing to report"
        )
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise RecordingError(
            f"{p} is not a loadtop recording (its first line is not JSON): give a .jsonl file written by --record"
        ) from None
    if not isinstance(header, dict) or header.get("type") != "header":
        raise RecordingError(
            f"{p} is not a loadtop recording (no header line): give a .jsonl file written by --record"
        )
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
    rec = Recording(header=header)
    last = len(lines) - 1
    while last > 0 and not lines[last].strip():
        last -= 1
    for n, line in enumerate(lines[1 : last + 1], start=2):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            kind = obj.get("type")
            if kind == "tick":
                rec.ticks.append(tick_from_json(obj))
            elif kind == "end":
                rec.end = obj
            else:
                raise ValueError(f"unknown line type {kind!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            if n == last + 1:
                # the tick in progress when the run was killed: cut off mid-line
                rec.truncated = True
                break
            raise RecordingError(
                f"{p}: line {n} is corrupted ({type(e).__name__}): the recording was edited"
                " or damaged; `loadtop report` reads a recording cut off at the end, not one"
                f" damaged in the middle: restore it, or cut it before line {n} to report"
                " what precedes"
            ) from None
    return rec
