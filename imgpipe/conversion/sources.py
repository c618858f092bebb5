"""Where a conversion reads from: the store, a registry, a layout or an archive.

Every source hands out *verified* bytes (documents checked whole, blobs through a
:class:`~imgpipe.content.verify.VerifyingReader` whose last read fails on a mismatch),
so a corrupt source layer fails inside the destination's read, before it commits.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, BinaryIO, Protocol

from imgpipe.content.verify import VerifyingReader
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import DigestMismatch, ResourceLimit, SizeMismatch
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE
from imgpipe.transports import ImageSource

if TYPE_CHECKING:
    from imgpipe.remote.client import Repository
    from imgpipe.store import Store

__all__ = ["RegistrySourceEnd", "Source", "StoreSource", "TransportSourceEnd"]


def verified_document(raw: bytes, desc: Descriptor, where: str) -> bytes:
    """``raw`` if it is the document ``desc`` names; DigestMismatch / SizeMismatch."""
    if len(raw) != desc.size:
        raise SizeMismatch(
            f"{where}: document {desc.digest} is {len(raw)} bytes, {desc.size} expected",
            expected=desc.size,
            actual=len(raw),
        )
    got = Digest.from_bytes(raw, desc.digest.algorithm)
    if got != desc.digest:
        raise DigestMismatch(
            f"{where}: document {desc.digest} hashes to {got}",
            expected=str(desc.digest),
            actual=str(got),
        )
    return raw


def _read_document(stream: BinaryIO, desc: Descriptor, where: str) -> bytes:
    if desc.size > MAX_DOCUMENT_SIZE:
        raise ResourceLimit(
            f"{where}: {desc.media_type} {desc.digest} is {desc.size} bytes; documents over "
            f"{MAX_DOCUMENT_SIZE} bytes are refused"
        )
    with stream:
        raw = stream.read(desc.size + 1)
    return verified_document(bytes(raw), desc, where)


class Source(Protocol):
    """An image to convert: its root, its documents and blobs, all verified."""

    name: str  # for messages and the report

    def root(self) -> Descriptor: ...

    def document(self, desc: Descriptor) -> bytes: ...

    def open_blob(self, desc: Descriptor) -> BinaryIO: ...

    def present(self, desc: Descriptor) -> bool: ...

    def registry_repo(self) -> tuple[str, str] | None: ...

    def close(self) -> None: ...


class StoreSource:
    """An image in the local store, by name. Blobs were verified when they came in.

    Index entries whose manifests were never pulled are not ``present``: a conversion
    of a store image covers the platforms the store has.
    """

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self._target = store.db.get_image(name).target

    def root(self) -> Descriptor:
        return self._target

    def document(self, desc: Descriptor) -> bytes:
        return _read_document(self.store.content.open(desc.digest), desc, self.name)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.store.content.open(desc.digest)

    def present(self, desc: Descriptor) -> bool:
        return self.store.content.exists(desc.digest)

    def registry_repo(self) -> tuple[str, str] | None:
        return None

    def close(self) -> None:
        pass


class TransportSourceEnd:
    """An OCI layout, oci-archive or docker-archive (any ImageSource), verified here."""

    def __init__(self, source: ImageSource, name: str) -> None:
        self._source = source
        self.name = name
        self._lock = threading.Lock()

    def root(self) -> Descriptor:
        return self._source.resolve()

    def document(self, desc: Descriptor) -> bytes:
        return _read_document(self._source.open_blob(desc), desc, self.name)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        with self._lock:  # sources are not promised to be thread-safe on open
            raw = self._source.open_blob(desc)
        return VerifyingReader(raw, digest=desc.digest, size=desc.size)

    def present(self, desc: Descriptor) -> bool:
        return True

    def registry_repo(self) -> tuple[str, str] | None:
        return None

    def close(self) -> None:
        self._source.__exit__(None, None, None)


class RegistrySourceEnd:
    """A registry repository, through a (possibly shared) RegistryClient."""

    def __init__(self, repo: Repository, name: str) -> None:
        self._repo = repo
        self.name = name

    def root(self) -> Descriptor:
        return self._repo.resolve()

    def document(self, desc: Descriptor) -> bytes:
        if desc.media_type.is_index() or desc.media_type.is_manifest():
            return _read_document(self._repo.open_document(desc), desc, self.name)
        return _read_document(self.open_blob(desc), desc, self.name)  # a config: a blob

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        from imgpipe.remote.client import as_binary  # noqa: PLC0415 (urllib3: on use)

        return VerifyingReader(
            as_binary(self._repo.open_blob(desc)), digest=desc.digest, size=desc.size
        )

    def present(self, desc: Descriptor) -> bool:
        return True

    def registry_repo(self) -> tuple[str, str] | None:
        return self._repo.ref.domain, self._repo.name

    def close(self) -> None:
        pass  # the client belongs to the Converter
