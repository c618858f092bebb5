"""The image model's protocols: what every end produces and every verb consumes.

go-containerregistry's ``v1.Image``/``v1.Layer`` are the model. A value is lazy: making
one reads nothing beyond the document it stands for, and every method that reads a
blob is a method (never a property) and reads it verified. The compressed/uncompressed
pair runs through the names: a layer's ``open_compressed()`` is the blob as stored or
served, ``open_uncompressed()`` the OCI tar stream after decryption and decompression.

Implementations over any :class:`~imgpipe.image.blobs.BlobReader` live in
:mod:`imgpipe.image.lazy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, Protocol, runtime_checkable

from imgpipe.formats.config import ImageConfig
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.manifest import Index as IndexDocument
from imgpipe.formats.manifest import Manifest
from imgpipe.formats.mediatype import MediaType
from imgpipe.formats.platform import Platform

__all__ = ["Described", "Image", "Index", "Layer"]


class Described(Protocol):
    """What every value of the model has: the descriptor that names it."""

    @property
    def descriptor(self) -> Descriptor:
        """The descriptor its parent gives it (digest, size, media type, annotations)."""
        ...

    @property
    def media_type(self) -> MediaType: ...

    @property
    def annotations(self) -> Mapping[str, str]: ...


@runtime_checkable
class Layer(Described, Protocol):
    """One layer (or any blob a manifest lists) of an image."""

    def diff_id(self) -> Digest:
        """The digest of the uncompressed tar: the image config's entry for it (read
        verified), or, for a layer outside an image, the hash of open_uncompressed()."""
        ...

    def open_compressed(self) -> BinaryIO:
        """The blob's bytes as stored, verified while read: the last read raises
        SizeMismatch or DigestMismatch if they are not the descriptor's. NotFound if the
        reader has no such blob. The caller closes it."""
        ...

    def open_uncompressed(self, *, keys: Sequence[Any] = (), params: Any = None) -> BinaryIO:
        """The OCI tar stream: open_compressed() through the processor chain for the media
        type (decrypt with ``keys``, decompress). ``params`` is a ProcessorParams.
        NoProcessor for a type nothing decodes, Unauthorized when no key opens it."""
        ...


@runtime_checkable
class Image(Described, Protocol):
    """One manifest with its config and layers."""

    @property
    def manifest(self) -> Manifest:
        """The parsed manifest (already read when the Image was made)."""
        ...

    def config(self) -> ImageConfig:
        """The config, read verified and parsed (once). MalformedDocument when it lists
        another number of diff_ids than the manifest has layers; NotFound if absent."""
        ...

    def layers(self) -> tuple[Layer, ...]:
        """The layers, base first (reads nothing)."""
        ...

    def platform(self) -> Platform | None:
        """The descriptor's platform (from the index), else the config's; None when the
        config is not an image config."""
        ...


@runtime_checkable
class Index(Described, Protocol):
    """An image index: entries that are images, nested indexes or other blobs."""

    @property
    def index(self) -> IndexDocument:
        """The parsed index document."""
        ...

    def children(self, *, skip_missing: bool = False) -> tuple[Image | Index, ...]:
        """The entries that are manifests or indexes, each read verified, in order (other
        entries, artifacts' blobs, are left out). ``skip_missing``: leave out entries the
        reader does not have (the platforms a store never pulled)."""
        ...

    def manifests(self, *, skip_missing: bool = False) -> tuple[Image, ...]:
        """Every image reached, nested indexes walked (depth bounded by
        MAX_INDEX_DEPTH), each once."""
        ...
