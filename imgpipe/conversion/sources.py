"""Where a conversion reads from: the store, a registry, a layout or an archive.

Every source is a :class:`~imgpipe.content.verify.BlobReader` (raw bytes by descriptor)
and nothing more is trusted of it: the image model reads it through
:func:`~imgpipe.image.open_verified` (documents checked whole, blobs while read, the
last read failing on a mismatch), so a corrupt source layer fails inside the
destination's read, before it commits.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, BinaryIO, Protocol

from imgpipe.formats.descriptor import Descriptor
from imgpipe.transports import ImageSource

if TYPE_CHECKING:
    from imgpipe.remote.client import Repository
    from imgpipe.store import Store

__all__ = ["RegistrySourceEnd", "Source", "StoreSource", "TransportSourceEnd"]


class Source(Protocol):
    """An image to convert: a blob reader with a root.

    ``name`` is for messages and the report; ``partial``: index entries may be missing
    (the platforms a store never pulled), and are then left out rather than an error.
    """

    name: str
    partial: bool

    def root(self) -> Descriptor: ...

    def open_blob(self, desc: Descriptor) -> BinaryIO: ...

    def registry_repo(self) -> tuple[str, str] | None: ...

    def close(self) -> None: ...


class StoreSource:
    """An image in the local store, by name; a conversion covers the platforms it has."""

    partial = True

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self._target = store.db.get_image(name).target

    def root(self) -> Descriptor:
        return self._target

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.store.content.open_blob(desc)

    def registry_repo(self) -> tuple[str, str] | None:
        return None

    def close(self) -> None:
        pass


class TransportSourceEnd:
    """An OCI layout, oci-archive or docker-archive (any ImageSource)."""

    partial = False

    def __init__(self, source: ImageSource, name: str) -> None:
        self._source = source
        self.name = name
        self._lock = threading.Lock()

    def root(self) -> Descriptor:
        return self._source.resolve()

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        with self._lock:  # sources are not promised to be thread-safe on open
            return self._source.open_blob(desc)

    def registry_repo(self) -> tuple[str, str] | None:
        return None

    def close(self) -> None:
        self._source.__exit__(None, None, None)


class RegistrySourceEnd:
    """A registry repository, through a (possibly shared) RegistryClient."""

    partial = False

    def __init__(self, repo: Repository, name: str) -> None:
        self._repo = repo
        self.name = name

    def root(self) -> Descriptor:
        return self._repo.resolve()

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        if desc.media_type.is_index() or desc.media_type.is_manifest():
            return self._repo.open_document(desc)
        from imgpipe.remote.client import as_binary  # noqa: PLC0415 (urllib3: on use)

        return as_binary(self._repo.open_blob(desc))

    def registry_repo(self) -> tuple[str, str] | None:
        return self._repo.ref.domain, self._repo.name

    def close(self) -> None:
        pass  # the client belongs to the Converter
