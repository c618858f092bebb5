"""The imgpipe error hierarchy.

Every failure imgpipe reports on purpose is one of these classes. containerd's errdefs are
the model: a handful of kinds that callers branch on, each carrying a message with the
context (which digest, which file, which reference). Where a builtin exception already
means the same thing, the class also subclasses it, so ``except LookupError`` or
``except ValueError`` in caller code keeps working.

::

    ImgpipeError
    ├── InvalidArgument (ValueError)        bad input from the caller or a document
    │   ├── InvalidDigest                    not ``algorithm:hex`` of a known algorithm
    │   ├── InvalidReference                 an image reference that does not parse
    │   └── MalformedDocument                JSON that is not the manifest/index/config it claims
    ├── NotFound (LookupError)              no such blob, image, snapshot, ref
    ├── AlreadyExists                        the object exists (often success for callers)
    ├── Conflict                             someone else holds the lock (a ref being written)
    ├── FailedPrecondition                   state does not allow the operation
    │   └── IntegrityError                   bytes are not what was promised
    │       ├── DigestMismatch               hash differs from the expected digest
    │       │   └── CorruptLayer             a lazily read layer's footer, TOC or chunk is bad
    │       └── SizeMismatch                 byte count differs from the expected size
    ├── Unsupported                          a known format we refuse (schema1) or lack
    │   └── RangeNotSupported                a server ignores HTTP Range (a lazy read cannot work)
    ├── Unauthorized (PermissionError)       credentials missing or refused
    ├── Unavailable (ConnectionError)        a server or resource cannot be reached now
    ├── ResourceLimit                        a configured bound was exceeded (sizes, ratios)
    └── StorageError                         the system refused the store's disk (I/O error)
        ├── NoSpace                          the disk is full (bytes needed and free)
        └── ReadOnlyStore                    the store is on a read-only mount, or not ours to write

A StorageError is deliberately not an OSError: code that retries a dropped connection
(``except OSError``) must never retry a full disk.

The command line maps each class to its own exit code (``imgpipe.cli.exitcodes``).
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "Conflict",
    "CorruptLayer",
    "DigestMismatch",
    "FailedPrecondition",
    "ImgpipeError",
    "IntegrityError",
    "InvalidArgument",
    "InvalidDigest",
    "InvalidReference",
    "MalformedDocument",
    "NoSpace",
    "NotFound",
    "RangeNotSupported",
    "ReadOnlyStore",
    "ResourceLimit",
    "SizeMismatch",
    "StorageError",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
]


class ImgpipeError(Exception):
    """Base of every error imgpipe raises on purpose."""


class InvalidArgument(ImgpipeError, ValueError):
    """The caller or a document gave a value that cannot be used."""


class InvalidDigest(InvalidArgument):
    """A digest string is not ``algorithm:encoded`` for a supported algorithm."""


class InvalidReference(InvalidArgument):
    """An image reference or transport string does not parse."""


class MalformedDocument(InvalidArgument):
    """A manifest, index, config or layout file is not what it claims to be."""


class NotFound(ImgpipeError, LookupError):
    """The named object does not exist."""


class AlreadyExists(ImgpipeError):
    """The object already exists. Writers of content treat this as success."""


class Conflict(ImgpipeError):
    """Another writer holds the object (for example an ingest ref being written)."""


class FailedPrecondition(ImgpipeError):
    """The current state does not allow the operation."""


class IntegrityError(FailedPrecondition):
    """Bytes are not what their descriptor promised."""


class DigestMismatch(IntegrityError):
    """The bytes hash to another digest than the one expected."""

    def __init__(self, message: str, *, expected: str = "", actual: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class CorruptLayer(DigestMismatch):
    """A layer read by Range (eStargz, zstd:chunked) contradicts what it promises: its
    footer does not parse, its TOC or a chunk does not hash to its digest or does not
    decompress. A DigestMismatch, because the blob cannot be the one its digest names."""


class SizeMismatch(IntegrityError):
    """The byte count differs from the size expected."""

    def __init__(self, message: str, *, expected: int = -1, actual: int = -1) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class Unsupported(ImgpipeError):
    """A format or feature imgpipe knows about but does not (or will not) handle."""


class RangeNotSupported(Unsupported):
    """A server answered a Range request with the whole blob (or refused it): reading
    part of a blob is impossible there. Lazy readers report it rather than download all."""


class Unauthorized(ImgpipeError, PermissionError):
    """Credentials are missing or were refused."""


class Unavailable(ImgpipeError, ConnectionError):
    """A server or local resource cannot be reached right now; retrying may help."""


class ResourceLimit(ImgpipeError):
    """A configured bound (document size, decompressed size, ratio) was exceeded."""


class StorageError(ImgpipeError):
    """The system refused the store's disk: an I/O error, no permission, no space, a
    read-only mount. Reported at once, never retried: waiting does not free a disk."""


class NoSpace(StorageError):
    """The disk is full. ``needed`` and ``free`` are byte counts (-1 when not known)."""

    def __init__(self, message: str, *, needed: int = -1, free: int = -1) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free


class ReadOnlyStore(StorageError):
    """The store can be read but not written (a read-only mount, or no write permission):
    listing and inspecting work, anything that writes raises this."""
