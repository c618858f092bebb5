"""Durability without waiting: batched directory fsyncs and early write-back.

A blob's data is always fsynced before its rename; inside ``deferred_dir_sync`` the
directory fsyncs that make the names durable are done once, when the block ends; and a
writer asks the kernel to start writing every WRITEBACK_BYTES, so the fsync at commit
waits for the tail only. The fsyncs are counted by wrapping ``os.fsync`` (the real one
still runs).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from pathlib import Path

import pytest

from imgpipe.content import ContentStore
from imgpipe.content import layout as layout_mod
from imgpipe.content import writer as writer_mod
from imgpipe.content.writer import WRITEBACK_BYTES, start_writeback
from imgpipe.formats.digest import Digest


def _digest(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


class _FsyncLog:
    """Which files and directories were fsynced, in order (the real fsync still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, bool]] = []  # (path, is a directory)
        real = os.fsync

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.calls.append((path, stat.S_ISDIR(st.st_mode)))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def dirs(self) -> list[str]:
        return [p for p, is_dir in self.calls if is_dir]

    def files(self) -> list[str]:
        return [p for p, is_dir in self.calls if not is_dir]


def test_outside_a_block_every_commit_fsyncs_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(tmp_path / "content")
    log = _FsyncLog(monkeypatch)
    for data in (b"one", b"two"):
        store.ingest(f"r-{data!r}", io.BytesIO(data), digest=_digest(data), size=len(data))
    blobs = str(tmp_path / "content" / "blobs" / "sha256")
    assert log.dirs().count(blobs) == 2
    assert len(log.files()) == 2  # each blob's data


def test_a_deferred_block_fsyncs_each_directory_once_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(tmp_path / "content")
    log = _FsyncLog(monkeypatch)
    datas = [f"blob {i}".encode() for i in range(5)]
    with store.deferred_dir_sync():
        for data in datas:
            store.ingest(f"r-{data!r}", io.BytesIO(data), digest=_digest(data), size=len(data))
            assert store.exists(_digest(data))  # named (and its data on disk) at once
        assert log.dirs() == []
        assert len(log.files()) == len(datas)  # data before each rename, as always
    content = tmp_path / "content"
    # the new blobs/sha256, blobs/ and the content root: each once
    assert sorted(log.dirs()) == sorted(
        str(p) for p in (content / "blobs" / "sha256", content / "blobs", content)
    )


def test_a_block_left_by_an_error_still_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(tmp_path / "content")
    log = _FsyncLog(monkeypatch)
    data = b"kept"
    with pytest.raises(RuntimeError), store.deferred_dir_sync():
        store.ingest("r", io.BytesIO(data), digest=_digest(data), size=len(data))
        raise RuntimeError("a later blob failed")
    assert str(tmp_path / "content" / "blobs" / "sha256") in log.dirs()
    assert store.exists(_digest(data))


def test_nested_and_concurrent_blocks_flush_what_each_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(tmp_path / "content")
    blobs = str(tmp_path / "content" / "blobs" / "sha256")
    store.ingest("first", io.BytesIO(b"x"), digest=_digest(b"x"), size=1)  # dirs exist now
    log = _FsyncLog(monkeypatch)
    inner_done = threading.Event()
    release = threading.Event()

    def other() -> None:
        with store.deferred_dir_sync():
            store.ingest("other", io.BytesIO(b"o"), digest=_digest(b"o"), size=1)
            inner_done.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert inner_done.wait(10)
    with store.deferred_dir_sync():
        store.ingest("mine", io.BytesIO(b"m"), digest=_digest(b"m"), size=1)
    # this block ended while the other is still open: its name (and the other's, in the
    # same directory) is durable now
    assert log.dirs() == [blobs]
    release.set()
    t.join(10)
    assert log.dirs() == [blobs]  # nothing new was committed since: nothing to redo


def test_a_failing_directory_fsync_at_the_end_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(tmp_path / "content")

    def broken(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(layout_mod, "fsync_dir", broken)
    with pytest.raises(OSError, match="Input/output"), store.deferred_dir_sync():
        store.ingest("r", io.BytesIO(b"d"), digest=_digest(b"d"), size=1)


def test_writer_starts_write_back_every_writeback_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real = writer_mod.start_writeback

    def spy(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(writer_mod, "start_writeback", spy)
    store = ContentStore(tmp_path / "content")
    chunk = os.urandom(1 << 20)
    n = 2 * WRITEBACK_BYTES // len(chunk) + 3
    h = hashlib.sha256()
    with store.writer("big") as w:
        for _ in range(n):
            w.write(chunk)
            h.update(chunk)
        w.commit(n * len(chunk), Digest("sha256", h.hexdigest()))
    assert calls == [(0, WRITEBACK_BYTES), (WRITEBACK_BYTES, WRITEBACK_BYTES)]


def test_start_writeback_is_harmless_on_any_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10000)
    fd = os.open(path, os.O_RDWR)
    try:
        start_writeback(fd, 0, 10000)
        start_writeback(fd, 5000, 1 << 30)  # past the end: nothing to do
    finally:
        os.close(fd)
    assert path.read_bytes() == b"a" * 10000
    if os.uname().sysname == "Linux":
        assert writer_mod._find_sync_file_range() is not None
