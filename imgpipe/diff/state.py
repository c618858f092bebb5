"""What the applier keeps while it applies one layer: the resolvers of the root and the
lower layers, the parent-directory fd cache, the inodes this layer made, the directory
times to restore, and the bounded warnings.

Parents are resolved and created in containerd's way: 0755, and in overlay mode copying
the owner, mode, times and non-``trusted.*`` xattrs of the same directory in the nearest
lower layer (containerd's ``mkparent`` with parents), so the merged view does not change.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import NamedTuple

from imgpipe.fs import DIR_NOFOLLOW, RootResolver

from .metadata import copy_meta_fd
from .options import MAX_WARNINGS, WHITEOUT_DELETE, ApplyOptions

__all__ = ["ApplyState", "DirTimes"]

#: Parent fds kept open at once: runs of entries in one directory hit when a tar is
#: sorted, but some writers interleave directories (benchmarks/unpack.py's image cycles
#: through 150): 512 covers those, within an eighth of RLIMIT_NOFILE.
_CACHE_SIZE = 512


def _cache_size() -> int:
    """:data:`_CACHE_SIZE`, or an eighth of the fd limit when that is lower."""
    import resource  # noqa: PLC0415 (only when a layer is applied)

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return _CACHE_SIZE
    return max(64, min(_CACHE_SIZE, soft // 8))


class DirTimes(NamedTuple):
    """A directory's times from the tar, set again at the end (children change them).
    (A NamedTuple, not a dataclass: every unpack defines it; nothing changes one.)"""

    components: list[str]
    ino: int
    dev: int
    atime: int
    mtime: int


class ApplyState:
    def __init__(self, root: str | os.PathLike[str], options: ApplyOptions) -> None:
        self.opts = options
        self.same_owner = options.same_owner
        self.root = RootResolver(root, use_openat2=options.use_openat2)
        self.overlay = options.whiteouts != WHITEOUT_DELETE
        self.lowers: list[RootResolver] = []
        try:
            if self.overlay:
                self.lowers = [
                    RootResolver(p, use_openat2=options.use_openat2) for p in options.lowers
                ]
        except BaseException:
            self.close()
            raise
        self.warnings: list[str] = []
        self._dropped_warnings = 0
        # Inodes this layer created or re-listed: an opaque marker keeps these. Only
        # the delete mode's opaque walk asks (overlay marks the directory instead), so
        # only it pays a stat per entry for them.
        self.made: set[tuple[int, int]] = set()
        self.track_made = not self.overlay
        self.dirs: list[DirTimes] = []
        # Parent path -> open fd, for runs of entries in one directory (tars are sorted).
        # Any removal clears it: a cached fd must never stand for a path that now
        # resolves elsewhere (containerd's CVE-2025-47290 was such a stale cache).
        self._cache: dict[tuple[str, ...], int] = {}
        self._cache_size = _cache_size()

    def close(self) -> None:
        self.clear_cache()
        self.root.close()
        for r in self.lowers:
            r.close()

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        else:
            self._dropped_warnings += 1

    def all_warnings(self) -> tuple[str, ...]:
        if self._dropped_warnings:
            return (*self.warnings, f"... and {self._dropped_warnings} more warnings")
        return tuple(self.warnings)

    def clear_cache(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def parent_fd(self, components: Sequence[str]) -> int:
        """The directory at ``components``, created if missing; owned by the cache (the
        caller must not close it, and must not keep it past a removal)."""
        key = tuple(components)
        fd = self._cache.get(key)
        if fd is None:
            if len(self._cache) >= self._cache_size:
                self.clear_cache()
            fd = self.root.open_dir(
                components, create=True, mkdir_hook=self.copy_up_dir if self.overlay else None
            )
            self._cache[key] = fd
        return fd

    def lower_lstat(self, components: Sequence[str]) -> tuple[int, os.stat_result] | None:
        """The nearest lower layer's ``(parent fd, stat)`` of a path, or None.

        The caller closes the fd. A lower whose parent is missing or not a directory
        does not have the path.
        """
        for lower in self.lowers:
            found = lower.lstat(components)
            if found is not None:
                return found
        return None

    def copy_up_dir(self, parent_fd: int, name: str, resolved: Sequence[str]) -> None:
        # containerd's mkparent with Parents: a directory made implicitly in an upper
        # layer takes the metadata of the directory it shadows, so the merged view does
        # not change the directory's owner or mode.
        found = self.lower_lstat(resolved)
        if found is None:
            return
        lfd, st = found
        try:
            if not stat.S_ISDIR(st.st_mode):
                return  # replaced in the lower: keep the defaults
            src = os.open(resolved[-1], DIR_NOFOLLOW, dir_fd=lfd)
            try:
                dst = os.open(name, DIR_NOFOLLOW, dir_fd=parent_fd)
                try:
                    copy_meta_fd(src, dst, st, same_owner=self.same_owner, warn=self.warn)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        finally:
            os.close(lfd)
