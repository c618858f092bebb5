"""The transport protocols: where images are read from and written to.

A transport is named by a string (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
``docker-archive:FILE``, and later ``docker://REF``); ``imgpipe.formats.reference``
parses those strings into a ``TransportRef``. ``open_source`` / ``open_sink`` in
``imgpipe.transports`` turn one into an object implementing these protocols.

Sources and sinks move bytes only. They never decide what is trusted: a source is a
``BlobReader`` (``imgpipe.content.verify``), and every stream it returns is read through
``open_verified`` (the store's ``ingest_blob`` does, as does a transport reading one of its
own documents) before anything is committed; a sink verifies what it is given before it
becomes visible.

``FdHolder`` and ``CommitOnExit`` are the shared halves of the local transports: the
directory or archive descriptor they hold, and a sink's commit-on-success ``with`` block.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import BinaryIO, Protocol, Self

from imgpipe.content.closing import Closing
from imgpipe.formats.descriptor import Descriptor

__all__ = ["CommitOnExit", "FdHolder", "ImageSink", "ImageSource"]


class _Scoped(Protocol):
    """Used as a context manager; leaving the block releases what the object holds."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ImageSource(_Scoped, Protocol):
    """Somewhere an image can be read from. Use as a context manager."""

    def resolve(self) -> Descriptor:
        """The root descriptor (index or manifest) the transport reference names.

        Raises NotFound if the location has no such image, MalformedDocument if the
        location itself is damaged (a bad ``index.json``). Idempotent.
        """
        ...

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the blob's bytes exactly as stored, unverified.

        The caller verifies digest and size while reading. Raises NotFound.
        """
        ...


class ImageSink(_Scoped, Protocol):
    """Somewhere an image can be written to. Use as a context manager.

    Leaving the ``with`` block normally commits (an archive is written, an index updated);
    leaving it with an exception discards what was written where the format allows.
    """

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether the sink already holds this blob (so it can be skipped)."""
        ...

    def write_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        """Store the blob read from ``stream``.

        Verifies size and digest against ``desc`` before the blob becomes visible; raises
        DigestMismatch or SizeMismatch and keeps nothing otherwise. A blob that exists is
        success.
        """
        ...

    def write_root(self, desc: Descriptor) -> None:
        """Record ``desc`` as the image this sink was opened for (its tag, if any).

        Call after every blob the image reaches has been written.
        """
        ...


class FdHolder(Closing):
    """Holds one descriptor (a layout directory, an archive) until ``close``.

    ``_name`` says what the object is in the error for use after close, e.g.
    ``oci:DIR: source``.
    """

    _fd: int
    _name: str

    def close(self) -> None:
        """Release the descriptor. Idempotent; streams already opened stay valid."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _check_open(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self._name} is closed")
        return self._fd


class CommitOnExit(Closing):
    """A sink's ``with`` block: leaving it normally commits, then closes either way.

    On the way out with an exception ``_abandon`` runs after ``close`` (a sink that
    created its directory removes it again).
    """

    def commit(self) -> None:
        raise NotImplementedError

    def _abandon(self) -> None:
        """Undo what opening created, after a failed ``with`` block. Nothing by default."""

    def __exit__(self, *exc_info: object) -> None:
        failed = bool(exc_info) and exc_info[0] is not None
        try:
            if not failed:
                self.commit()
        finally:
            self.close()
            if failed:
                self._abandon()
