"""Mount helpers (imgpipe.snapshots.mount) and choosing/opening snapshotters.

Option parsing and lower-dir compaction are pure and run everywhere; real mounts need
root and skip elsewhere (CI runs as root).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from btrfs_fixture import require_root

from imgpipe.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceLimit, Unsupported
from imgpipe.metadata import MetadataDB
from imgpipe.snapshots import (
    Mount,
    default_snapshotter_name,
    direct_path,
    mount_all,
    open_snapshotter,
    unmount,
)
from imgpipe.snapshots.mount import (
    OVERLAY_MAX_STACK,
    PAGE_SIZE,
    check_overlay,
    compact_lowerdir,
    is_mountpoint,
    overlay_index_off,
    parse_options,
)


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points for a test; whatever is still mounted on them is unmounted after."""
    made: list[Path] = []
    yield made
    for t in reversed(made):
        unmount(t, detach=True)


def target(targets: list[Path], path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    targets.append(path)
    return path


# -- pure ---------------------------------------------------------------------------------


def test_parse_options() -> None:
    flags, prop, data = parse_options(["rbind", "ro", "nosuid", "index=off", "lowerdir=/a:/b"])
    assert flags == 0x1000 | 0x4000 | 0x1 | 0x2
    assert prop == 0
    assert data == "index=off,lowerdir=/a:/b"
    flags, prop, data = parse_options(["ro", "rw", "rprivate", "defaults"])
    assert (flags, prop, data) == (0, 0x40000 | 0x4000, "")


def test_compact_lowerdir_short_options_unchanged() -> None:
    opts = ("index=off", "workdir=/r/1/work", "upperdir=/r/1/fs", "lowerdir=/r/2/fs:/r/3/fs")
    assert compact_lowerdir(opts) == (None, opts)
    assert compact_lowerdir(("ro",)) == (None, ("ro",))


def test_compact_lowerdir_long_options_become_relative() -> None:
    base = "/var/lib/imgpipe/snapshots/overlay/snapshots"
    lowers = [f"{base}/{i}/fs" for i in range(200, 70, -1)]
    opts = (
        "index=off",
        f"workdir={base}/201/work",
        f"upperdir={base}/201/fs",
        "lowerdir=" + ":".join(lowers),
    )
    assert len(",".join(opts)) > PAGE_SIZE
    cwd, new = compact_lowerdir(opts)
    assert cwd == base
    assert new[:3] == opts[:3]  # upper and work stay absolute
    assert new[3] == "lowerdir=" + ":".join(f"{i}/fs" for i in range(200, 70, -1))
    assert len(parse_options(new)[2]) < PAGE_SIZE


def test_compact_lowerdir_limits() -> None:
    base = "/s"
    too_many = "lowerdir=" + ":".join(f"{base}/{i}" for i in range(OVERLAY_MAX_STACK + 1))
    with pytest.raises(ResourceLimit, match=str(OVERLAY_MAX_STACK)):
        compact_lowerdir((too_many,))
    # relative names that alone overflow a page
    long_names = "lowerdir=" + ":".join(f"{base}/{'x' * 60}{i}" for i in range(200))
    with pytest.raises(ResourceLimit, match="relative"):
        compact_lowerdir((long_names,))
    relative = "lowerdir=" + ":".join(f"{'y' * 40}{i}" for i in range(200))
    with pytest.raises(InvalidArgument):
        compact_lowerdir((relative,))


def test_direct_path() -> None:
    assert direct_path([Mount("bind", "/x", ("rw", "rbind"))]) == Path("/x")
    assert direct_path([Mount("none", "/y", ("bind",))]) == Path("/y")
    assert direct_path([Mount("overlay", "overlay", ("lowerdir=/a:/b",))]) is None
    assert direct_path([]) is None


def test_open_unknown_snapshotter(tmp_path: Path) -> None:
    with MetadataDB(tmp_path / "m.db") as db, pytest.raises(NotFound, match="known: btrfs"):
        open_snapshotter("zfs", tmp_path / "s", db)


def test_btrfs_refuses_a_root_not_on_btrfs(tmp_path: Path) -> None:
    with MetadataDB(tmp_path / "m.db") as db, pytest.raises(Unsupported, match="not btrfs"):
        open_snapshotter("btrfs", tmp_path / "snapshots" / "btrfs", db)


def test_native_works_anywhere(tmp_path: Path) -> None:
    with MetadataDB(tmp_path / "m.db") as db:
        sn = open_snapshotter("native", tmp_path / "snapshots" / "native", db)
        (mount,) = sn.prepare("k")
        assert direct_path([mount]) is not None


def test_overlay_needs_root_elsewhere(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("checks the non-root refusal")
    assert default_snapshotter_name(tmp_path) == "native"
    with MetadataDB(tmp_path / "m.db") as db, pytest.raises(Unsupported, match="root"):
        open_snapshotter("overlay", tmp_path / "snapshots" / "overlay", db)


# -- real mounts (root) -------------------------------------------------------------------


def test_bind_read_write_and_read_only(tmp_path: Path, targets: list[Path]) -> None:
    require_root("mounting")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hello")
    rw = target(targets, tmp_path / "r w")  # mountinfo escapes the space
    mount_all([Mount("bind", str(src), ("rw", "rbind"))], rw)
    assert is_mountpoint(rw)
    assert (rw / "f").read_text() == "hello"
    (rw / "g").write_text("through the bind")
    assert (src / "g").read_text() == "through the bind"
    ro = target(targets, tmp_path / "ro")
    mount_all([Mount("bind", str(src), ("ro", "rbind"))], ro)
    with pytest.raises(OSError) as exc:
        (ro / "h").write_text("x")
    assert exc.value.errno == 30  # EROFS: the remount made the bind read-only
    assert (ro / "f").read_text() == "hello"
    unmount(ro)
    unmount(rw)
    assert not is_mountpoint(ro) and not is_mountpoint(rw)
    unmount(rw)  # idempotent
    unmount(tmp_path / "does-not-exist")


def test_overlay_mount_nearest_lower_wins(tmp_path: Path, targets: list[Path]) -> None:
    require_root("mounting")
    dirs = {n: tmp_path / n for n in ("l1", "l2", "up", "work")}
    for d in dirs.values():
        d.mkdir()
    (dirs["l1"] / "f").write_text("bottom")
    (dirs["l1"] / "only-bottom").write_text("b")
    (dirs["l2"] / "f").write_text("top")
    m = Mount(
        "overlay",
        "overlay",
        (
            *overlay_index_off(),
            f"workdir={dirs['work']}",
            f"upperdir={dirs['up']}",
            f"lowerdir={dirs['l2']}:{dirs['l1']}",
        ),
    )
    mnt = target(targets, tmp_path / "mnt")
    mount_all([m], mnt)
    assert (mnt / "f").read_text() == "top"
    assert (mnt / "only-bottom").read_text() == "b"
    (mnt / "new").write_text("n")
    unmount(mnt)
    assert (dirs["up"] / "new").read_text() == "n"
    assert not (dirs["l2"] / "new").exists()


def _layers(root: Path, n: int, name_len: int) -> list[Path]:
    out = []
    for i in range(n):
        d = root / f"{i:0{name_len}d}"
        d.mkdir(parents=True)
        (d / f"from-{i}").write_text(str(i))
        (d / "top").write_text(str(i))
        out.append(d)
    return out


def test_overlay_deeper_than_a_page_mounts_relative(tmp_path: Path, targets: list[Path]) -> None:
    """130 absolute lower dirs of ~100 bytes do not fit a page; the mount goes through
    relative names from their common parent, in a thread of its own: the process's
    working directory never moves, even while another thread looks."""
    require_root("mounting")
    deep = tmp_path / ("long-directory-name-" * 3) / "layers"
    lowers = _layers(deep, 130, 3)[::-1]  # nearest first: 129 on top
    opts = ("lowerdir=" + ":".join(map(str, lowers)),)
    assert len(opts[0]) > PAGE_SIZE
    mnt = target(targets, tmp_path / "mnt")
    cwd_before = os.getcwd()
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(os.getcwd())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        mount_all([Mount("overlay", "overlay", opts)], mnt)
    finally:
        stop.set()
        watcher.join()
    assert seen <= {cwd_before}
    assert os.getcwd() == cwd_before
    assert (mnt / "top").read_text() == "129"
    assert len(os.listdir(mnt)) == 131
    unmount(mnt)


def test_overlay_at_the_kernel_stack_limit(tmp_path: Path, targets: list[Path]) -> None:
    require_root("mounting")
    lowers = _layers(tmp_path / "l", OVERLAY_MAX_STACK, 3)[::-1]
    mnt = target(targets, tmp_path / "mnt")
    mount_all([Mount("overlay", "overlay", ("lowerdir=" + ":".join(map(str, lowers)),))], mnt)
    assert (mnt / "top").read_text() == str(OVERLAY_MAX_STACK - 1)
    unmount(mnt)
    extra = tmp_path / "l" / "extra"
    extra.mkdir()
    opts = ("lowerdir=" + ":".join(map(str, [extra, *lowers])),)
    with pytest.raises(ResourceLimit, match="at most 500"):
        mount_all([Mount("overlay", "overlay", opts)], mnt)
    assert not is_mountpoint(mnt)


def test_target_cwd_is_honoured(tmp_path: Path, targets: list[Path]) -> None:
    require_root("mounting")
    _layers(tmp_path / "base", 2, 1)
    mnt = target(targets, tmp_path / "mnt")
    mount_all(
        [Mount("overlay", "overlay", ("lowerdir=1:0",), target_cwd=str(tmp_path / "base"))], mnt
    )
    assert (mnt / "top").read_text() == "1"
    unmount(mnt)


def test_failed_mounts_say_why_and_leave_nothing(tmp_path: Path, targets: list[Path]) -> None:
    require_root("mounting")
    src = tmp_path / "src"
    src.mkdir()
    mnt = target(targets, tmp_path / "mnt")
    with pytest.raises(FailedPrecondition, match="No such file"):
        mount_all([Mount("bind", str(tmp_path / "missing"), ("rbind",))], mnt)
    with pytest.raises(Unsupported, match="file system type"):
        mount_all([Mount("no-such-fs", "none", ())], mnt)
    # all or nothing: the first mount is taken back when the second fails
    with pytest.raises(FailedPrecondition):
        mount_all(
            [
                Mount("bind", str(src), ("rbind",)),
                Mount("bind", str(tmp_path / "nope"), ("rbind",)),
            ],
            mnt,
        )
    assert not is_mountpoint(mnt)
    with pytest.raises(InvalidArgument):
        mount_all([], mnt)


def test_unmount_busy_is_an_error(tmp_path: Path, targets: list[Path]) -> None:
    require_root("mounting")
    src = tmp_path / "src"
    src.mkdir()
    mnt = target(targets, tmp_path / "mnt")
    mount_all([Mount("bind", str(src), ("rbind",))], mnt)
    fd = os.open(mnt, os.O_RDONLY)
    try:
        # an open directory keeps it busy (the plain unmount refuses; detach would not)
        with pytest.raises(FailedPrecondition, match="busy"):
            unmount(mnt)
    finally:
        os.close(fd)
    unmount(mnt)
    assert not is_mountpoint(mnt)


def test_default_snapshotter_is_overlay_where_it_works(tmp_path: Path, targets: list[Path]) -> None:
    require_root("mounting")
    assert default_snapshotter_name(tmp_path / "root") == "overlay"
    check_overlay(tmp_path / "root")
    # overlayfs refuses another overlay as its upper dir: there, native is the default
    # and opening overlay says why.
    dirs = {n: tmp_path / n for n in ("lower", "up", "work")}
    for d in dirs.values():
        d.mkdir()
    mnt = target(targets, tmp_path / "merged")
    mount_all(
        [
            Mount(
                "overlay",
                "overlay",
                (
                    *overlay_index_off(),
                    f"lowerdir={dirs['lower']}",
                    f"upperdir={dirs['up']}",
                    f"workdir={dirs['work']}",
                ),
            )
        ],
        mnt,
    )
    assert default_snapshotter_name(mnt / "root") == "native"
    with (
        MetadataDB(tmp_path / "m.db") as db,
        pytest.raises(Unsupported, match="overlay does not work"),
    ):
        open_snapshotter("overlay", mnt / "root" / "snapshots" / "overlay", db)
    unmount(mnt)


def test_overlay_root_with_option_separators_refused(tmp_path: Path) -> None:
    require_root("the overlay snapshotter")
    with MetadataDB(tmp_path / "m.db") as db, pytest.raises(InvalidArgument, match="','"):
        open_snapshotter("overlay", tmp_path / "a,b" / "overlay", db)
