"""A replay's seek index, kept beside the recording (`F.jsonl.idx`).

Opening a recording for replay indexes it in one pass over every line (one
JSON parse per tick: about a second per 200 MB here, several on a loaded
host). The index is small (five numbers per tick, the load changes, the
cleared anomalies the feed shows), so `loadtop replay` saves it next to the
recording and the next open reads it instead of the recording.

An index is a cache, never a source of truth: it is used only when it matches
the recording it was built from (size, modification time in ns, a SHA-256 of
the header line, this format's version) and its own checksum holds, and a few
of the lines it points to are read back and checked. Anything else (a
recording appended to or rewritten, an index cut off, edited, from another
loadtop or another machine's byte order) and it is rebuilt without a word.
Where it cannot be written (a read-only directory, a full disk), the index
stays in memory for this open, as before.

File layout: one JSON line (the meta: what it was built from, the array
lengths, the payload's length and CRC-32), then the payload: the per-tick
arrays as raw machine values, then one JSON document (load changes, cleared
anomalies, the end line, whether the last line was cut off).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import zlib
from array import array
from pathlib import Path
from typing import Any, Protocol

from app.tick import Anomaly, ControlEvent, _anomaly_from_json, _anomaly_to_json


class TickFile(Protocol):
    """What the index reads from and fills in: app.session.recording.TickFile
    (the ARRAYS below are its attributes too). A protocol, so the index does
    not import the module that imports it."""

    offsets: Any
    changes: list[tuple[int, ControlEvent]]
    cleared: list[tuple[int, Anomaly]]


FORMAT = "loadtop-seek-index"
# Bump when the index's content or meaning changes (what `_index_tick` keeps,
# CHANGE_KINDS, MAX_CLEARED, the ops/s rule): an index of another version is
# rebuilt.
VERSION = 1
SUFFIX = ".idx"
# Recordings smaller than this index in a few tens of ms: no file for them.
MIN_BYTES = 4 << 20
# (TickFile attribute, array typecode), in payload order
ARRAYS = (("offsets", "q"), ("lengths", "q"), ("elapsed", "d"), ("ops", "d"), ("p95", "d"))
MAX_META = 4096  # bytes: a first line longer than this is not ours


def index_path(recording: Path) -> Path:
    return recording.with_name(recording.name + SUFFIX)


def _source(header_line: bytes, st: os.stat_result) -> dict[str, Any]:
    """What an index was built from: it is valid for this recording only."""
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "header_sha256": hashlib.sha256(header_line).hexdigest(),
    }


def _event_to_json(e: ControlEvent) -> dict[str, Any]:
    return {"t": e.t, "kind": e.kind, "source": e.source, "before": e.before,
            "after": e.after, "note": e.note}  # fmt: skip


def save(
    recording: Path,
    header_line: bytes,
    st: os.stat_result,
    ticks: TickFile,
    end: dict[str, Any] | None,
    truncated: bool,
) -> bool:
    """Write the index of `recording` (as `st` describes it) beside it, by an
    atomic rename. False, and nothing left behind, where it cannot be written."""
    arrays = [getattr(ticks, name) for name, _ in ARRAYS]
    n = len(ticks.offsets)
    if any(len(a) != n for a in arrays):
        return False
    rest = json.dumps(
        {
            "changes": [[k, _event_to_json(e)] for k, e in ticks.changes],
            "cleared": [[k, _anomaly_to_json(a)] for k, a in ticks.cleared],
            "end": end,
            "truncated": truncated,
        },
        separators=(",", ":"),
        default=str,
    ).encode("utf-8")
    payload = b"".join(
        array(code, a).tobytes() for a, (_, code) in zip(arrays, ARRAYS, strict=True)
    )
    payload += rest
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "source": _source(header_line, st),
        "ticks": n,
        "byteorder": sys.byteorder,
        "arrays": [[name, code, array(code).itemsize] for name, code in ARRAYS],
        "payload_bytes": len(payload),
        "payload_crc32": zlib.crc32(payload),
    }
    target = index_path(recording)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        return False  # a read-only directory, no permission: in memory only
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(meta, separators=(",", ":")).encode("utf-8") + b"\n")
            f.write(payload)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True


def load(recording: Path, header_line: bytes, st: os.stat_result, into: TickFile) -> (
    tuple[dict[str, Any] | None, bool] | None
):  # fmt: skip
    """Fill `into` from the index beside `recording` and return (end line,
    truncated); None (and `into` untouched) when there is no index or it
    does not match the recording exactly."""
    try:
        with open(index_path(recording), "rb") as f:
            first = f.readline(MAX_META)
            data = f.read()
    except OSError:
        return None
    try:
        return _load(recording, header_line, st, first, data, into)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
        return None  # damaged or not an index: rebuilt


def _load(
    recording: Path,
    header_line: bytes,
    st: os.stat_result,
    first: bytes,
    data: bytes,
    into: TickFile,
) -> tuple[dict[str, Any] | None, bool] | None:
    meta = json.loads(first)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if meta.get("version") != VERSION or meta.get("byteorder") != sys.byteorder:
        return None
    if meta.get("source") != _source(header_line, st):
        return None  # stale: the recording changed (or is another one)
    if meta.get("arrays") != [[name, code, array(code).itemsize] for name, code in ARRAYS]:
        return None
    if len(data) != meta["payload_bytes"] or zlib.crc32(data) != meta["payload_crc32"]:
        return None  # cut off or edited
    n = int(meta["ticks"])
    loaded: dict[str, array[Any]] = {}
    pos = 0
    for name, code in ARRAYS:
        a = array(code)
        size = n * a.itemsize
        a.frombytes(data[pos : pos + size])
        if len(a) != n:
            return None
        loaded[name] = a
        pos += size
    rest = json.loads(data[pos:])
    changes = [(int(k), ControlEvent(**e)) for k, e in rest["changes"]]
    cleared: list[tuple[int, Anomaly]] = [
        (int(k), _anomaly_from_json(a)) for k, a in rest["cleared"]
    ]
    end = rest["end"]
    truncated = bool(rest["truncated"])
    if end is not None and not isinstance(end, dict):
        return None
    if not _spot_check(recording, st, loaded, n):
        return None
    for name, _ in ARRAYS:
        setattr(into, name, loaded[name])
    into.changes = changes
    into.cleared = cleared
    return end, truncated


def _spot_check(recording: Path, st: os.stat_result, a: dict[str, array[Any]], n: int) -> bool:
    """The offsets make sense and the first, middle and last ticks they point
    to are tick lines with the indexed elapsed time (a wrong index is never
    trusted, even with a matching checksum)."""
    offsets, lengths = a["offsets"], a["lengths"]
    if n == 0:
        return True
    if offsets[-1] + lengths[-1] > st.st_size or offsets[0] <= 0:
        return False
    if any(offsets[k + 1] < offsets[k] + lengths[k] for k in range(n - 1)):
        return False
    with open(recording, "rb") as f:
        for k in sorted({0, n // 2, n - 1}):
            f.seek(offsets[k] - 1)
            raw = f.read(lengths[k] + 1)
            if not raw.startswith(b"\n"):
                return False
            obj = json.loads(raw)
            if obj.get("type") != "tick" or float(obj["elapsed"]) != a["elapsed"][k]:
                return False
    return True
