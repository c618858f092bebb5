"""The one pass-through stream: bytes of ``raw`` handed on unchanged, with two hooks.

Counting, bounding, hashing, putting back a peeked prefix: every wrapper that looks at
bytes on their way through is a :class:`PassThrough` that overrides ``_seen`` (each chunk
read) and ``_eof`` (once, when ``raw`` is exhausted), and nothing else where it can.
Reads are zero-copy: ``readinto`` fills the caller's buffer straight from ``raw``, and
``read`` hands on the ``bytes`` object ``raw`` returned (``io.RawIOBase.read`` would copy
it through a fresh bytearray: on a 1 MiB-chunk chain that copy shows in the benchmarks).
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO, Protocol, cast

__all__ = ["PassThrough", "Readable"]


class Readable(Protocol):
    """The least a stream's input must do: ``read(n)`` and ``close()``."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class PassThrough(io.RawIOBase):
    """``raw``'s bytes, unchanged; ``_seen(chunk)`` sees each chunk, ``_eof()`` the end.

    ``_eof`` runs once, the first time ``raw`` returns no bytes for a non-empty request
    (``read(-1)`` reads to the end, so it runs then too). A hook may raise (a digest
    mismatch, a bound crossed); the exception surfaces from the read that ran it.
    Closing this closes ``raw``. There is no ``annotations()`` here on purpose: a
    ProcessedStream is recognised by it (``Encrypt`` hashes such input itself), and a
    plain pass-through over a blob is not one; processed streams add it.
    """

    def __init__(self, raw: Readable) -> None:
        super().__init__()
        # Any BinaryIO is a Readable, and this class uses only read, close and (when
        # present) readinto. ``_raw`` is typed BinaryIO so that a subclass over a real
        # file may also seek (the progress reader does); such a subclass takes a BinaryIO.
        self._raw = cast(BinaryIO, raw)
        self._at_eof = False

    # hooks: subclasses override these, not the reads
    def _seen(self, chunk: bytes | memoryview) -> None:
        """Called with each non-empty chunk read from ``raw``, before it is returned."""

    def _eof(self) -> None:
        """Called once, when ``raw`` is exhausted, before the empty read is returned."""

    def _end(self) -> None:
        if not self._at_eof:
            self._at_eof = True
            self._eof()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed stream")
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:
            n: int = readinto(view) or 0
        else:  # a bare reader (read and close only): one copy, as it cannot fill ours
            data = self._raw.read(len(view))
            n = len(data)
            view[:n] = data
        if n:
            self._seen(view[:n])
        else:
            self._end()
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("read from a closed stream")
        if size == 0:
            return b""
        data = self._raw.read(size)
        if data:
            self._seen(data)
        else:
            self._end()
        return data

    def readall(self) -> bytes:
        """The rest of ``raw`` in one read (subclasses that bound memory read in chunks)."""
        if self.closed:
            raise ValueError("read from a closed stream")
        data = self._raw.read()
        if data:
            self._seen(data)
        self._end()
        return data

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                super().close()
