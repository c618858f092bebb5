"""The allocator setting of the verbs that recompress: big buffers go back at ``free``.

A conversion hands 1-4 MiB buffers between threads (decoded chunks, eStargz member
batches, encoder output). glibc serves them from per-thread arenas and keeps what was
freed there for reuse, so a conversion's peak RSS grows with the arenas' high-water
marks, not with what is alive: ``convert --estargz`` of debian-multi peaked at 112-116
MB, 78 MB once buffers of 1 MiB and more were mapped on their own. The setting is the
process's, so the command sets it (library callers keep their own allocator policy).
"""

from __future__ import annotations

from typing import Final

__all__ = ["MMAP_THRESHOLD", "return_big_buffers"]

#: Allocations of at least this many bytes get their own mapping, unmapped when freed.
MMAP_THRESHOLD: Final = 1 << 20
_M_MMAP_THRESHOLD: Final = -3  # glibc's mallopt parameter (malloc.h)


def return_big_buffers() -> bool:
    """Map buffers of MMAP_THRESHOLD bytes or more individually (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``); False where the C library has no mallopt."""
    import ctypes  # here: only the converting verbs pay for it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
