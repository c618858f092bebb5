"""The one walk of an image graph: from a root, through the platforms chosen, to blobs."""

from __future__ import annotations

from collections.abc import Callable

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument
from imgpipe.formats.manifest import Index, Manifest
from imgpipe.formats.platform import Platform

from .lazy import MAX_INDEX_DEPTH
from .plan import ImagePlan
from .select import follow

__all__ = ["MAX_INDEX_DEPTH", "walk_image"]


def walk_image(
    root: Descriptor,
    read_document: Callable[[Descriptor], Manifest | Index | None],
    *,
    platform: Platform | None = None,
    all_platforms: bool = False,
) -> ImagePlan:
    """Walk an image graph from ``root`` and return its plan.

    ``read_document`` returns the parsed document for an index or manifest descriptor,
    or None to skip that subtree (an export of content that is not all present). Index
    entries are chosen by :func:`imgpipe.image.select.follow`. InvalidArgument past
    MAX_INDEX_DEPTH nested indexes.
    """
    documents: dict[Digest, Manifest | Index] = {}
    doc_descs: list[Descriptor] = []
    manifests: list[Descriptor] = []
    blobs: dict[Digest, Descriptor] = {}

    def visit(desc: Descriptor, depth: int) -> None:
        if depth > MAX_INDEX_DEPTH:
            raise InvalidArgument(
                f"image index nesting deeper than {MAX_INDEX_DEPTH} at {desc.digest}"
            )
        if not (desc.media_type.is_index() or desc.media_type.is_manifest()):
            blobs.setdefault(desc.digest, desc)
            return
        if desc.digest in documents:
            return
        doc = read_document(desc)
        if doc is None:
            return
        documents[desc.digest] = doc
        doc_descs.append(desc)
        if isinstance(doc, Index):
            for child in follow(doc, platform, all_platforms):
                visit(child, depth + 1)
        else:
            manifests.append(desc)
            for child in (doc.config, *doc.layers):
                blobs.setdefault(child.digest, child)

    visit(root, 0)
    return ImagePlan(
        root=root,
        documents=documents,
        manifests=tuple(manifests),
        blobs=tuple(blobs.values()),
        document_descriptors=tuple(doc_descs),
    )
