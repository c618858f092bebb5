"""Where the model's bytes come from: a blob reader and the one verified read over it.

A :class:`~imgpipe.content.verify.BlobReader` hands out a blob's raw bytes by
descriptor, unverified: the store's ContentStore, a registry, a layout, an archive.
Nothing in the model trusts those bytes until they passed
:func:`~imgpipe.content.verify.open_verified` (size and digest, checked while read).
"""

from __future__ import annotations

from imgpipe.content.verify import BlobReader, open_verified
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import ResourceLimit
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index, Manifest, parse_document

__all__ = ["BlobReader", "open_verified", "read_document"]


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
