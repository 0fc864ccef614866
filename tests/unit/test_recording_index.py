"""The seek index a replay saves beside a recording (`F.jsonl.idx`): used only
while it matches the recording, rebuilt silently when stale or damaged, and
never needed (in memory) where it cannot be written."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from app.session import recording as recording_mod
from app.session import recording_index
from app.session.recording import Recorder, Recording, TickFile, read_recording
from app.tick import tick_to_json
from tests.unit.ticks import make_ticks

ARRAYS = ("offsets", "lengths", "elapsed", "ops", "p95")


@pytest.fixture(autouse=True)
def _index_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # the test recordings are a few KB; the threshold is for real ones
    monkeypatch.setattr(recording_index, "MIN_BYTES", 0)


def write(path: Path, n: int = 20, *, end: bool = True) -> Path:
    rec = Recorder(path, {"run_id": "idx", "targets": {}})
    for t in make_ticks(n):
        rec.write_tick(t)
    if end:
        rec.close({"reason": "test", "exit_code": 0})
    else:
        rec.close_quietly()
    return path


def same_as_scan(rec: Recording, path: Path) -> None:
    """`rec` (opened through the index) reads exactly as a fresh scan does."""
    fresh = read_recording(path)
    a, b = rec.ticks, fresh.ticks
    assert isinstance(a, TickFile) and isinstance(b, TickFile)
    for name in ARRAYS:
        assert list(getattr(a, name)) == list(getattr(b, name)), name
    assert a.changes == b.changes
    assert a.cleared == b.cleared
    assert (rec.end, rec.truncated) == (fresh.end, fresh.truncated)
    assert [tick_to_json(t) for t in a] == [tick_to_json(t) for t in b]


def no_rescan(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: Any, **k: Any) -> None:
        raise AssertionError("the recording was scanned: the index was not used")

    monkeypatch.setattr(recording_mod, "_index", fail)


def rescans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = recording_mod._index

    def counting(*a: Any, **k: Any) -> None:
        calls.append(1)
        real(*a, **k)

    monkeypatch.setattr(recording_mod, "_index", counting)
    return calls


def test_index_is_saved_then_used_and_reads_like_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "r.jsonl")
    first = read_recording(path, index_file=True)
    idx = tmp_path / "r.jsonl.idx"
    assert idx.is_file()
    assert first.ticks.changes and first.ticks.cleared  # the test covers both lists
    same_as_scan(first, path)
    with monkeypatch.context() as m:
        no_rescan(m)
        second = read_recording(path, index_file=True)
    same_as_scan(second, path)
    assert len(second.ticks) == 20 and second.complete
    # no temporary file left behind
    assert {p.name for p in tmp_path.iterdir()} == {"r.jsonl", "r.jsonl.idx"}


def test_cut_off_recording_keeps_its_truncated_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "r.jsonl", 6, end=False)
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:40])  # killed mid-line
    read_recording(path, index_file=True)
    no_rescan(monkeypatch)
    rec = read_recording(path, index_file=True)
    assert rec.truncated and rec.end is None and len(rec.ticks) == 6


def test_stale_index_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "r.jsonl", 10, end=False)
    read_recording(path, index_file=True)
    # the run went on: more ticks appended after the index was saved
    more = Recorder(tmp_path / "more.jsonl", {"run_id": "idx"})
    for t in make_ticks(14)[10:]:
        more.write_tick(t)
    more.close({"reason": "test"})
    with path.open("a") as f:
        f.writelines(line + "\n" for line in (tmp_path / "more.jsonl").read_text().splitlines()[1:])
    calls = rescans(monkeypatch)
    rec = read_recording(path, index_file=True)
    assert calls and len(rec.ticks) == 14 and rec.complete
    same_as_scan(rec, path)
    # ... and the rebuilt index is the one used next time
    calls.clear()
    assert len(read_recording(path, index_file=True).ticks) == 14 and not calls


def test_index_of_another_recording_with_same_size_and_mtime_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "r.jsonl", 8)
    read_recording(path, index_file=True)
    st = path.stat()
    # the same bytes but another run id of the same length in the header
    lines = path.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'"run_id":"idx"', b'"run_id":"xdi"')
    path.write_bytes(b"\n".join(lines))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    calls = rescans(monkeypatch)
    rec = read_recording(path, index_file=True)
    assert calls and rec.header["run_id"] == "xdi"
    # only the modification time changed: rebuilt too
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    calls.clear()
    read_recording(path, index_file=True)
    assert calls


def _damaged(good: bytes) -> dict[str, bytes]:
    meta_line, payload = good.split(b"\n", 1)
    meta = json.loads(meta_line)
    flipped = bytearray(payload)
    flipped[len(flipped) // 3] ^= 0xFF
    # a forged index: checksum recomputed over wrong offsets (shifted by one)
    n = meta["ticks"]
    forged_payload = bytearray(payload)
    for k in range(n):
        v = int.from_bytes(forged_payload[8 * k : 8 * k + 8], "little") + 1
        forged_payload[8 * k : 8 * k + 8] = v.to_bytes(8, "little")
    forged_meta = dict(meta, payload_crc32=zlib.crc32(bytes(forged_payload)))
    old = dict(meta, version=recording_index.VERSION + 1)
    return {
        "empty": b"",
        "cut off": good[: len(good) // 2],
        "flipped byte": meta_line + b"\n" + bytes(flipped),
        "not an index": b"hello\n" + payload,
        "binary junk": os.urandom(4096),
        "json junk": b'{"format":"loadtop-seek-index","version":1}\n',
        "other version": json.dumps(old).encode() + b"\n" + payload,
        "forged offsets": json.dumps(forged_meta).encode() + b"\n" + bytes(forged_payload),
    }


@pytest.mark.parametrize(
    "damage",
    [
        "empty",
        "cut off",
        "flipped byte",
        "not an index",
        "binary junk",
        "json junk",
        "other version",
        "forged offsets",
    ],  # fmt: skip
)
def test_damaged_index_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = write(tmp_path / "r.jsonl")
    read_recording(path, index_file=True)
    idx = tmp_path / "r.jsonl.idx"
    good = idx.read_bytes()
    idx.write_bytes(_damaged(good)[damage])
    calls = rescans(monkeypatch)
    rec = read_recording(path, index_file=True)
    assert calls, "a damaged index was trusted"
    same_as_scan(rec, path)
    assert idx.read_bytes() == good  # rewritten


def test_index_that_cannot_be_written_stays_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "r.jsonl")
    (tmp_path / "r.jsonl.idx").mkdir()  # in the way of the index: neither read nor replaced
    rec = read_recording(path, index_file=True)
    same_as_scan(rec, path)
    assert (tmp_path / "r.jsonl.idx").is_dir()
    assert {p.name for p in tmp_path.iterdir()} == {"r.jsonl", "r.jsonl.idx"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_read_only_directory(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    path = write(d / "r.jsonl")
    d.chmod(0o555)
    try:
        rec = read_recording(path, index_file=True)
        same_as_scan(rec, path)
        assert not (d / "r.jsonl.idx").exists()
    finally:
        d.chmod(0o755)


def test_read_only_directory_even_for_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, where the test runs as root: creating the index fails as on a
    read-only file system."""
    path = write(tmp_path / "r.jsonl")
    real_open = os.open

    def ro_open(p: Any, flags: int, *a: Any, **k: Any) -> int:
        if flags & os.O_CREAT and Path(p).parent == tmp_path:
            raise OSError(30, "Read-only file system", str(p))
        return real_open(p, flags, *a, **k)

    monkeypatch.setattr(recording_index.os, "open", ro_open)
    rec = read_recording(path, index_file=True)
    same_as_scan(rec, path)
    assert {p.name for p in tmp_path.iterdir()} == {"r.jsonl"}


def test_small_recordings_and_reports_leave_no_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "r.jsonl")
    read_recording(path)  # what `loadtop report` opens with
    assert not (tmp_path / "r.jsonl.idx").exists()
    monkeypatch.setattr(recording_index, "MIN_BYTES", path.stat().st_size + 1)
    read_recording(path, index_file=True)
    assert not (tmp_path / "r.jsonl.idx").exists()


def test_an_index_is_not_a_recording(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl")
    read_recording(path, index_file=True)
    with pytest.raises(recording_mod.RecordingError, match="not a loadtop recording"):
        read_recording(tmp_path / "r.jsonl.idx")
