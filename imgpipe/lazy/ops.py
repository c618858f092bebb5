"""The file system operations a lazy mount serves: the tree's metadata, reads by Range.

Called by libfuse (through :mod:`imgpipe.lazy.binding`) on its worker threads, with
paths. Everything but ``read`` answers from the :class:`~imgpipe.lazy.tree.Tree`; ``read``
asks the layer's :class:`~imgpipe.image.ranged.RangedLayer`, which serves only chunks
that verified against their ``chunkDigest``: a chunk that does not is EIO (and the layer's
error is recorded, naming it), never wrong bytes. The mount is read-only: no operation
that writes exists here, and the kernel answers EROFS for them (MS_RDONLY).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from imgpipe.formats.errors import ImgpipeError
from imgpipe.image.ranged import RangedLayer

from .tree import Node, Tree

__all__ = ["Activity", "LazyOps"]

_BLOCK: Final = 512
#: Reads are served a chunk's worth at a time by the kernel (max_read); a file's pages
#: stay in the page cache (kernel_cache: the content never changes).
_STATFS_BSIZE: Final = 4096


class Activity:
    """How many reads are being served now: the background fetch yields to them."""

    def __init__(self) -> None:
        self._busy = 0
        self._cond = threading.Condition()

    def __enter__(self) -> None:
        with self._cond:
            self._busy += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._busy -= 1
            if not self._busy:
                self._cond.notify_all()

    def wait_idle(self) -> None:
        """Return when no read is being served."""
        with self._cond:
            self._cond.wait_for(lambda: self._busy == 0)


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class LazyOps:
    """The operations over ``tree``; ``layers[i]`` reads layer ``i``'s files.

    ``on_error(layer, error, span)`` is told of every failed read (a corrupt chunk, a
    registry that stopped answering) with the compressed ``[start, end)`` of the blob
    the read needed, before the read fails with EIO.
    """

    use_ns = True  # times in nanoseconds (mfusepy's modern convention)

    def __init__(
        self,
        tree: Tree,
        layers: Sequence[RangedLayer],
        *,
        on_error: Callable[[int, ImgpipeError, tuple[int, int]], None],
        on_ready: Callable[[], None] = lambda: None,
        activity: Activity | None = None,
    ) -> None:
        self.tree = tree
        self.layers = layers
        self.on_error = on_error
        self.on_ready = on_ready
        self.activity = activity or Activity()

    def _node(self, path: str) -> Node:
        node = self.tree.lookup(path)
        if node is None:
            raise _oserror(errno.ENOENT)
        return node

    # -- libfuse's callbacks (the names and signatures are mfusepy's) ----------------------

    def init(self, path: str) -> None:
        self.on_ready()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        n = self._node(path)
        return {
            "st_ino": n.ino,
            "st_mode": n.mode,
            "st_nlink": n.nlink,
            "st_uid": n.uid,
            "st_gid": n.gid,
            "st_size": n.size,
            "st_rdev": n.rdev,
            "st_blocks": (n.size + _BLOCK - 1) // _BLOCK,
            "st_blksize": _STATFS_BSIZE,
            "st_atime": n.mtime_ns,
            "st_mtime": n.mtime_ns,
            "st_ctime": n.mtime_ns,
        }

    def readdir(self, path: str, fh: int) -> Iterator[str | tuple[str, dict[str, int], int]]:
        n = self._node(path)
        if n.children is None:
            raise _oserror(errno.ENOTDIR)
        yield "."
        yield ".."
        for name, child in n.children.items():
            yield name, {"st_mode": child.mode, "st_ino": child.ino}, 0

    def readlink(self, path: str) -> str:
        n = self._node(path)
        if not stat.S_ISLNK(n.mode):
            raise _oserror(errno.EINVAL)
        return n.target

    def open(self, path: str, flags: int) -> int:
        n = self._node(path)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise _oserror(errno.EROFS)
        if n.is_dir:
            raise _oserror(errno.EISDIR)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        n = self._node(path)
        if n.entry is None:
            raise _oserror(errno.EINVAL)
        if offset >= n.size or size <= 0:
            return b""
        layer = self.layers[n.layer]
        with self.activity:
            try:
                return layer.read_entry(n.entry, offset, size)
            except ImgpipeError as e:
                chunks = n.entry.chunks_for(offset, size)
                span = (chunks[0].offset, chunks[-1].end) if chunks else (0, 0)
                self.on_error(n.layer, e, span)
                raise _oserror(errno.EIO) from None

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        n = self._node(path)
        value = n.xattrs.get(name)
        if value is None:
            raise _oserror(errno.ENODATA)
        return value

    def listxattr(self, path: str) -> list[str]:
        return list(self._node(path).xattrs)

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": _STATFS_BSIZE,
            "f_frsize": _STATFS_BSIZE,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": self.tree.count,
            "f_ffree": 0,
            "f_namemax": 255,
        }
