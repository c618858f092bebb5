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

import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Final

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument

__all__ = [
    "BLOB_MODE",
    "DATA_MODE",
    "DIR_MODE",
    "MAX_REF_LENGTH",
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
            # Make the new directories themselves durable before blobs are renamed in.
            fsync_dir(self.blobs)
            fsync_dir(self.root)
        return directory

    def remove_ingest_dir(self, directory: Path) -> None:
        """Remove an ingest whose lock the caller holds.

        Renaming first makes the removal atomic for everyone else: the ingest is gone
        from its path in one step, and a newcomer creates a fresh directory instead of
        finding a half-deleted one.
        """
        trash = self.ingest / f".trash-{directory.name}-{secrets.token_hex(8)}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)


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
