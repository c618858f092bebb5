"""ImagePlan: an image graph read once, eagerly, as the transfer stages need it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from imgpipe.formats._record import FrozenValue
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument
from imgpipe.formats.manifest import Index, Manifest
from imgpipe.formats.reference import TransportRef

from .blobs import BlobReader
from .lazy import BlobImage

if TYPE_CHECKING:
    from imgpipe.processors import ProcessorRegistry

__all__ = ["ImagePlan"]


class ImagePlan(FrozenValue):
    """An image's structure: the root, its parsed documents, and the blobs they reach.

    ``manifests`` are the manifests selected (by platform, or all); ``blobs`` are their
    configs and layers, each once, in manifest order; ``document_descriptors`` the
    documents' descriptors in parent-before-child order (root first); ``name`` the local
    name (normalised), when known. ``source`` is where the blobs can be read from (the
    open transport, or the store) and ``origin`` where that is (for messages, and the
    distribution-source labels of a registry): neither is compared, ``source`` is not
    shown. (A hand-written value class, not a dataclass: start-up time.)
    """

    __slots__ = (
        "blobs",
        "document_descriptors",
        "documents",
        "manifests",
        "name",
        "origin",
        "root",
        "source",
    )
    _uncompared = frozenset({"source", "origin"})
    _unshown = frozenset({"source"})
    root: Descriptor
    documents: Mapping[Digest, Manifest | Index]
    manifests: tuple[Descriptor, ...]
    blobs: tuple[Descriptor, ...]
    document_descriptors: tuple[Descriptor, ...]
    name: str
    source: BlobReader | None
    origin: TransportRef | None

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's was)
        self,
        root: Descriptor,
        documents: Mapping[Digest, Manifest | Index],
        manifests: tuple[Descriptor, ...],
        blobs: tuple[Descriptor, ...],
        document_descriptors: tuple[Descriptor, ...] = (),
        name: str = "",
        source: BlobReader | None = None,
        origin: TransportRef | None = None,
    ) -> None:
        self._set(
            root=root,
            documents=documents,
            manifests=manifests,
            blobs=blobs,
            document_descriptors=document_descriptors,
            name=name,
            source=source,
            origin=origin,
        )

    def total_size(self) -> int:
        """Bytes of every document and blob in the plan."""
        return sum(d.size for d in self.document_descriptors) + sum(d.size for d in self.blobs)

    def descriptors(self) -> Iterator[Descriptor]:
        """Every descriptor, children before parents (the order to write them in)."""
        yield from self.blobs
        yield from reversed(self.document_descriptors)

    def images(
        self, reader: BlobReader | None = None, *, registry: ProcessorRegistry | None = None
    ) -> tuple[BlobImage, ...]:
        """The selected manifests as model Images whose blobs ``reader`` (default: the
        plan's source) reads; the documents are not read again."""
        reader = reader if reader is not None else self.source
        if reader is None:
            raise InvalidArgument("the plan has no source to read its blobs from")
        out = []
        for desc in self.manifests:
            doc = self.documents[desc.digest]
            assert isinstance(doc, Manifest)
            out.append(BlobImage(reader, desc, doc, registry=registry))
        return tuple(out)
