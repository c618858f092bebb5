"""The lazy layer caches on disk, as ``content ls --lazy`` and ``gc`` see them.

::

    <root>/lazy/layers/<hex>/        one directory per layer (sha256 <hex>): the sparse
                                     blob, the record of the ranges present, ``lock``

A process that uses a cache (a FUSE server, a completion) holds a shared ``flock`` on its
``lock`` file; ``gc`` removes a cache only if it can take that lock exclusively (and the
layer is held by no image and no lease, :mod:`imgpipe.metadata.gc`), and removes it while
holding it, so a server cannot open it half-deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import Conflict, InvalidDigest, NotFound

__all__ = ["LAYERS_DIR", "LOCK_FILE", "CacheInfo", "LayerCaches", "disk_usage"]

LAYERS_DIR: Final = "lazy/layers"
LOCK_FILE: Final = "lock"


@dataclass(frozen=True)
class CacheInfo:
    """One layer's cache: its digest, the bytes it takes on disk (sparse: the blocks
    written, not the blob's size), whether a process holds it."""

    digest: Digest
    size: int
    locked: bool
    path: Path


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (st_blocks: a sparse file counts what it holds)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _try_lock(path: Path) -> int | None:
    """An exclusive lock on the cache's lock file (its fd), or None if held."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise NotFound(f"no lazy cache {path.name}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class LayerCaches:
    """The caches under ``root`` (an imgpipe root): :class:`imgpipe.metadata.gc.GCCaches`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.base = Path(root) / LAYERS_DIR

    def walk(self) -> Iterator[CacheInfo]:
        try:
            names = sorted(os.listdir(self.base))
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(".removing-"):  # a gc that died mid-removal
                shutil.rmtree(self.base / name, ignore_errors=True)
                continue
            try:
                digest = Digest.parse(f"sha256:{name}")
            except InvalidDigest:
                continue  # not ours (a temporary name): left alone
            path = self.base / name
            if not path.is_dir():
                continue
            try:
                fd = _try_lock(path)
            except NotFound:
                continue
            if fd is not None:
                os.close(fd)
            yield CacheInfo(digest, disk_usage(path), fd is None, path)

    def delete(self, digest: Digest) -> None:
        path = self.base / digest.encoded
        if not path.is_dir():
            raise NotFound(f"no lazy cache of {digest}")
        fd = _try_lock(path)
        if fd is None:
            raise Conflict(f"the lazy cache of {digest} is in use")
        try:
            # renamed first: a server that looks for it from now on finds none
            gone = path.with_name(f".removing-{digest.encoded}")
            os.rename(path, gone)
            shutil.rmtree(gone)
        finally:
            os.close(fd)
