"""The one place that touches mfusepy (untyped; ctypes over Debian's libfuse3).

Why mfusepy: a pure-Python wheel over the system's libfuse3 (apt ``fuse3``/``libfuse3-3``),
maintained, multi-threaded, with the high-level path API a read-only tree needs. pyfuse3
is sdist-only (Cython, libfuse3-dev) and needs trio; see pyproject.toml and
/work/notes/fusebench.md for the measurement behind the choice.
"""

from __future__ import annotations

import logging
from typing import Final

from .ops import LazyOps

__all__ = ["serve"]

#: Attributes and entries never change (the TOC is the tree): let the kernel keep them.
CACHE_TIMEOUT: Final = 3600.0


def serve(ops: LazyOps, fd: int) -> None:
    """Serve ``ops`` on the already mounted FUSE connection ``fd`` until it ends
    (unmounted, aborted) or the process is told to stop (SIGTERM, SIGINT, SIGHUP:
    libfuse's handlers end the loop). Blocks; raises RuntimeError if libfuse fails."""
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
    )
