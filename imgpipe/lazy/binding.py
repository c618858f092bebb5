"""The one place that touches mfusepy (untyped; ctypes over Debian's libfuse3).

Why mfusepy: a pure-Python wheel over the system's libfuse3 (apt ``fuse3``/``libfuse3-3``),
maintained, multi-threaded, with the high-level path API a read-only tree needs. pyfuse3
is sdist-only (Cython, libfuse3-dev) and needs trio; benchmarks/fuse_bindings.py and
benchmarks/RESULTS.md hold the measurement behind the choice.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from .ops import LazyOps

__all__ = ["serve"]

#: Attributes and entries never change (the TOC is the tree): let the kernel keep them.
CACHE_TIMEOUT: Final = 3600.0
#: libfuse's worker threads: each read waiting on a Range fetch holds one (libfuse's
#: default of 10 would let ten slow fetches stall every other read of the mount).
MAX_THREADS: Final = 32


def serve(ops: LazyOps, fd: int) -> None:
    """Serve ``ops`` on the already mounted FUSE connection ``fd`` until it ends
    (unmounted, aborted) or the process is told to stop (SIGTERM, SIGINT, SIGHUP:
    libfuse's handlers end the loop). Blocks; raises RuntimeError if libfuse fails."""
    # libfuse3 by name: mfusepy otherwise searches for libfuse2 first (~15 ms, and a
    # host with both would get the old library)
    os.environ.setdefault("FUSE_LIBRARY_PATH", "libfuse3.so.3")
    import mfusepy  # noqa: PLC0415 (loads libfuse3: only the server process needs it)

    logging.getLogger("fuse").setLevel(logging.CRITICAL)  # errors go to the state file
    mfusepy.FUSE(
        ops,
        f"/dev/fd/{fd}",
        foreground=True,
        use_ino=True,
        kernel_cache=True,
        attr_timeout=CACHE_TIMEOUT,
        entry_timeout=CACHE_TIMEOUT,
        negative_timeout=CACHE_TIMEOUT,
        max_threads=MAX_THREADS,
    )
