"""OCI image layout (``image-layout.md``): the pure parts, no file access.

A layout directory holds ``oci-layout`` (the version marker), ``index.json`` (an image
index, the entry point) and ``blobs/<alg>/<hex>``. Tags are the
``org.opencontainers.image.ref.name`` annotation on index.json entries; containerd's
exporter also writes the full image name as ``io.containerd.image.name``.
"""

from __future__ import annotations

from typing import Final

from ._json import BytesLike, as_bytes, dump_compact, load_object
from .descriptor import Descriptor
from .digest import Digest
from .errors import InvalidArgument, MalformedDocument, Unsupported
from .manifest import Index

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "BLOBS_DIR",
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "blob_path",
    "find_refs",
    "layout_file_bytes",
    "parse_layout_file",
]

LAYOUT_FILE: Final = "oci-layout"
LAYOUT_VERSION: Final = "1.0.0"
INDEX_FILE: Final = "index.json"
BLOBS_DIR: Final = "blobs"
ANNOTATION_REF_NAME: Final = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME: Final = "io.containerd.image.name"

# The layout file is a few dozen bytes; anything big is not one.
_MAX_LAYOUT_FILE: Final = 64 * 1024


def layout_file_bytes() -> bytes:
    """The content of ``oci-layout``: ``{"imageLayoutVersion":"1.0.0"}``."""
    return dump_compact({"imageLayoutVersion": LAYOUT_VERSION})


def parse_layout_file(raw: BytesLike) -> None:
    """Check an ``oci-layout`` file.

    MalformedDocument if it is not a JSON object with a string ``imageLayoutVersion``
    (or larger than 64 KiB); Unsupported if the version is not 1.0.0, the only one the
    spec defines (as containerd's importer, we refuse to guess at another).
    """
    obj = load_object(as_bytes(raw, LAYOUT_FILE), LAYOUT_FILE, limit=_MAX_LAYOUT_FILE)
    version = obj.get("imageLayoutVersion")
    if not isinstance(version, str):
        raise MalformedDocument(f"{LAYOUT_FILE}: 'imageLayoutVersion' must be a string")
    if version != LAYOUT_VERSION:
        raise Unsupported(
            f"OCI image layout version {version!r} is not supported (want {LAYOUT_VERSION})"
        )


def blob_path(digest: Digest) -> str:
    """The blob's path relative to the layout root: ``blobs/<alg>/<hex>``.

    Safe to join to a root: both parts come from a validated Digest (no ``/`` or ``..``).
    """
    if not isinstance(digest, Digest):
        raise InvalidArgument(f"blob_path needs a Digest, not {type(digest).__name__}")
    return f"{BLOBS_DIR}/{digest.algorithm}/{digest.encoded}"


def find_refs(index: Index, tag: str) -> list[Descriptor]:
    """Entries of ``index`` that ``tag`` names, in index order.

    An entry is named by ``tag`` when its ``org.opencontainers.image.ref.name`` annotation
    equals it, or its ``io.containerd.image.name`` does (containerd's exports put the tag
    in the first and the full name in the second, so both spellings find them). The
    empty tag names every entry. Callers decide what zero or several matches mean.
    """
    if not tag:
        return list(index.manifests)
    return [
        d
        for d in index.manifests
        if tag in (d.annotations.get(ANNOTATION_REF_NAME), d.annotations.get(ANNOTATION_IMAGE_NAME))
    ]
