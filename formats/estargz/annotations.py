"""The layer annotations that describe an eStargz or zstd:chunked layer.

They live in the manifest, so the manifest digest covers them: a reader trusts them to
verify the TOC before anything else of the layer is used.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ANNOTATION_TOC_DIGEST",
    "ANNOTATION_UNCOMPRESSED_SIZE",
    "ANNOTATION_ZSTD_CHECKSUM",
    "ANNOTATION_ZSTD_CHECKSUM_NEW",
    "ANNOTATION_ZSTD_POSITION",
    "ANNOTATION_ZSTD_POSITION_NEW",
]

#: sha256 of the TOC JSON (uncompressed), written by stargz-snapshotter's converters;
#: the snapshotter refuses a layer without it.
ANNOTATION_TOC_DIGEST: Final = "containerd.io/snapshot/stargz/toc.digest"
#: The decompressed length of the blob (what podman's Stargz Store needs).
ANNOTATION_UNCOMPRESSED_SIZE: Final = "io.containers.estargz.uncompressed-size"
#: sha256 of the *compressed* zstd:chunked TOC, and ``offset:length:ulength:type``;
#: containers/storage 1.43 spells them so, 1.44+ under ``io.github.containers.``.
ANNOTATION_ZSTD_CHECKSUM: Final = "io.containers.zstd-chunked.manifest-checksum"
ANNOTATION_ZSTD_POSITION: Final = "io.containers.zstd-chunked.manifest-position"
ANNOTATION_ZSTD_CHECKSUM_NEW: Final = "io.github.containers.zstd-chunked.manifest-checksum"
ANNOTATION_ZSTD_POSITION_NEW: Final = "io.github.containers.zstd-chunked.manifest-position"
