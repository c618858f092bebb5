"""Integrity at the edge: the one reader every outside byte passes through.

A blob read from a registry, a layout directory, an archive or the store itself is
trusted only after its digest and size checked out. ``open_verified(reader, desc)`` opens
the blob from any ``BlobReader`` and wraps the raw stream in a ``VerifyingReader``, which
enforces both while the caller reads, so there is a single place where that rule lives:

- it never hands out a byte past the declared size: when the declared size is reached it
  probes the source for one more byte, and a source that has one is a ``SizeMismatch``;
- a source that ends before the declared size is a ``SizeMismatch``;
- when the declared size is reached the digest is compared, and a difference is a
  ``DigestMismatch``.

The checks run on the read that delivers the last declared byte, *before* that chunk is
returned, so bad content never reaches the caller in full, and a caller that has read to
the end has verified everything. Errors are sticky: once a check failed, every later read
raises the same error.

A read can resume: ``open_verified(reader, desc, resume=writer)`` skips the ``offset``
bytes the writer already holds (seeking, which a registry stream turns into a Range
request) and continues the writer's hash state in place, so a resumed ingest hashes
every byte exactly once. ``check_hashed`` is the end check on its own, for bytes that
were hashed elsewhere (a writer committing what it was given).
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import BinaryIO, Final, Protocol

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import (
    DigestMismatch,
    IntegrityError,
    InvalidArgument,
    SizeMismatch,
)

__all__ = [
    "CHUNK_SIZE",
    "BlobReader",
    "Resume",
    "VerifyingReader",
    "check_hashed",
    "digest_stream",
    "open_verified",
]

#: Buffer size for streaming copies and hashing: large enough that per-call overhead is
#: noise next to sha256 (about 1.5 GB/s here), small enough that memory stays flat.
CHUNK_SIZE: Final[int] = 1 << 20


class BlobReader(Protocol):
    """Anything blobs can be read from by descriptor: a transport source, the store."""

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The blob's bytes exactly as stored, unverified; the caller closes the stream."""
        ...


class Resume(Protocol):
    """Where a verified read picks up: ``offset`` bytes already hashed into ``digester``.

    ``ContentStore``'s ``Writer`` is one: a resumed ingest's data re-hashed.
    """

    @property
    def offset(self) -> int: ...

    @property
    def digester(self) -> Digester: ...


def open_verified(
    reader: BlobReader, desc: Descriptor, *, resume: Resume | None = None
) -> VerifyingReader:
    """``reader.open_blob(desc)`` wrapped in a VerifyingReader for ``desc``'s digest, size.

    With ``resume``, the first ``resume.offset`` bytes of the blob are skipped (a seek if
    the stream can, else read and dropped) and the reader continues ``resume.digester``
    in place: reading to the end verifies the whole blob, the skipped part included.
    Raises what ``open_blob`` raises; SizeMismatch if the stream ends inside the skipped
    part; InvalidArgument if the digester's algorithm is not the digest's.
    """
    raw = reader.open_blob(desc)
    try:
        if resume is None or not resume.offset:
            digester = None if resume is None else resume.digester
            return VerifyingReader(raw, digest=desc.digest, size=desc.size, digester=digester)
        _skip(raw, resume.offset)
        return VerifyingReader(
            raw,
            digest=desc.digest,
            size=desc.size,
            offset=resume.offset,
            digester=resume.digester,
        )
    except BaseException:
        raw.close()
        raise


def check_hashed(digester: Digester, count: int, *, digest: Digest, size: int) -> None:
    """The end check: ``count`` bytes hashed into ``digester`` are the blob ``digest``.

    SizeMismatch if ``count`` is not ``size``, DigestMismatch if the hash differs; both
    carry ``expected`` and ``actual``.
    """
    if count != size:
        raise SizeMismatch(
            f"content {digest}: {count} bytes, {size} were declared",
            expected=size,
            actual=count,
        )
    actual = digester.digest()
    if actual != digest:
        raise DigestMismatch(
            f"content hashes to {actual}, {digest} was expected",
            expected=str(digest),
            actual=str(actual),
        )


class VerifyingReader(io.BufferedIOBase, BinaryIO):
    """A read-only binary stream over ``raw`` that checks ``size`` and ``digest``.

    ``read(n)`` returns ``n`` bytes unless the declared end is reached (it loops over
    short reads of the source, like a buffered reader); ``read1`` does at most one read
    of the source; ``readinto`` reads straight into the caller's buffer. Raises
    ``SizeMismatch`` if the source ends early or has more bytes than declared,
    ``DigestMismatch`` if the bytes hash to another digest; both carry ``expected`` and
    ``actual``. Closing the reader closes ``raw``. Not thread-safe.

    To resume, ``offset`` says how many bytes of the blob come before ``raw``'s first one
    and ``digester`` holds their hash; the reader updates that digester in place (it is
    not copied), so whoever owns it sees the hash of everything read.
    """

    def __init__(
        self,
        raw: BinaryIO,
        *,
        digest: Digest,
        size: int,
        offset: int = 0,
        digester: Digester | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(digest, Digest):
            raise InvalidArgument(f"digest must be a Digest, not {type(digest).__name__}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"size must be a non-negative integer, not {size!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= size:
            raise InvalidArgument(f"offset must be in [0, {size}], not {offset!r}")
        if digester is None:
            if offset:
                raise InvalidArgument("resuming at an offset needs the digester of those bytes")
            digester = Digester(digest.algorithm)
        elif digester.algorithm != digest.algorithm:
            raise InvalidArgument(
                f"a {digester.algorithm} digester cannot verify the {digest.algorithm} {digest}"
            )
        self._raw = raw
        self._raw_readinto = getattr(raw, "readinto", None)
        self._expected = digest
        self._size = size
        self._digester = digester
        self._offset = offset
        self._verified = False
        self._error: IntegrityError | None = None

    # -- what the reader knows ------------------------------------------------------------

    @property
    def expected(self) -> Digest:
        """The digest the content must hash to."""
        return self._expected

    @property
    def size(self) -> int:
        """The declared size in bytes."""
        return self._size

    @property
    def offset(self) -> int:
        """How many bytes of the blob were read (or resumed from) so far."""
        return self._offset

    @property
    def verified(self) -> bool:
        """True once every byte was read and both checks passed."""
        return self._verified

    # -- io interface ---------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes (all remaining if ``n`` is negative or None); b"" at the end.

        Raises SizeMismatch or DigestMismatch as described on the class.
        """
        self._check_open()
        if n is None or n < 0:
            parts = []
            while chunk := self._step(CHUNK_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        if n == 0:
            return b""
        first = self._step(n)
        if len(first) == n or not first:
            return first
        parts = [first]
        got = len(first)
        while got < n and (chunk := self._step(n - got)):
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read1(self, n: int = -1) -> bytes:
        """At most one read of the source: up to ``n`` bytes (a chunk if negative)."""
        self._check_open()
        if n == 0:
            return b""
        return self._step(CHUNK_SIZE if n < 0 else n)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill ``b`` as ``read(len(b))`` would; the number of bytes stored."""
        self._check_open()
        view = memoryview(b).cast("B")
        got = 0
        while got < len(view) and (n := self._step_into(view[got:])):
            got += n
        return got

    def readinto1(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check_open()
        view = memoryview(b).cast("B")
        return self._step_into(view) if len(view) else 0

    def close(self) -> None:
        """Close the reader and the source. Idempotent."""
        if self.closed:
            return
        try:
            self._raw.close()
        finally:
            super().close()

    def __enter__(self) -> VerifyingReader:
        self._check_open()
        return self

    # -- the checks -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed VerifyingReader")

    def _want(self, n: int) -> int:
        """How much of a read of ``n`` (> 0) bytes to ask the source for; 0 at the end."""
        if self._error is not None:
            raise self._error
        if self._verified:
            return 0
        remaining = self._size - self._offset
        if remaining == 0:
            # Reached for a declared size of 0 or a resume at the end: check the end now.
            self._finish()
        return min(n, remaining)

    def _step(self, n: int) -> bytes:
        """One read of the source of at most ``n`` (> 0) bytes; b"" only at verified end."""
        want = self._want(n)
        if not want:
            return b""
        chunk = self._raw.read(want)
        self._account(chunk, want)
        return chunk

    def _step_into(self, view: memoryview) -> int:
        """``_step`` into the caller's buffer: the number of bytes stored in ``view``."""
        want = self._want(len(view))
        if not want:
            return 0
        if self._raw_readinto is not None:
            n = self._raw_readinto(view[:want]) or 0
            self._account(view[:n], want)
            return n
        chunk = self._raw.read(want)
        self._account(chunk, want)
        view[: len(chunk)] = chunk
        return len(chunk)

    def _account(self, chunk: bytes | memoryview, want: int) -> None:
        """Check and hash one read of the source, which was asked for ``want`` bytes."""
        if not chunk:
            self._fail(
                SizeMismatch(
                    f"content {self._expected}: source ended after {self._offset} bytes, "
                    f"{self._size} were declared",
                    expected=self._size,
                    actual=self._offset,
                )
            )
        if len(chunk) > want:
            # A source that ignores the size it was asked for: still never hand out
            # bytes past the declared end.
            self._fail(self._too_long(self._offset + len(chunk)))
        self._digester.update(chunk)
        self._offset += len(chunk)
        if self._offset == self._size:
            # Verify before the last chunk leaves, so a caller never holds all of a bad blob.
            self._finish()

    def _finish(self) -> None:
        if self._raw.read(1):
            self._fail(self._too_long(self._size + 1))
        try:
            check_hashed(self._digester, self._offset, digest=self._expected, size=self._size)
        except IntegrityError as e:
            self._fail(e)
        self._verified = True

    def _too_long(self, at_least: int) -> SizeMismatch:
        return SizeMismatch(
            f"content {self._expected}: source has more than the {self._size} bytes declared",
            expected=self._size,
            actual=at_least,
        )

    def _fail(self, error: IntegrityError) -> None:
        self._error = error
        raise error


def _skip(stream: BinaryIO, n: int) -> None:
    """Advance ``stream`` by ``n`` bytes; SizeMismatch if it ends first."""
    seekable = False
    with contextlib.suppress(AttributeError, OSError, ValueError):
        seekable = stream.seekable()
    if seekable:
        stream.seek(n, os.SEEK_CUR)
        return
    left = n
    while left:
        chunk = stream.read(min(CHUNK_SIZE, left))
        if not chunk:
            raise SizeMismatch(
                f"stream ended after {n - left} bytes while skipping the {n} already stored",
                expected=n,
                actual=n - left,
            )
        left -= len(chunk)


def digest_stream(
    stream: BinaryIO, *, algorithm: str = "sha256", chunk_size: int = CHUNK_SIZE
) -> tuple[Digest, int]:
    """Hash ``stream`` from its current position to EOF: (digest, byte count).

    Reads through one reused buffer, so memory stays flat whatever the size. Raises
    InvalidDigest for an unknown algorithm; read errors propagate.
    """
    d = Digester(algorithm)
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    total = 0
    readinto = getattr(stream, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(view)
            if not n:
                break
            d.update(view[:n])
        else:
            chunk = stream.read(chunk_size)
            if not chunk:
                break
            n = len(chunk)
            d.update(chunk)
        total += n
    return d.digest(), total
