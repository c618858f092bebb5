"""The model over any blob reader: the store's content, a registry, a layout, an archive.

::

    root = load(source, source.resolve())             # Image or Index
    for image in root.manifests():                      # Index: every image it reaches
        config = image.config()                         # read verified, parsed, checked
        for layer in image.layers():
            with layer.open_uncompressed(keys=keys) as tar: ...

Every blob is read through :func:`~imgpipe.image.blobs.open_verified`; a config is read
once per Image and kept.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from imgpipe.content.verify import CHUNK_SIZE
from imgpipe.formats.config import ImageConfig
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import InvalidArgument, NotFound
from imgpipe.formats.manifest import Index as IndexDocument
from imgpipe.formats.manifest import Manifest
from imgpipe.formats.mediatype import MediaType
from imgpipe.formats.platform import Platform

from .blobs import BlobReader, open_verified, read_document
from .model import Image, Index, Layer
from .validate import read_config

if TYPE_CHECKING:
    from imgpipe.processors import ProcessorParams, ProcessorRegistry

__all__ = ["MAX_INDEX_DEPTH", "BlobImage", "BlobIndex", "BlobLayer", "load", "wrap"]

#: An index may point at indexes; real images nest one level (an index of per-platform
#: indexes is rare). The bound stops a hostile cycle of distinct documents.
MAX_INDEX_DEPTH: Final = 8


def _registry(registry: ProcessorRegistry | None) -> ProcessorRegistry:
    # The built-ins and entry points; a verb passes the configured registry
    # (imgpipe.decode.default_registry, which reads config.toml) when it has one.
    from imgpipe.processors import ProcessorRegistry  # noqa: PLC0415 (start-up)

    return registry if registry is not None else ProcessorRegistry()


class _Blob:
    """What every value of the model holds: the reader, the descriptor, the processors."""

    def __init__(
        self, reader: BlobReader, desc: Descriptor, registry: ProcessorRegistry | None
    ) -> None:
        self.reader = reader
        self._desc = desc
        self._registry = registry

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._desc.digest}, {self._desc.media_type})"

    @property
    def descriptor(self) -> Descriptor:
        return self._desc

    @property
    def media_type(self) -> MediaType:
        return self._desc.media_type

    @property
    def annotations(self) -> Mapping[str, str]:
        return self._desc.annotations


class BlobLayer(_Blob):
    """A :class:`~imgpipe.image.model.Layer` read from ``reader``.

    ``image`` and ``position`` tie it to the config that says its DiffID.
    """

    def __init__(
        self,
        reader: BlobReader,
        desc: Descriptor,
        *,
        image: BlobImage | None = None,
        position: int = 0,
        registry: ProcessorRegistry | None = None,
    ) -> None:
        super().__init__(reader, desc, registry)
        self._image = image
        self._position = position

    def diff_id(self) -> Digest:
        if self._image is not None:
            return self._image.config().diff_ids[self._position]
        digester = Digester("sha256")
        with self.open_uncompressed() as tar:
            while chunk := tar.read(CHUNK_SIZE):
                digester.update(chunk)
        return digester.digest()

    def open_compressed(self) -> BinaryIO:
        return open_verified(self.reader, self._desc)

    def open_uncompressed(self, *, keys: Sequence[Any] = (), params: Any = None) -> BinaryIO:
        from imgpipe.processors import ProcessorParams, open_chain  # noqa: PLC0415 (start-up)

        p: ProcessorParams = params if params is not None else ProcessorParams()
        if keys:
            p = p.replace(decrypt_keys=(*p.decrypt_keys, *keys))
        chain = _registry(self._registry).decoder_chain(self._desc.media_type)
        # the chain is found before the blob is opened: a miss leaks nothing
        return open_chain(self.open_compressed(), self._desc, chain, p)  # type: ignore[return-value]


class BlobImage(_Blob):
    """An :class:`~imgpipe.image.model.Image` read from ``reader``; ``manifest`` is the
    parsed document ``desc`` names (read verified by :func:`load`, or by the caller)."""

    def __init__(
        self,
        reader: BlobReader,
        desc: Descriptor,
        manifest: Manifest,
        *,
        registry: ProcessorRegistry | None = None,
    ) -> None:
        super().__init__(reader, desc, registry)
        self._manifest = manifest
        self._config: ImageConfig | None = None
        self._lock = threading.Lock()  # config() once, whichever thread asks first

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def config(self) -> ImageConfig:
        with self._lock:
            if self._config is None:
                self._config = read_config(self.reader, self._desc, self._manifest)
            return self._config

    def layers(self) -> tuple[Layer, ...]:
        return tuple(
            BlobLayer(self.reader, d, image=self, position=i, registry=self._registry)
            for i, d in enumerate(self._manifest.layers)
        )

    def platform(self) -> Platform | None:
        if self._desc.platform is not None:
            return self._desc.platform
        if not self._manifest.config.media_type.is_config():
            return None
        return self.config().platform()


class BlobIndex(_Blob):
    """An :class:`~imgpipe.image.model.Index` read from ``reader``; ``depth`` is how
    deep it is nested (its children are loaded one deeper)."""

    def __init__(
        self,
        reader: BlobReader,
        desc: Descriptor,
        index: IndexDocument,
        *,
        registry: ProcessorRegistry | None = None,
        depth: int = 0,
    ) -> None:
        super().__init__(reader, desc, registry)
        self._index = index
        self._depth = depth

    @property
    def index(self) -> IndexDocument:
        return self._index

    def children(self, *, skip_missing: bool = False) -> tuple[Image | Index, ...]:
        out: list[Image | Index] = []
        for entry in self._index.manifests:
            if not (entry.media_type.is_index() or entry.media_type.is_manifest()):
                continue  # an artifact's blob: not part of the image graph
            try:
                out.append(load(self.reader, entry, registry=self._registry, depth=self._depth + 1))
            except NotFound:
                if not skip_missing:
                    raise
        return tuple(out)

    def manifests(self, *, skip_missing: bool = False) -> tuple[Image, ...]:
        seen: dict[Digest, Image] = {}
        for child in self.children(skip_missing=skip_missing):
            found: tuple[Image, ...] = (child,) if isinstance(child, BlobImage) else ()
            if isinstance(child, BlobIndex):
                found = child.manifests(skip_missing=skip_missing)
            for image in found:
                seen.setdefault(image.descriptor.digest, image)
        return tuple(seen.values())


def wrap(
    reader: BlobReader,
    desc: Descriptor,
    doc: Manifest | IndexDocument,
    *,
    registry: ProcessorRegistry | None = None,
    depth: int = 0,
) -> BlobImage | BlobIndex:
    """The model value for a document already read (verified) and parsed."""
    if isinstance(doc, Manifest):
        return BlobImage(reader, desc, doc, registry=registry)
    return BlobIndex(reader, desc, doc, registry=registry, depth=depth)


def load(
    reader: BlobReader,
    desc: Descriptor,
    *,
    registry: ProcessorRegistry | None = None,
    depth: int = 0,
) -> BlobImage | BlobIndex:
    """The Image or Index ``desc`` names: its document read verified and parsed; nothing
    else is read until asked for. ``registry`` decodes layers (default: the built-in and
    entry-point processors). InvalidArgument past MAX_INDEX_DEPTH nested indexes,
    ResourceLimit for an oversized document, NotFound, DigestMismatch, SizeMismatch."""
    if depth > MAX_INDEX_DEPTH:
        raise InvalidArgument(f"image index nesting deeper than {MAX_INDEX_DEPTH} at {desc.digest}")
    return wrap(reader, desc, read_document(reader, desc), registry=registry, depth=depth)
