"""The imgpipe root: where the content store and the metadata database live.

::

    <root>/content/blobs/sha256/<hex>     blobs exactly as served
    <root>/content/ingest/<ref-hash>/     partial writes, resumable
    <root>/metadata.db                    SQLite (WAL): images, labels, leases, snapshots
    <root>/reserved-space                 1 MiB kept for the database on a full disk

A store whose disk refuses writes still opens: on a read-only mount (or a root we may
not write) the database opens read-only, so ``images``, ``inspect`` and ``content
verify`` work and every write raises ReadOnlyStore. For a full disk the store keeps
``reserved-space``, an allocated file it deletes when it opens on a disk with less than
that free, so the commands that free space (``rmi``, ``gc``) can still write the
database; content writes never take the last :data:`~imgpipe.content.space.KEEP_FREE`
bytes, and the file is allocated again by the first opening that finds room.

The root is ``--root``, else ``$IMGPIPE_ROOT``, else ``/var/lib/imgpipe`` for root, else
``$XDG_DATA_HOME/imgpipe`` (``~/.local/share/imgpipe``), as DESIGN.md lays down.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from imgpipe.content.closing import Closing
from imgpipe.content.space import KEEP_FREE, available
from imgpipe.formats.errors import StorageError

if TYPE_CHECKING:
    from imgpipe.content import ContentStore
    from imgpipe.metadata import MetadataDB

__all__ = ["SYSTEM_ROOT", "Store", "default_root"]

#: The root for the superuser, like /var/lib/containerd.
SYSTEM_ROOT: Final = Path("/var/lib/imgpipe")

#: The file that keeps room for the metadata database on a full disk, and its size: as
#: much as content leaves free (one rmi or gc transaction, with the WAL index).
RESERVE_NAME: Final = "reserved-space"
RESERVE_SIZE: Final = KEEP_FREE


def default_root() -> Path:
    """The root to use when none is given: $IMGPIPE_ROOT, the system root, or the user's."""
    env = os.environ.get("IMGPIPE_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return SYSTEM_ROOT
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "imgpipe"


class Store(Closing):
    """The content store and metadata database under one root. Use as a context manager.

    Two processes may open the same root at once: blob writes are locked per ref and
    committed by atomic rename, and the database serialises writers.

    ``read_only``: open for reading only, whatever the disk allows. A root on a
    read-only mount, or one this user may not write, opens read-only by itself;
    :attr:`read_only` says which it is, and every write raises ReadOnlyStore.
    """

    content: ContentStore
    db: MetadataDB

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, read_only: bool = False
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        writable = not read_only and _writable_root(self.root)
        if writable:
            _keep_reserve(self.root)
        # imported here: `from imgpipe.store import default_root` (ps, wait, logs) must
        # not load the content store and SQLite
        from imgpipe.content.store import ContentStore  # noqa: PLC0415
        from imgpipe.metadata.db import MetadataDB  # noqa: PLC0415

        self.content = ContentStore(self.root / "content")
        self.db = MetadataDB(self.root / "metadata.db", read_only=not writable)

    @property
    def read_only(self) -> bool:
        """True if the store opened read-only (asked to, or the system refused writes)."""
        return self.db.read_only

    def close(self) -> None:
        self.db.close()


def _writable_root(root: Path) -> bool:
    """Create ``root`` if missing; False if the system will not let us write in it."""
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and root.is_dir():
            return False
        raise StorageError(f"cannot create the store's root {root}: {e.strerror}") from e
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return False
    except OSError:
        pass
    return os.access(root, os.W_OK)


def _keep_reserve(root: Path) -> None:
    """Give the reserve back to the database on a full disk, or allocate it again when
    there is room for it and as much again (best effort: a failure costs only the
    reserve)."""
    path = root / RESERVE_NAME
    free = available(root)
    if free < 0:
        return
    if free < RESERVE_SIZE:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    if free < 2 * RESERVE_SIZE or path.exists():
        return
    tmp = root / f".{RESERVE_NAME}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            # Allocated, not sparse: a sparse file would free nothing when deleted.
            os.posix_fallocate(fd, 0, RESERVE_SIZE)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
