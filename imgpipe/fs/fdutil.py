"""Small helpers on file descriptors the roles share: full writes, copies, ``rm -rf`` that
never follows a link, directory fsync."""

from __future__ import annotations

import os
import stat
from typing import Final

__all__ = ["CHUNK", "DIR_FLAGS", "DIR_NOFOLLOW", "copy_fd", "fsync_dir", "remove_all", "write_all"]

#: Flags for every directory we open: readable (for scandir and fsetxattr), closed on exec.
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: The same, refusing a symlink: below a root nothing may be followed by the kernel.
DIR_NOFOLLOW: Final = DIR_FLAGS | os.O_NOFOLLOW
#: Copy buffer: flat memory, few syscalls.
CHUNK: Final = 1 << 20


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy_fd(src: int, dst: int) -> None:
    """Copy ``src`` from its offset to EOF into ``dst``."""
    while chunk := os.read(src, CHUNK):
        write_all(dst, chunk)


def fsync_dir(directory: int | str | os.PathLike[str]) -> None:
    """Make renames and creations in ``directory`` (an fd or a path) durable: the rename
    is atomic; this makes it stay after a crash."""
    if isinstance(directory, int):
        os.fsync(directory)
        return
    fd = os.open(directory, DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_all(dir_fd: int, name: str) -> bool:
    """``rm -rf`` of ``name`` in ``dir_fd``, never following a symlink; False if absent.

    Iterative (a deep tree cannot exhaust Python's recursion), every step relative to an
    fd opened with ``O_NOFOLLOW``, so a symlink inside is removed, not followed.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return True
    # Each frame: (parent fd, name, own fd); we own every fd except the caller's.
    stack: list[tuple[int, str, int]] = [(dir_fd, name, os.open(name, DIR_NOFOLLOW, dir_fd=dir_fd))]
    try:
        while stack:
            parent, dname, fd = stack[-1]
            descended = False
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        sub = os.open(entry.name, DIR_NOFOLLOW, dir_fd=fd)
                        stack.append((fd, entry.name, sub))
                        descended = True
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if descended:
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=parent)
    finally:
        for _, _, fd in stack:
            os.close(fd)
    return True
