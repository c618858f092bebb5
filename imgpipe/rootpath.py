"""Resolving paths inside a root directory, as if it were ``/`` (a chroot, without one).

Two ways, one contract: ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` (Linux >= 5.6)
when the kernel has it, else a userspace walk that opens one component at a time with
``O_NOFOLLOW``, re-roots absolute symlink targets, clamps ``..`` at the root and gives up
after :data:`MAX_SYMLINK_HOPS` links (containerd's RootPath rules). Used to read files out
of an image's rootfs (USER lookup) and, through :mod:`imgpipe.diff.fsutil`, to apply layers.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from typing import Final

__all__ = [
    "AT_FDCWD",
    "MAX_SYMLINK_HOPS",
    "O_PATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "open_in_root",
    "openat2",
]

#: containerd's (continuity's) limit on symlinks followed while resolving one path.
MAX_SYMLINK_HOPS: Final = 255
SYS_OPENAT2: Final = 437  # one number on every Linux architecture (unified table)
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_IN_ROOT: Final = 0x10
AT_FDCWD: Final = -100
O_PATH: Final = getattr(os, "O_PATH", 0o10000000)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """The ``openat2`` system call; OSError with the kernel's errno on failure (ENOSYS
    before Linux 5.6, EPERM under seccomp profiles that predate it)."""
    how = _OpenHow(flags, 0, resolve)
    fd = _libc().syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _walk_in_root(root_fd: int, path: str, flags: int) -> int:
    """The userspace form of RESOLVE_IN_ROOT: one component at a time, never following a
    link with the kernel's resolver; link targets are spliced into the remaining path."""
    stack: list[int] = []  # open directory fds below the root, the current one last
    pending = list(reversed(path.split("/")))
    hops = 0
    try:
        while pending:
            comp = pending.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if stack:
                    os.close(stack.pop())
                continue
            cur = stack[-1] if stack else root_fd
            st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(comp, dir_fd=cur)
                if target.startswith("/"):
                    for fd in stack:
                        os.close(fd)
                    stack.clear()
                pending.extend(reversed(target.split("/")))
                continue
            if pending and not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            o_flags = (os.O_DIRECTORY | os.O_RDONLY) if pending else flags
            stack.append(os.open(comp, o_flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur))
        return stack.pop() if stack else os.dup(root_fd)
    finally:
        for fd in stack:
            os.close(fd)


def open_in_root(
    root: str | os.PathLike[str], path: str, *, use_openat2: bool | None = None
) -> int:
    """An ``O_PATH`` fd of ``path`` resolved inside ``root`` (the caller closes it).

    ``path`` is absolute or relative, it makes no difference: the rootfs is ``/``.
    Raises FileNotFoundError, NotADirectoryError or OSError(ELOOP) as the kernel would
    inside a chroot. ``use_openat2=False`` forces the userspace walk (tests).
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = O_PATH | os.O_CLOEXEC
        if use_openat2 is not False:
            try:
                return openat2(
                    root_fd, path.lstrip("/"), flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
                )
            except OSError as e:
                # ENOSYS before Linux 5.6, EPERM under seccomp profiles that predate it.
                if e.errno not in (errno.ENOSYS, errno.EPERM) or use_openat2:
                    raise
        return _walk_in_root(root_fd, path, flags)
    finally:
        os.close(root_fd)
