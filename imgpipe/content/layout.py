"""Where the content store keeps things: the paths under its root, and the two moves
that change them (a blob directory made durable, an ingest removed atomically).

Layout under the store root (``<imgpipe root>/content``), as containerd's local store::

    blobs/<alg>/<hex>            committed blobs, read-only (0444), complete and verified
    ingest/<sha256(ref)>/        one in-progress write per ref
        ref                      the ref string
        data                     the bytes written so far
        startedat, updatedat     Unix times as decimal text
        total, expected          optional: declared size (decimal) and digest
        lock                     flock(2) target: held by the one writer of this ref
    ingest/.trash-*              an ingest being removed (renamed first, then deleted)

Paths are computed only from validated digests and refs (``check_digest``,
``check_ref``), so nothing a caller passes can name a path outside the root.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument

__all__ = [
    "BLOB_MODE",
    "DATA_MODE",
    "DIR_MODE",
    "MAX_REF_LENGTH",
    "DirSync",
    "Layout",
    "check_digest",
    "check_ref",
    "check_size",
    "fsync_dir",
    "ref_key",
]

#: Longest ref accepted, in UTF-8 bytes: refs are names like ``import-sha256:<hex>`` and
#: are stored in a small file that is read back with a size cap.
MAX_REF_LENGTH: Final[int] = 1024

DIR_MODE: Final = 0o755
DATA_MODE: Final = 0o644
BLOB_MODE: Final = 0o444


class Layout:
    """The paths of one store root. Computing a path does no I/O."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.ingest = root / "ingest"
        self.dirs = DirSync()

    def blob_path(self, digest: Digest) -> Path:
        d = check_digest(digest)
        return self.blobs / d.algorithm / d.encoded

    def ingest_dir(self, ref: str) -> Path:
        return self.ingest / ref_key(ref)

    def ensure_blob_dir(self, algorithm: str) -> Path:
        """``blobs/<algorithm>``, created (and made durable) if missing."""
        directory = self.blobs / algorithm
        if not directory.is_dir():
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            # Make the new directories themselves durable (with the names renamed in).
            self.dirs.sync(self.blobs)
            self.dirs.sync(self.root)
        return directory

    def remove_ingest_dir(self, directory: Path) -> None:
        """Remove an ingest whose lock the caller holds.

        Renaming first makes the removal atomic for everyone else: the ingest is gone
        from its path in one step, and a newcomer creates a fresh directory instead of
        finding a half-deleted one.
        """
        trash = self.ingest / f".trash-{directory.name}-{os.urandom(8).hex()}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)


class DirSync:
    """Directory fsyncs (the durability of names renamed in), done now or batched.

    Outside :meth:`deferred` blocks ``sync`` fsyncs at once. Inside one (from any
    thread) it only records the directory, and the block's end fsyncs each recorded one
    once: a pull that commits many blobs into ``blobs/sha256`` pays one journal commit
    for their names instead of one per blob, and no transfer waits for another's. The
    data is still fsynced before each rename (a name never points at bytes that are not
    on the disk); what a crash inside the block can lose is only names, i.e. blobs to
    fetch again. Thread-safe; blocks may nest and overlap.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._depth = 0
        self._pending: dict[Path, None] = {}  # ordered, no duplicates

    def sync(self, path: Path) -> None:
        """fsync the directory ``path`` now, or at the end of the open deferred blocks."""
        with self._lock:
            if self._depth:
                self._pending[path] = None
                return
        fsync_dir(path)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Batch the directory fsyncs of the block; they are done when it ends (also on
        an error: what was committed keeps its name). A failing fsync at the end of a
        block that succeeded is raised (OSError)."""
        with self._lock:
            self._depth += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._lock:
                self._depth -= 1
            if ok:
                self.flush()
            else:
                with contextlib.suppress(OSError):
                    self.flush()

    def flush(self) -> None:
        """fsync every recorded directory now. One flush at a time: a caller returns only
        once the fsyncs of everything recorded before its call are done, even those a
        concurrent flush took."""
        with self._flushing:
            with self._lock:
                paths, self._pending = list(self._pending), {}
            error: OSError | None = None
            for path in paths:
                try:
                    fsync_dir(path)
                except FileNotFoundError:
                    pass  # removed since: no name in it to keep
                except OSError as e:
                    error = error or e
            if error is not None:
                raise error


def check_digest(digest: Digest) -> Digest:
    """Paths are computed only from validated digests: re-validate whatever we were given."""
    if not isinstance(digest, Digest):
        raise InvalidArgument(f"expected a Digest, not {type(digest).__name__}")
    return Digest(digest.algorithm, digest.encoded)


def check_ref(ref: str) -> None:
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument(f"ingest ref must be a non-empty string, not {ref!r}")
    try:
        encoded = ref.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"ingest ref {ref!r} is not valid Unicode") from None
    if len(encoded) > MAX_REF_LENGTH:
        raise InvalidArgument(f"ingest ref is longer than {MAX_REF_LENGTH} bytes")


def check_size(size: int, what: str) -> None:
    """InvalidArgument unless ``size`` is a non-negative int."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{what} must be a non-negative integer, not {size!r}")


def ref_key(ref: str) -> str:
    # The directory is named by a hash of the ref, as containerd does: any ref string
    # (slashes, "..", NUL-free Unicode) maps to one safe, fixed-length name.
    return hashlib.sha256(ref.encode("utf-8")).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
