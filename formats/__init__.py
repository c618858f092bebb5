"""Pure data: media types, digests, descriptors, documents, platforms, references.

``imgpipe.formats`` is the leaf of imgpipe: value types and parsers with no I/O but bytes,
imported by everything else and importing nothing of ours. Everything public is
re-exported here, on first use (PEP 562: ``imgpipe --version`` and a listing load
no parser they do not call); the submodules stay importable for the long tail (``mediatype``
constants, module docstrings with the rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors, mediatype
from ._lazy import lazy_exports
from .errors import *  # noqa: F403 (the error tree: errors.__all__, added below)
from .mediatype import *  # noqa: F403 (media types: mediatype.__all__, added below)

if TYPE_CHECKING:
    from .chainid import (
        chain_id,
        chain_ids,
    )
    from .config import (
        ContainerConfig,
        History,
        ImageConfig,
        parse_config,
    )
    from .descriptor import (
        Descriptor,
        str_map,
    )
    from .digest import (
        ALGORITHMS,
        Digest,
        Digester,
    )
    from .layout import (
        ANNOTATION_IMAGE_NAME,
        ANNOTATION_REF_NAME,
        BLOBS_DIR,
        INDEX_FILE,
        LAYOUT_FILE,
        LAYOUT_VERSION,
        blob_path,
        find_refs,
        layout_file_bytes,
        parse_layout_file,
    )
    from .manifest import (
        MAX_DOCUMENT_SIZE,
        SCHEMA1_MESSAGE,
        Index,
        Manifest,
        parse_document,
        parse_index,
        parse_manifest,
    )
    from .platform import (
        KNOWN_ARCHITECTURES,
        KNOWN_OSES,
        Platform,
        PlatformMatcher,
        best_match,
        host_platform,
        match,
    )
    from .reference import (
        DEFAULT_DOMAIN,
        DEFAULT_TAG,
        TRANSPORTS,
        Reference,
        TransportRef,
        parse_reference,
        parse_transport,
    )

#: Public name -> the submodule that defines it.
_WHERE = {
    "ALGORITHMS": "digest",
    "ANNOTATION_IMAGE_NAME": "layout",
    "ANNOTATION_REF_NAME": "layout",
    "BLOBS_DIR": "layout",
    "ContainerConfig": "config",
    "DEFAULT_DOMAIN": "reference",
    "DEFAULT_TAG": "reference",
    "Descriptor": "descriptor",
    "Digest": "digest",
    "Digester": "digest",
    "History": "config",
    "INDEX_FILE": "layout",
    "ImageConfig": "config",
    "Index": "manifest",
    "KNOWN_ARCHITECTURES": "platform",
    "KNOWN_OSES": "platform",
    "LAYOUT_FILE": "layout",
    "LAYOUT_VERSION": "layout",
    "MAX_DOCUMENT_SIZE": "manifest",
    "Manifest": "manifest",
    "Platform": "platform",
    "PlatformMatcher": "platform",
    "Reference": "reference",
    "SCHEMA1_MESSAGE": "manifest",
    "TRANSPORTS": "reference",
    "TransportRef": "reference",
    "best_match": "platform",
    "blob_path": "layout",
    "chain_id": "chainid",
    "chain_ids": "chainid",
    "find_refs": "layout",
    "host_platform": "platform",
    "layout_file_bytes": "layout",
    "match": "platform",
    "parse_config": "config",
    "parse_document": "manifest",
    "parse_index": "manifest",
    "parse_layout_file": "layout",
    "parse_manifest": "manifest",
    "parse_reference": "reference",
    "parse_transport": "reference",
    "str_map": "descriptor",
}

__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "ALGORITHMS",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "BLOBS_DIR",
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "INDEX_FILE",
    "KNOWN_ARCHITECTURES",
    "KNOWN_OSES",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "MAX_DOCUMENT_SIZE",
    "SCHEMA1_MESSAGE",
    "TRANSPORTS",
    "ContainerConfig",
    "Descriptor",
    "Digest",
    "Digester",
    "History",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "PlatformMatcher",
    "Reference",
    "TransportRef",
    "best_match",
    "blob_path",
    "chain_id",
    "chain_ids",
    "find_refs",
    "host_platform",
    "layout_file_bytes",
    "match",
    "parse_config",
    "parse_document",
    "parse_index",
    "parse_layout_file",
    "parse_manifest",
    "parse_reference",
    "parse_transport",
    "str_map",
]
__all__ += errors.__all__
__all__ += mediatype.__all__
