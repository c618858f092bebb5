"""The transport protocols: where images are read from and written to.

A transport is named by a string (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
``docker-archive:FILE``, and later ``docker://REF``); ``imgpipe.formats.reference``
parses those strings into a ``TransportRef``. ``open_source`` / ``open_sink`` in
``imgpipe.transports`` turn one into an object implementing these protocols.

Sources and sinks move bytes only. They never decide what is trusted: the pipeline wraps
every stream a source returns in a verifying reader before anything is committed, and a
sink verifies what it is given before it becomes visible.
"""

from __future__ import annotations

from types import TracebackType
from typing import BinaryIO, Protocol

from imgpipe.formats.descriptor import Descriptor

__all__ = ["ImageSink", "ImageSource"]


class ImageSource(Protocol):
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

    def __enter__(self) -> ImageSource: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ImageSink(Protocol):
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

    def __enter__(self) -> ImageSink: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
