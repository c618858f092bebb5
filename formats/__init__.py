"""Pure data: media types, digests, descriptors, documents, platforms, references.

``imgpipe.formats`` is the leaf of imgpipe: value types and parsers with no I/O but bytes,
imported by everything else and importing nothing of ours. Everything public is
re-exported here; the submodules stay importable for the long tail (``mediatype``
constants, module docstrings with the rules).
"""

from __future__ import annotations

from . import errors, mediatype
from .chainid import chain_id, chain_ids
from .config import ContainerConfig, History, ImageConfig, parse_config
from .descriptor import Descriptor, str_map
from .digest import ALGORITHMS, Digest, Digester
from .errors import *  # noqa: F403 (the error tree: errors.__all__, added below)
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
from .mediatype import *  # noqa: F403 (media types: mediatype.__all__, added below)
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
