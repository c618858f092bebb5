"""Where the model's bytes come from: a blob reader and the one verified read over it.

A :class:`BlobReader` hands out a blob's raw bytes by descriptor, unverified: the
store's content, a registry, a layout, an archive. Nothing in the model trusts those
bytes until they passed :func:`open_verified` (size and digest, checked while read).

# TODO(spine merge): BlobReader and open_verified are helper content's
# (imgpipe.content.verify); these local ones exist until that branch lands, then this
# module only re-exports them (and StoredBlobs goes once ContentStore has open_blob).
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from imgpipe.content.verify import VerifyingReader
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import ResourceLimit
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index, Manifest, parse_document

__all__ = ["BlobReader", "StoredBlobs", "open_verified", "read_document"]


class BlobReader(Protocol):
    """Anything that opens a blob by descriptor: raw bytes, not yet verified.

    Raises NotFound when it has no such blob. Every transport's ImageSource is one.
    """

    def open_blob(self, desc: Descriptor) -> BinaryIO: ...


class _ContentLike(Protocol):
    def open(self, digest: Digest) -> BinaryIO: ...


class StoredBlobs:
    """A content store (``open(digest)``) as a :class:`BlobReader`."""

    def __init__(self, content: _ContentLike) -> None:
        self.content = content

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.content.open(desc.digest)


def open_verified(reader: BlobReader, desc: Descriptor) -> VerifyingReader:
    """The blob ``desc`` names from ``reader``, checked against its size and digest as
    it is read (SizeMismatch, DigestMismatch; see VerifyingReader). The caller closes it."""
    return VerifyingReader(reader.open_blob(desc), digest=desc.digest, size=desc.size)


def read_document(reader: BlobReader, desc: Descriptor) -> Manifest | Index:
    """The index or manifest ``desc`` names, read verified and parsed.

    ResourceLimit for a document over MAX_DOCUMENT_SIZE (before a byte is read): a
    document is held in memory whole, so a hostile size must not get that far.
    """
    if desc.size > MAX_DOCUMENT_SIZE:
        raise ResourceLimit(
            f"{desc.media_type} {desc.digest} is {desc.size} bytes; "
            f"documents over {MAX_DOCUMENT_SIZE} bytes are refused"
        )
    with open_verified(reader, desc) as f:
        return parse_document(f.read(), desc.media_type)
