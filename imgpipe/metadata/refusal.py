"""What a SQLite error means for the store: a lock to wait for, or the system refusing.

SQLite reports a write lock held by someone else as SQLITE_BUSY or SQLITE_LOCKED (the
busy timeout has already waited for it by then); only that is Unavailable (exit 13:
retrying later may help). A full disk is SQLITE_FULL, or SQLITE_IOERR when it is the
``-shm`` file that cannot grow (IOERR_SHMSIZE); a read-only mount is SQLITE_READONLY or
SQLITE_CANTOPEN (the ``-shm``/``-wal`` files cannot be created). Those are the system
refusing: a :class:`~imgpipe.formats.errors.StorageError` (exit 1), reported at once and
never retried as if it were a lock, naming the file and, for a full disk, the space free.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

from imgpipe.formats.errors import ImgpipeError, NoSpace, ReadOnlyStore, StorageError, Unavailable

__all__ = ["LOW_SPACE", "classify", "free_bytes", "is_lock", "read_only_reason"]

# SQLite's primary result codes (the low byte of an extended code).
_PERM: Final = 3
_BUSY: Final = 5
_LOCKED: Final = 6
_READONLY: Final = 8
_IOERR: Final = 10
_FULL: Final = 13
_CANTOPEN: Final = 14

#: Below this many free bytes an I/O error is read as a full disk: SQLite reports a
#: ``-shm`` file that cannot be grown to its 32 KiB as IOERR_SHMSIZE, not SQLITE_FULL.
LOW_SPACE: Final = 1 << 20


def _code(e: sqlite3.Error) -> int:
    code = getattr(e, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else 0


def is_lock(e: sqlite3.Error) -> bool:
    """True if ``e`` says another connection holds a lock (worth waiting for)."""
    return _code(e) in (_BUSY, _LOCKED)


def free_bytes(directory: Path) -> int:
    """Bytes this process may still write on the file system of ``directory`` (root
    may use the blocks reserved for it); -1 if that cannot be told."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return -1
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def read_only_reason(directory: Path) -> str:
    """Why files cannot be created in ``directory`` ("" if they can, as far as we see)."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        return ""
    if not os.access(directory, os.W_OK):
        return "no write permission"
    return ""


def classify(e: sqlite3.Error, path: Path, doing: str) -> ImgpipeError:
    """The error to raise for ``e``, met on the database ``path`` while ``doing``."""
    code = _code(e)
    where = f"metadata database {path}"
    if code in (_BUSY, _LOCKED):
        return Unavailable(f"{where}: {e} while {doing} (another imgpipe holds the write lock)")
    free = free_bytes(path.parent)
    if code == _FULL or (code == _IOERR and 0 <= free < LOW_SPACE):
        message = f"{where}: no space left on device ({free} bytes free) while {doing}"
        return NoSpace(message, free=free)
    if code in (_READONLY, _CANTOPEN, _PERM, _IOERR) and (why := read_only_reason(path.parent)):
        return ReadOnlyStore(f"{where} is read-only ({why}) while {doing}")
    if code in (_READONLY, _CANTOPEN, _PERM, _IOERR):
        return StorageError(f"{where}: {e} while {doing}")
    # anything else (a corrupt file, a misuse) as before: the resource is not usable now
    return Unavailable(f"{where}: {e} while {doing}")
