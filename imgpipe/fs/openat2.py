"""The ``openat2(2)`` system call (Linux >= 5.6), through ctypes: Python has no binding.

Only what in-root resolution needs: the call itself, its ``RESOLVE_*`` flags and a probe
of whether it works in this process (ENOSYS before 5.6, EPERM or ENOSYS under seccomp
profiles that predate it: container runtimes' defaults often do).
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Final

__all__ = [
    "AT_FDCWD",
    "O_PATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "openat2",
    "openat2_available",
]

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


@functools.cache
def openat2_available() -> bool:
    """Whether ``openat2`` with ``RESOLVE_IN_ROOT`` works in this process (probed once)."""
    try:
        fd = openat2(
            AT_FDCWD,
            "/",
            os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )
    except OSError:
        # ENOSYS before 5.6; EPERM/ENOSYS from seccomp profiles that predate it.
        return False
    os.close(fd)
    return True
