"""The per-type writers: each creates one entry by name in its parent's fd, then sets its
metadata, and returns its stat (the inode joins those this layer made).

Creation never goes through what was there: the applier has removed anything but a
directory under a directory entry, and files are made with ``O_EXCL | O_NOFOLLOW``,
``mkdir``, ``symlink``, ``link`` or ``mknod``. A hardlink's target is resolved in the
root like every path (containerd's ``hardlinkRootPath``) and ``link()`` never follows a
final symlink.

Hardlinks to lower layers (overlay mode): containerd's upperdir fast path calls
``link()`` in the upperdir, which fails when the target lives only in a lower layer (its
mounted slow path gets a kernel copy-up instead). Here, when the target is missing in the
upper directory, it is looked up in :attr:`ApplyOptions.lowers` (nearest first, in-root)
and copied up first, exactly what the overlay mount would do; then the link is made.
The merged view is the same as extracting through the mount.
"""

from __future__ import annotations

import os
import stat
import tarfile
from typing import Final

from imgpipe.formats.errors import MalformedDocument
from imgpipe.fs import (
    CHUNK,
    DIR_NOFOLLOW,
    NotADirectoryInRoot,
    clean_components,
    copy_fd,
    write_all,
)

from .metadata import Meta, copy_meta_fd, meta_fd, meta_name
from .state import ApplyState, DirTimes
from .tarstream import TarSource

__all__ = ["links_to_itself", "write_entry"]

_NEW_FILE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DEVICE_FORMATS: Final = {
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def write_entry(
    state: ApplyState,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    pfd: int,
    comps: list[str],
    *,
    kind: bytes,
    meta: Meta,
    times: tuple[int, int],
    exists: bool = False,
) -> os.stat_result | None:
    """Create ``comps[-1]`` in ``pfd`` as the entry says (``exists``: a directory over a
    directory, which merges) and return its stat when the layer keeps track of the
    inodes it made (:attr:`ApplyState.track_made`; always for a directory), else None.
    FileExistsError, before anything changed, when the name exists (and ``exists`` is
    false). Directory times are set at the end of the layer
    (:class:`~imgpipe.diff.state.DirTimes`): children change them. ``kind`` is the
    entry's type, REGTYPE for every regular and sparse file.

    A regular file costs ``openat`` (O_EXCL), ``write``, ``fchown``, ``fchmod``,
    ``futimens`` and ``close``: nothing is looked at first, and no stat after unless
    the inode is tracked."""
    base = comps[-1]
    if kind == tarfile.REGTYPE:
        fd = os.open(base, _NEW_FILE, 0o600, dir_fd=pfd)
        try:
            _copy_data(tar, member, fd)
            meta_fd(fd, member, meta, same_owner=state.same_owner, warn=state.warn)
            os.utime(fd, ns=times)
            return os.fstat(fd) if state.track_made else None
        finally:
            os.close(fd)
    if kind == tarfile.DIRTYPE:
        if not exists:
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, DIR_NOFOLLOW, dir_fd=pfd)
        try:
            meta_fd(fd, member, meta, same_owner=state.same_owner, warn=state.warn, merge=exists)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        state.dirs.append(DirTimes(comps, st.st_ino, st.st_dev, *times))
        return st
    if kind == tarfile.SYMTYPE:
        os.symlink(member.linkname, base, dir_fd=pfd)
    elif kind == tarfile.LNKTYPE:
        _hardlink(state, member, pfd, base)
    else:
        fmt = _DEVICE_FORMATS[kind]
        dev = os.makedev(member.devmajor, member.devminor) if fmt != stat.S_IFIFO else 0
        os.mknod(base, fmt | 0o600, dev, dir_fd=pfd)
    symlink = kind == tarfile.SYMTYPE
    meta_name(
        pfd, base, member, meta, same_owner=state.same_owner, warn=state.warn, symlink=symlink
    )
    os.utime(base, ns=times, dir_fd=pfd, follow_symlinks=False)
    return os.stat(base, dir_fd=pfd, follow_symlinks=False) if state.track_made else None


def links_to_itself(state: ApplyState, member: tarfile.TarInfo, old: os.stat_result) -> bool:
    """Whether a hardlink entry names the existing file it would replace: removing first
    would lose the target, so it only refreshes metadata (containerd errors here)."""
    target = clean_components(member.linkname)
    if not target:
        return False
    found = state.root.lstat(target)
    if found is None:
        return False
    os.close(found[0])
    return (found[1].st_dev, found[1].st_ino) == (old.st_dev, old.st_ino)


def _copy_data(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
    remaining = member.size
    if not member.issparse() and isinstance(tar.fileobj, TarSource):
        # Straight from the layer stream, a chunk's piece at a time: tarfile's
        # ExFileObject (a buffered reader over a section reader, per file) costs more
        # than most files' data, and joining pieces copies big ones. tarfile seeks to
        # the next header itself.
        src = tar.fileobj
        src.seek(member.offset_data)
        while remaining > 0:
            piece = src.read1(min(CHUNK, remaining))
            if not piece:
                raise MalformedDocument(f"{member.name!r}: tar ends inside the file data")
            n = os.write(fd, piece)
            if n < len(piece):  # a short write: rare, finished the long way
                write_all(fd, memoryview(piece)[n:])
            remaining -= len(piece)
        return
    data = tar.extractfile(member)  # tarfile maps a sparse file's holes
    if data is None:  # pragma: no cover - regular members always have a reader
        raise MalformedDocument(f"{member.name!r}: no data")
    try:
        while remaining > 0:
            chunk = data.read(min(CHUNK, remaining))
            if not chunk:
                raise MalformedDocument(f"{member.name!r}: tar ends inside the file data")
            write_all(fd, chunk)
            remaining -= len(chunk)
    except tarfile.ReadError as e:
        raise MalformedDocument(f"{member.name!r}: tar ends inside the file data ({e})") from None


def _hardlink(state: ApplyState, member: tarfile.TarInfo, pfd: int, base: str) -> None:
    target = clean_components(member.linkname)
    if not target:
        raise MalformedDocument(f"{member.name!r}: hardlink to the root directory")
    try:
        tfd = state.root.open_dir(target[:-1])
    except FileNotFoundError:
        tfd = -1
    except NotADirectoryInRoot as e:
        raise MalformedDocument(f"{member.name!r}: hardlink target: {e}") from None
    try:
        if tfd >= 0:
            try:
                os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                return
            except FileNotFoundError:
                pass
            except PermissionError:
                raise MalformedDocument(
                    f"{member.name!r}: hardlink target {member.linkname!r} is a directory"
                ) from None
        if not _copy_up_for_link(state, target):
            raise MalformedDocument(
                f"{member.name!r}: hardlink target {member.linkname!r} does not exist"
            )
    finally:
        if tfd >= 0:
            os.close(tfd)
    tfd = state.root.open_dir(target[:-1])
    try:
        os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
    finally:
        os.close(tfd)


def _copy_up_for_link(state: ApplyState, target: list[str]) -> bool:
    """Copy a hardlink target from the nearest lower layer into the root (overlay)."""
    if not state.overlay:
        return False
    found = state.lower_lstat(target)
    if found is None:
        return False
    lfd, st = found
    try:
        if not stat.S_ISREG(st.st_mode):
            return False
        # An fd of our own: the shared cache may be cleared while the caller holds one.
        dfd = state.root.open_dir(target[:-1], create=True, mkdir_hook=state.copy_up_dir)
        src = os.open(target[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lfd)
        try:
            dst = os.open(target[-1], _NEW_FILE, 0o600, dir_fd=dfd)
            try:
                copy_fd(src, dst)
                copy_meta_fd(src, dst, st, same_owner=state.same_owner, warn=state.warn)
                cst = os.fstat(dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
            os.close(dfd)
        state.made.add((cst.st_dev, cst.st_ino))
        return True
    finally:
        os.close(lfd)
