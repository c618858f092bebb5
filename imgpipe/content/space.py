"""The disk under the content store: how much room is left, and the system refusing.

A blob that cannot fit is refused before its first byte is written (``ensure_space``),
with the bytes it needs and the bytes free; a write the system refuses anyway (another
writer took the room, a read-only mount, no permission, an I/O error) becomes one
:class:`~imgpipe.formats.errors.StorageError` naming the path (``refused``), never a
bare ``OSError`` that a caller retrying dropped connections might retry.

Content never takes the last :data:`KEEP_FREE` bytes: they are the metadata database's,
so that on a disk our own downloads filled, ``rmi`` and ``gc`` can still write the
database and free space.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

from imgpipe.formats.errors import NoSpace, ReadOnlyStore, StorageError

__all__ = ["KEEP_FREE", "available", "ensure_space", "refused"]

#: Free bytes content writes leave to the metadata database (a write transaction of
#: rmi or gc: a few hundred WAL pages, and the 32 KiB ``-shm`` file).
KEEP_FREE: Final = 1 << 20

_NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_READ_ONLY: Final = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_REFUSALS: Final = _NO_SPACE | _READ_ONLY | {errno.EIO}


def available(path: Path) -> int:
    """Free bytes for us on the file system holding ``path`` (or its nearest existing
    parent: an ingest directory may not exist yet); -1 if that cannot be told."""
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except FileNotFoundError:
            continue
        except OSError:
            return -1
        # root may write into the blocks the file system reserves for it
        return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    return -1


def ensure_space(path: Path, needed: int, what: str) -> None:
    """NoSpace unless ``needed`` more bytes fit under ``path`` leaving :data:`KEEP_FREE`.

    A check before writing, so a blob that cannot fit fails at once rather than after
    its download; the write itself may still meet a full disk (concurrent writers).
    """
    if needed <= 0:
        return
    free = available(path)
    if free >= 0 and needed > free - KEEP_FREE:
        raise NoSpace(
            f"no space left on device for {what} in {path}: needs {needed} bytes, "
            f"{free} free, and imgpipe leaves the last {KEEP_FREE} to its metadata database",
            needed=needed,
            free=free,
        )


def refused(e: OSError, path: Path, what: str, *, needed: int = -1) -> StorageError | None:
    """The StorageError for ``e``, met writing ``path`` (for ``what``), or None when ``e``
    is not the system refusing (the caller re-raises it as it is). ``needed``: the bytes
    still to write, when known, for the message of a full disk."""
    if e.errno not in _REFUSALS:
        return None
    reason = e.strerror or os.strerror(e.errno or 0)
    if e.errno in _NO_SPACE:
        free = available(path)
        more = f"needs {needed} more bytes, " if needed >= 0 else ""
        return NoSpace(
            f"{reason}: writing {what} to {path}: {more}{max(free, 0)} bytes free",
            needed=needed,
            free=free,
        )
    if e.errno in _READ_ONLY:
        return ReadOnlyStore(f"store is read-only ({reason}): cannot write {what} to {path}")
    return StorageError(f"{reason}: writing {what} to {path}")
