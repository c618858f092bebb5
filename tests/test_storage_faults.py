"""The system refusing the store's disk (issue 11): a full tmpfs, a read-only mount.

Real tmpfs mounts (root only: skipped with the reason otherwise; CI runs as root), the
real registry, the command through a subprocess. A full disk or a read-only mount is
exit 1 with a message naming the path, at once (each command gets a 30 s bound, half the
database's 60 s lock wait: a refusal retried as a lock would overrun it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import IMGPIPE
from registry_fixtures import Registry, make_random_image

import imgpipe
from imgpipe.cli.exitcodes import exit_code_for
from imgpipe.content import ContentStore
from imgpipe.content.space import KEEP_FREE
from imgpipe.events import Event, EventKind
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import NoSpace, ReadOnlyStore, StorageError
from imgpipe.metadata import MetadataDB
from imgpipe.store import RESERVE_NAME, RESERVE_SIZE, Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

MiB = 1 << 20
#: generous bound per command: far below the 60 s a lock wait would take
BOUND = 30


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMGPIPE, "--root", str(root), *args], capture_output=True, text=True, timeout=BOUND
    )


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``tmpfs(size)``: a fresh tmpfs of ``size`` bytes, unmounted after the test."""
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"tmpfs-{len(mounts)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", point], check=True)
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", point], check=True)


def remount(point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", point], check=True)


def fill(point: Path) -> None:
    """Write a file on ``point`` until the disk is full: 0 bytes free."""
    with (point / "filler").open("wb", buffering=0) as f:
        block = b"\0" * (64 << 10)
        with contextlib.suppress(OSError):
            while True:
                f.write(block)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")
    st = os.statvfs(point)
    assert st.f_bfree == 0


def push_random(registry: Registry, tmp_path: Path, repo: str, size: int, seed: int) -> str:
    layout = tmp_path / f"layout-{repo}"
    make_random_image(layout, "v1", [size], seed=seed)
    registry.push_layout(layout, "v1", f"storage/{repo}", "v1")
    return f"{registry.host}/storage/{repo}:v1"


# -- a full disk -------------------------------------------------------------------------


def test_full_disk_lists_verifies_and_frees(
    registry: Registry, tmpfs: Callable[[int], Path], tmp_path: Path
) -> None:
    big = push_random(registry, tmp_path, "big", 8 * MiB, seed=11)
    small = push_random(registry, tmp_path, "small", MiB, seed=12)
    later = push_random(registry, tmp_path, "later", 3 * MiB, seed=13)
    point = tmpfs(24 * MiB)
    root = point / "root"
    for ref in (big, small):
        r = cli(root, "pull", ref)
        assert r.returncode == 0, r.stderr
    assert (root / RESERVE_NAME).stat().st_size == RESERVE_SIZE
    fill(point)

    r = cli(root, "images")
    assert r.returncode == 0, r.stderr
    assert "storage/big" in r.stdout and "storage/small" in r.stdout
    r = cli(root, "inspect", big)
    assert r.returncode == 0, r.stderr
    r = cli(root, "content", "verify")
    assert r.returncode == 0, r.stderr

    # a pull that cannot fit: refused at once, naming the path, what it needs and has
    r = cli(root, "pull", later)
    assert r.returncode == 1, r.stderr
    assert "no space left on device" in r.stderr.lower()
    assert str(root / "content") in r.stderr and "needs" in r.stderr and "free" in r.stderr
    assert cli(root, "images").stdout.count("storage/") == 2  # nothing recorded

    # what needs no new blob still works: a name, a pull of what is stored
    r = cli(root, "tag", small, "again")
    assert r.returncode == 0, r.stderr
    r = cli(root, "pull", small, "--name", "again2")
    assert r.returncode == 0, r.stderr

    # freeing space is always possible: the database writes into the reserve
    r = cli(root, "rmi", big)
    assert r.returncode == 0, r.stderr
    r = cli(root, "gc")
    assert r.returncode == 0, r.stderr
    r = cli(root, "pull", later)
    assert r.returncode == 0, r.stderr
    # the reserve was allocated again once there was room
    assert (root / RESERVE_NAME).stat().st_size == RESERVE_SIZE
    r = cli(root, "content", "verify")
    assert r.returncode == 0, r.stderr


def test_full_disk_database_reads_and_refuses_writes_at_once(
    tmpfs: Callable[[int], Path],
) -> None:
    point = tmpfs(4 * MiB)
    path = point / "metadata.db"
    digest = "sha256:" + "a" * 64
    desc = Descriptor.from_json(
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 2}
    )
    with MetadataDB(path) as db:
        db.put_image("docker.io/library/x:1", desc)
    fill(point)  # no reserve here: the database alone, on a disk with 0 bytes free
    with MetadataDB(path) as db:
        assert isinstance(db.refusal, NoSpace)
        assert [r.name for r in db.list_images()] == ["docker.io/library/x:1"]
        with pytest.raises(NoSpace, match=r"metadata\.db.*no space left on device") as info:
            db.put_image("docker.io/library/y:1", desc)
    assert exit_code_for(info.value) == 1


def test_ingest_on_a_full_disk_names_the_file_and_keeps_the_ingest(
    tmpfs: Callable[[int], Path],
) -> None:
    point = tmpfs(2 * MiB)
    content = ContentStore(point / "content")
    # no declared size: nothing to check up front, so the write itself meets the full disk
    w = content.writer("test-ingest")
    with pytest.raises(NoSpace) as info:
        for _ in range(64):
            w.write(b"\1" * (64 << 10))
    message = str(info.value)
    assert str(point / "content" / "ingest") in message and "bytes free" in message
    assert not isinstance(info.value, OSError)  # never retried as a dropped connection
    kept = content.ingest_status("test-ingest")
    assert 0 < kept.offset == w.offset  # cut back to what was written whole
    w.close()


def test_blob_that_cannot_fit_is_refused_before_writing(tmpfs: Callable[[int], Path]) -> None:
    point = tmpfs(4 * MiB)
    content = ContentStore(point / "content")
    size = 4 * MiB - KEEP_FREE + 1
    desc = Descriptor.from_json(
        {"mediaType": "application/octet-stream", "digest": "sha256:" + "b" * 64, "size": size}
    )

    class Never:
        def open_blob(self, d: Descriptor) -> object:
            raise AssertionError("the source must not be opened")

    with pytest.raises(NoSpace, match=rf"needs {size} bytes") as info:
        content.ingest_blob(Never(), desc)  # type: ignore[arg-type]
    assert info.value.needed == size
    assert list(content.ingests()) == []


def test_pull_that_cannot_fit_is_refused_before_any_blob(
    registry: Registry, tmpfs: Callable[[int], Path], tmp_path: Path
) -> None:
    """Each layer would fit alone, the two together would not: only the manifest moves
    (it says how much the image needs)."""
    layout = tmp_path / "layout-two"
    make_random_image(layout, "v1", [5 * MiB, 5 * MiB], seed=31)
    registry.push_layout(layout, "v1", "storage/two", "v1")
    point = tmpfs(10 * MiB)
    events: list[Event] = []
    with pytest.raises(NoSpace, match=r"storage/two:v1 \(3 blobs to fetch\).*needs \d+ bytes"):
        imgpipe.pull(f"{registry.host}/storage/two:v1", root=point / "root", observer=events.append)
    started = [e for e in events if e.kind == EventKind.BLOB_START]
    assert [str(e.media_type) for e in started] == ["application/vnd.oci.image.manifest.v1+json"]
    assert list(ContentStore(point / "root" / "content").ingests()) == []


# -- a read-only mount --------------------------------------------------------------------


def test_read_only_store_lists_and_inspects(
    registry: Registry, tmpfs: Callable[[int], Path], tmp_path: Path
) -> None:
    ref = push_random(registry, tmp_path, "ro", MiB, seed=21)
    other = push_random(registry, tmp_path, "ro2", MiB, seed=22)
    point = tmpfs(16 * MiB)
    root = point / "root"
    assert cli(root, "pull", ref).returncode == 0
    remount(point, "ro")
    try:
        r = cli(root, "images")
        assert r.returncode == 0, r.stderr
        assert "storage/ro" in r.stdout
        r = cli(root, "inspect", ref)
        assert r.returncode == 0, r.stderr
        r = cli(root, "content", "verify")
        assert r.returncode == 0, r.stderr
        for args in (["pull", other], ["rmi", ref], ["tag", ref, "x"], ["gc"]):
            r = cli(root, *args)
            assert r.returncode == 1, (args, r.stderr)
            assert "read-only" in r.stderr, (args, r.stderr)
            assert r.stderr.count("\n") == 1, r.stderr  # one line
    finally:
        remount(point, "rw")


def test_store_without_write_permission_opens_read_only(tmp_path: Path) -> None:
    """EACCES: root without CAP_DAC_OVERRIDE is held to the mode bits, as any user is."""
    root = tmp_path / "root"
    assert cli(root, "pull", "--name", "bb", f"oci:{_fixture_layout(tmp_path)}:v1").returncode == 0
    subprocess.run(["chmod", "-R", "a-w", root], check=True)
    drop = "-dac_override,-dac_read_search"
    as_user = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", IMGPIPE, "--root", root]
    try:
        r = subprocess.run([*as_user, "images"], capture_output=True, text=True, timeout=BOUND)
        assert r.returncode == 0, r.stderr
        assert "docker.io/library/bb:latest" in r.stdout
        r = subprocess.run(
            [*as_user, "tag", "bb", "other"], capture_output=True, text=True, timeout=BOUND
        )
        assert r.returncode == 1, r.stderr
        assert "is read-only (no write permission)" in r.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+w", root], check=True)


def _fixture_layout(tmp_path: Path) -> Path:
    layout = tmp_path / "small-layout"
    make_random_image(layout, "v1", [64 << 10], seed=41)
    return layout


def test_read_only_store_with_a_wal_left_behind(tmpfs: Callable[[int], Path]) -> None:
    """A process that died with its WAL in place: the read-only store still sees the
    last commit (``mode=ro`` reads the WAL; ``immutable`` would miss it)."""
    point = tmpfs(8 * MiB)
    root = point / "root"
    digest = "sha256:" + "c" * 64
    script = f"""
import os
from imgpipe.formats.descriptor import Descriptor
from imgpipe.store import Store
s = Store({str(root)!r})
d = Descriptor.from_json({{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "digest": {digest!r}, "size": 2}})
s.db.put_image("docker.io/library/late:1", d)
os._exit(0)  # no close: the WAL stays, holding the commit
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=BOUND)
    assert (root / "metadata.db-wal").stat().st_size > 0
    remount(point, "ro")
    try:
        with Store(root) as s:
            assert s.read_only
            assert [r.name for r in s.db.list_images()] == ["docker.io/library/late:1"]
            with pytest.raises(ReadOnlyStore, match="read-only file system"):
                s.db.delete_image("docker.io/library/late:1")
    finally:
        remount(point, "rw")


def test_storage_errors_are_exit_1_and_not_os_errors() -> None:
    for exc in (StorageError("x"), NoSpace("x"), ReadOnlyStore("x")):
        assert exit_code_for(exc) == 1
        assert not isinstance(exc, OSError)
    assert errno.ENOSPC  # the errno the content store maps to NoSpace
