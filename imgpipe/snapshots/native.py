"""The native snapshotter: every snapshot is a full copy of its parent.

Layout: ``<root>/snapshots/<id>/fs``. Portable (any file system, no overlay, no root
needed to create, copy or remove), at the price of O(size of parent) per layer.

Mounts are binds, ``rw`` for an active snapshot and ``ro`` for a view; a view of a
committed snapshot binds the parent's directory itself (nothing copied). Without root,
:func:`imgpipe.snapshots.mount.direct_path` gives the directory to use in place.

Why copy rather than hardlink: a hardlinked file is one inode in two snapshots. A layer
applied with replace semantics (unlink, then create) would leave the parent alone, but an
active snapshot is also a container's root file system, where programs write files in
place, truncate them, chmod and chown them; each of those would change the committed
parent (and every image sharing it) too. So regular files are copied with
``copy_file_range``, which file systems with reflinks (btrfs, XFS) turn into a
copy-on-write clone: sharing where the file system can make it safe, copying elsewhere.

The copy keeps everything a layer can carry: type, mode (incl. setuid/setgid/sticky),
owner (as root), xattrs (those this process may set), nanosecond times of files and
directories, hardlinks within the snapshot, symlinks as they are, devices and fifos.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from imgpipe.formats.errors import FailedPrecondition

from .base import DirSnapshotter
from .protocol import Kind, Mount
from .records import Record, SnapshotRecords

__all__ = ["NativeSnapshotter", "copy_tree"]

#: Bytes per copy_file_range call: large enough that the per-call cost vanishes, small
#: enough to stay interruptible.
COPY_CHUNK: Final = 64 << 20

_XATTR_SKIP_ERRNOS: Final = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.ENODATA, errno.EINVAL}
)


class NativeSnapshotter(DirSnapshotter):
    """Copying snapshots under ``root``; works on any file system, with or without root."""

    name = "native"

    def __init__(self, root: Path, db: SnapshotRecords) -> None:
        super().__init__(Path(os.path.abspath(root)), db)

    def _build(self, tmp: Path, kind: Kind, parent: Record | None) -> None:
        fs = tmp / "fs"
        if parent is not None and kind is Kind.ACTIVE:
            copy_tree(self.fs_dir(parent.backend_id), fs)
        else:
            # A view of a parent binds the parent itself; an empty snapshot starts empty.
            fs.mkdir()
            os.chmod(fs, 0o755)  # noqa: S103 (a rootfs is world-readable)

    def _mounts_for(self, rec: Record, chain: list[Record]) -> list[Mount]:
        if rec.kind == Kind.VIEW.value:
            src = self.fs_dir(chain[0].backend_id) if chain else self.fs_dir(rec.backend_id)
            return [Mount("bind", str(src), ("ro", "rbind"))]
        return [Mount("bind", str(self.fs_dir(rec.backend_id)), ("rw", "rbind"))]


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in _XATTR_SKIP_ERRNOS:
            return
        raise
    for name in names:
        try:
            os.setxattr(
                dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False
            )
        except OSError as e:
            # trusted.* and security.* need privileges this process may lack; containerd's
            # CopyDir ignores xattr errors the same way.
            if e.errno not in _XATTR_SKIP_ERRNOS:
                raise


def _copy_file(src: str, dst: str, st: os.stat_result) -> None:
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fout = os.open(
            dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            left = st.st_size
            while left > 0:
                try:
                    n = os.copy_file_range(fin, fout, min(left, COPY_CHUNK))
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    n = os.sendfile(fout, fin, None, min(left, COPY_CHUNK))
                if n == 0:
                    break  # the source shrank under us: copy what there is
                left -= n
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _copy_meta(src: str, dst: str, st: os.stat_result, *, as_root: bool) -> None:
    """Owner, then mode (chown clears setuid/setgid), xattrs, then times: in that order."""
    is_link = stat.S_ISLNK(st.st_mode)
    if as_root:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not is_link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    if not is_link or as_root:  # user.* xattrs are not allowed on symlinks anyway
        _copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy the tree ``src`` to the new path ``dst`` with all metadata (see the module
    docstring). Hardlinks inside ``src`` stay hardlinks in ``dst``. Symlinks are copied,
    never followed. FailedPrecondition for a file type that cannot be copied."""
    as_root = os.geteuid() == 0
    root_st = os.lstat(src)
    if not stat.S_ISDIR(root_st.st_mode):
        raise FailedPrecondition(f"copy {src}: not a directory")
    links: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, str, os.stat_result]] = []
    # Iterative, so a deep tree cannot exhaust Python's recursion limit.
    stack: list[tuple[str, str, os.stat_result]] = [(str(src), str(dst), root_st)]
    while stack:
        s, d, st = stack.pop()
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d, 0o700)
            # Directory metadata is set at the end: adding children changes its mtime,
            # and a read-only mode would stop us adding them.
            dirs.append((s, d, st))
            with os.scandir(s) as it:
                for e in it:
                    stack.append((e.path, os.path.join(d, e.name), e.stat(follow_symlinks=False)))
            continue
        if st.st_nlink > 1:
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first, d, follow_symlinks=False)
                continue
            links[(st.st_dev, st.st_ino)] = d
        if stat.S_ISREG(mode):
            _copy_file(s, d, st)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(d, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        elif stat.S_ISSOCK(mode):
            continue  # a socket is bound by a process; a copy of the node is meaningless
        else:
            raise FailedPrecondition(f"copy {s}: unsupported file type {stat.S_IFMT(mode):o}")
        _copy_meta(s, d, st, as_root=as_root)
    # Deepest first, so a directory's times are not changed again by its children's.
    for s, d, st in reversed(dirs):
        _copy_meta(s, d, st, as_root=as_root)
