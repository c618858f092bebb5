"""Leaf helpers for the roles (content, snapshots, diff, task): the ``openat2`` binding,
the one in-root resolver (openat2 with the userspace walk as fallback) and small fd
helpers. Imports nothing of ours but :mod:`imgpipe.formats`.
"""

from __future__ import annotations

from .fdutil import CHUNK, DIR_FLAGS, DIR_NOFOLLOW, copy_fd, fsync_dir, remove_all, write_all
from .inroot import (
    MAX_SYMLINK_HOPS,
    MkdirHook,
    NotADirectoryInRoot,
    RootResolver,
    clean_components,
    open_in_root,
    walk_in_root,
)
from .openat2 import (
    AT_FDCWD,
    O_PATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    openat2,
    openat2_available,
)

__all__ = [
    "AT_FDCWD",
    "CHUNK",
    "DIR_FLAGS",
    "DIR_NOFOLLOW",
    "MAX_SYMLINK_HOPS",
    "O_PATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "MkdirHook",
    "NotADirectoryInRoot",
    "RootResolver",
    "clean_components",
    "copy_fd",
    "fsync_dir",
    "open_in_root",
    "openat2",
    "openat2_available",
    "remove_all",
    "walk_in_root",
    "write_all",
]
