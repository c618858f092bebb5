"""The btrfs snapshotter: subvolumes and copy-on-write snapshots, via the ``btrfs`` tool.

Layout: ``<root>/snapshots/<id>/fs`` is a subvolume. ``<root>`` must be on btrfs.

* prepare without parent: a new subvolume; with a parent: a writable snapshot of the
  parent's subvolume (O(1), shares every extent);
* view: a read-only snapshot of the parent (or an empty read-only subvolume);
* commit: a read-only snapshot of the active subvolume under a new id, then the active
  one is deleted (containerd does the same): committed layers are read-only to the
  kernel, not only by convention;
* remove: the record goes, then the subvolume is deleted.

Mounts are binds of the subvolume's path (``rw`` for active, ``ro`` for a view), not
``-t btrfs -o subvolid=N`` of the block device as containerd does. A bind needs no
knowledge of the device (a loop file, a multi-device file system, a device path that
differs inside a mount namespace), the same code mounts native snapshots, and the read
only property of committed subvolumes is enforced by btrfs either way.

The ``btrfs`` command (btrfs-progs) does the subvolume work; ioctls would save a process
per call (a few ms), which is small next to applying a layer.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

from imgpipe.formats.errors import FailedPrecondition, Unsupported

from .base import DirSnapshotter
from .cleanup import rmtree
from .protocol import Kind, Mount, Usage
from .records import Record, SnapshotRecords

__all__ = ["BTRFS_SUPER_MAGIC", "BtrfsSnapshotter", "fs_type_name", "statfs_type"]

#: ``f_type`` of a btrfs file system (linux/magic.h).
BTRFS_SUPER_MAGIC: Final = 0x9123683E

#: Names for the file system types an error message is likely to meet.
_FS_NAMES: Final = {
    0x9123683E: "btrfs",
    0xEF53: "ext4",
    0x01021994: "tmpfs",
    0x58465342: "xfs",
    0x794C7630: "overlay",
    0x6969: "nfs",
    0x65735546: "fuse",
    0x2FC12FC1: "zfs",
}

#: The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID).
_SUBVOL_ROOT_INO: Final = 256

#: Upper bound for one btrfs command; they are metadata operations taking milliseconds.
_BTRFS_TIMEOUT: Final = 120.0


def statfs_type(path: str | os.PathLike[str]) -> int:
    """``statfs(path).f_type``: the file system's magic number. OSError on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    # struct statfs is 120 bytes on 64-bit Linux; f_type (a word) comes first on every
    # architecture, which is all we read.
    buf = ctypes.create_string_buffer(256)
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def fs_type_name(magic: int) -> str:
    """A name for a file system magic number (hex if unknown)."""
    return _FS_NAMES.get(magic, f"file system type {magic:#x}")


class BtrfsSnapshotter(DirSnapshotter):
    """btrfs subvolume snapshots under ``root``, which must be on btrfs (Unsupported,
    naming the file system it is on, otherwise). Needs the ``btrfs`` command (Unsupported
    with an install hint if missing); deleting subvolumes needs root."""

    name = "btrfs"

    def __init__(self, root: Path, db: SnapshotRecords) -> None:
        root = Path(os.path.abspath(root))
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        magic = statfs_type(root)
        if magic != BTRFS_SUPER_MAGIC:
            raise Unsupported(
                f"btrfs snapshotter: {root} is on {fs_type_name(magic)}, not btrfs; "
                "use a root on a btrfs file system or another snapshotter"
            )
        tool = shutil.which("btrfs")
        if tool is None:
            raise Unsupported(
                "btrfs snapshotter needs the btrfs command: install btrfs-progs "
                "(apt-get install btrfs-progs)"
            )
        self._tool = tool
        super().__init__(root, db)

    def _btrfs(self, *args: str) -> None:
        proc = subprocess.run(
            [self._tool, *args],
            capture_output=True,
            text=True,
            timeout=_BTRFS_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise FailedPrecondition(
                f"btrfs {' '.join(args)}: {msg[-1] if msg else f'exit {proc.returncode}'}"
            )

    def _build(self, tmp: Path, kind: Kind, parent: Record | None) -> None:
        fs = str(tmp / "fs")
        ro = ("-r",) if kind is Kind.VIEW else ()
        if parent is not None:
            self._btrfs("subvolume", "snapshot", *ro, str(self.fs_dir(parent.backend_id)), fs)
            return
        self._btrfs("subvolume", "create", fs)
        os.chmod(fs, 0o755)  # noqa: S103 (a rootfs is world-readable)
        if ro:
            self._btrfs("property", "set", "-ts", fs, "ro", "true")

    def _commit_build(self, rec: Record, tmp: Path) -> bool:
        self._btrfs(
            "subvolume", "snapshot", "-r", str(self.fs_dir(rec.backend_id)), str(tmp / "fs")
        )
        return True

    def _delete(self, path: Path) -> None:
        fs = path / "fs"
        try:
            is_subvol = os.lstat(fs).st_ino == _SUBVOL_ROOT_INO
        except FileNotFoundError:
            is_subvol = False
        if is_subvol:
            try:
                self._btrfs("subvolume", "delete", str(fs))
            except FailedPrecondition:
                if os.path.lexists(fs):  # not deleted meanwhile by another process
                    raise
        rmtree(path)

    def _mounts_for(self, rec: Record, chain: list[Record]) -> list[Mount]:
        mode = "rw" if rec.kind == Kind.ACTIVE.value else "ro"
        return [Mount("bind", str(self.fs_dir(rec.backend_id)), (mode, "rbind"))]

    def _usage(self, rec: Record, chain: list[Record]) -> Usage:
        # A snapshot keeps its parent's inode numbers, and an inode untouched since the
        # snapshot keeps its ctime: what differs from the parent at the same path is this
        # snapshot's own (containerd's DiffUsage idea, without reading file contents).
        own = self.fs_dir(rec.backend_id)
        base = self.fs_dir(chain[0].backend_id) if chain else None
        size = inodes = 0
        seen: set[int] = set()
        stack = [""]
        while stack:
            rel = stack.pop()
            p = os.path.join(own, rel) if rel else str(own)
            st = os.lstat(p)
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            same = False
            if base is not None:
                try:
                    pst = os.lstat(os.path.join(base, rel) if rel else base)
                    same = (pst.st_ino, pst.st_ctime_ns, pst.st_size) == (
                        st.st_ino,
                        st.st_ctime_ns,
                        st.st_size,
                    )
                except FileNotFoundError:
                    same = False
            if not same:
                size += st.st_blocks * 512
                inodes += 1
            if os.path.isdir(p) and not os.path.islink(p):
                with os.scandir(p) as it:
                    stack.extend(os.path.join(rel, e.name) for e in it)
        return Usage(size=size, inodes=inodes)
