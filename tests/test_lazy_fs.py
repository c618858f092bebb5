"""Lazy mounts of our own eStargz / zstd:chunked conversions (OCI layouts, read by
seeking): the tree overlay shows is the fully unpacked one; whiteouts and hardlinks
in overlay's form; the server's death is EIO, not a hang; stop leaves no mount."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from estargz_images import SourceImage, make_source
from lazy_fixtures import (
    cli,
    fuse_mounts,
    lazily_mounted,
    lazy_and_full,
    needs_root,
    overlaid,
    plan_of,
)

from imgpipe.formats.digest import Digest
from imgpipe.formats.reference import parse_transport
from imgpipe.image.tocfetch import range_reader
from imgpipe.lazy import LazyMount, start_lazy
from imgpipe.store import Store
from imgpipe.transports import open_source

pytestmark = [needs_root]


def _wait_dead(pid: int) -> None:
    """Until the server ``pid`` (our child) has exited (the owner's watcher reaps it)."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    # 9 MiB: three 4 MiB chunks and a short one
    return make_source(tmp_path_factory.mktemp("lazy-src"), big=9 << 20, seed=11)


@pytest.fixture(scope="module", params=["--estargz", "--zstdchunked"])
def converted(
    request: pytest.FixtureRequest, source: SourceImage, tmp_path_factory: pytest.TempPathFactory
) -> str:
    dst = f"oci:{tmp_path_factory.mktemp('lazy-dst')}:lazy"
    out = cli("convert", request.param, f"oci:{source.layout}:{source.tag}", dst)
    assert out.returncode == 0, out.stderr
    return dst


def test_the_lazy_tree_equals_the_unpacked_one(
    converted: str, source: SourceImage, tmp_path: Path
) -> None:
    got, want = lazy_and_full(converted, tmp_path, big=source.big)
    assert got == want
    assert "etc/deleted.txt" not in got  # the top layer's whiteout
    assert got["<hardlinks>"] == ()  # etc/hard's other name is overridden above
    assert not fuse_mounts(tmp_path)


def test_each_layer_is_in_overlays_form(converted: str, tmp_path: Path) -> None:
    with lazily_mounted(converted, Store(tmp_path / "root"), tmp_path / "state") as m:
        top, bottom = m.lowers
        assert [p.name for p in m.lowers] == ["1", "0"]
        wh = os.lstat(top / "etc/deleted.txt")
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0  # a whiteout, 0:0
        assert not (top / "etc/.wh.deleted.txt").exists()
        hello, hard = os.lstat(bottom / "etc/hello.txt"), os.lstat(bottom / "etc/hard")
        assert hello.st_ino == hard.st_ino and hello.st_nlink == 2
        assert os.readlink(bottom / "etc/link") == "hello.txt"
        assert os.getxattr(bottom / "etc/x", "user.test") == b"v1"
        assert os.lstat(bottom / "etc/x").st_uid == 1000
        with pytest.raises(OSError) as e:
            (bottom / "new").write_text("x")
        assert e.value.errno == errno.EROFS
        assert m.status()[0].state == "lazy" and not m.failure()


def test_killing_the_server_is_eio_and_stop_cleans_up(converted: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with lazily_mounted(converted, Store(tmp_path / "root"), state_dir) as m:
        with overlaid(m.lowers, tmp_path / "ov") as merged:
            assert (merged / "top.txt").read_bytes().startswith(b"from the top layer")
            os.kill(m.pid, signal.SIGKILL)
            _wait_dead(m.pid)
            # the owner's watcher reaps it and starts answering EIO; until then a read
            # waits for it, never hangs
            with pytest.raises(OSError) as e:
                (merged / "big.bin").read_bytes()
            assert e.value.errno == errno.EIO
            with pytest.raises(OSError) as e:
                os.listdir(merged / "etc")
            assert e.value.errno == errno.EIO
        failure = m.failure()
        assert failure is not None and "killed by signal 9" in failure
        assert LazyMount.attach(state_dir).failure() == failure  # what ps shows
    assert not fuse_mounts(tmp_path)


def test_stop_from_another_process(converted: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with lazily_mounted(converted, Store(tmp_path / "root"), state_dir) as m:
        LazyMount.attach(state_dir).stop()  # as `umount` or `rm` would
        _wait_dead(m.pid)
        assert not fuse_mounts(tmp_path)
    assert not fuse_mounts(tmp_path)


def test_the_background_fetch_commits_verified_blobs(
    converted: str, source: SourceImage, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    store = Store(root)
    with lazily_mounted(converted, store, tmp_path / "state", background=True) as m:
        layers = m.wait_settled(120)
        assert layers is not None
        assert [(ls.state, ls.error) for ls in layers] == [("complete", "")] * 2
        # nothing was read meanwhile: each byte fetched once (footers and TOCs by the plan)
        assert [ls.fetched for ls in layers] == [ls.size for ls in layers]
        assert all(store.content.exists(Digest.parse(ls.digest)) for ls in layers)
        assert (m.lowers[1] / "big.bin").read_bytes() == source.big
    verified = cli("content", "verify", root=root)
    assert verified.returncode == 0, verified.stderr
    # a lazy pull ended as a full pull: the next mount reads the store, fetches nothing
    with lazily_mounted(converted, store, tmp_path / "again", background=True) as m:
        layers = m.wait_settled(120)
        assert layers is not None and [ls.state for ls in layers] == ["complete"] * 2
        assert (m.lowers[1] / "big.bin").read_bytes() == source.big
        assert [ls.fetched for ls in m.status()] == [0, 0]


class _Stalling:
    """A RangeReader that, asked for a big range (a file's chunks, not a footer or a
    TOC), says so on the FIFO ``signal`` and never answers: a registry gone silent."""

    def __init__(self, inner: Any, signal_path: Path) -> None:
        self.inner = inner
        self.signal_path = signal_path

    def open_range(self, desc: Any, offset: int, length: int) -> Any:
        if length > 1 << 20:
            with open(self.signal_path, "wb") as f:
                f.write(b"s")
            threading.Event().wait()  # until the process is killed
        return self.inner.open_range(desc, offset, length)


def test_a_read_the_server_had_in_flight_when_it_died_is_eio(
    converted: str, tmp_path: Path
) -> None:
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    plan, source = plan_of(converted)

    def reopen() -> Any:
        return _Stalling(range_reader(open_source(parse_transport(converted))), fifo)

    m = start_lazy(Store(tmp_path / "root"), plan, tmp_path / "state", reopen=reopen)
    try:
        errors: list[int | None] = []

        def read() -> None:
            try:
                (m.lowers[1] / "big.bin").read_bytes()
                errors.append(None)
            except OSError as e:
                errors.append(e.errno)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with open(fifo, "rb") as f:  # returns once the server is inside the read
            assert f.read(1) == b"s"  # (readahead may have a second read stalled too)
        os.kill(m.pid, signal.SIGKILL)
        reader.join(60)  # a bound, not a wait: the EIO comes as soon as the owner sees it
        assert not reader.is_alive(), "the in-flight read hangs"
        assert errors == [errno.EIO]
    finally:
        m.stop()
        source.close()
    assert not fuse_mounts(tmp_path)
