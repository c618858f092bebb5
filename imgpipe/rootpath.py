"""Moved to :mod:`imgpipe.fs` (the one in-root resolver)."""

# shim for the spine merge: remove
from imgpipe.fs import (
    AT_FDCWD,
    MAX_SYMLINK_HOPS,
    O_PATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    open_in_root,
    openat2,
)

__all__ = [
    "AT_FDCWD",
    "MAX_SYMLINK_HOPS",
    "O_PATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "open_in_root",
    "openat2",
]
