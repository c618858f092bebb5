"""eStargz and zstd:chunked: the formats that let one file of a layer be read by Range.

Pure data, like the rest of ``imgpipe.formats``: the footers that locate a layer's table
of contents (:mod:`.footer`), and the TOC itself, parsed and validated against hostile
input (:mod:`.toc`). The reader that fetches ranges, verifies every chunk and serves files
is :mod:`imgpipe.image.ranged`; the formats are described in docs and the reference
(``stargz.index.json`` keys, footer byte positions) in the module docstrings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgpipe.formats._lazy import lazy_exports

if TYPE_CHECKING:
    from .annotations import (
        ANNOTATION_TOC_DIGEST,
        ANNOTATION_UNCOMPRESSED_SIZE,
        ANNOTATION_ZSTD_CHECKSUM,
        ANNOTATION_ZSTD_CHECKSUM_NEW,
        ANNOTATION_ZSTD_POSITION,
        ANNOTATION_ZSTD_POSITION_NEW,
    )
    from .footer import (
        ESTARGZ_FOOTER_SIZE,
        LEGACY_FOOTER_SIZE,
        SKIPPABLE_HEADER_SIZE,
        ZSTD_FOOTER_FRAME_SIZE,
        ZSTD_FOOTER_SIZE,
        ZSTD_MAGIC,
        ZstdTOCPosition,
        estargz_footer,
        parse_estargz_footer,
        parse_manifest_position,
        parse_zstd_footer,
        skippable_header,
    )
    from .parse import parse_toc
    from .toc import (
        LANDMARK_NO_PREFETCH,
        LANDMARK_PREFETCH,
        MAX_ENTRIES,
        MAX_NAME_LENGTH,
        MAX_TOC_SIZE,
        TOC,
        TOC_NAME,
        Chunk,
        Entry,
        clean_name,
    )

__all__ = [
    "ANNOTATION_TOC_DIGEST",
    "ANNOTATION_UNCOMPRESSED_SIZE",
    "ANNOTATION_ZSTD_CHECKSUM",
    "ANNOTATION_ZSTD_CHECKSUM_NEW",
    "ANNOTATION_ZSTD_POSITION",
    "ANNOTATION_ZSTD_POSITION_NEW",
    "ESTARGZ_FOOTER_SIZE",
    "LANDMARK_NO_PREFETCH",
    "LANDMARK_PREFETCH",
    "LEGACY_FOOTER_SIZE",
    "MAX_ENTRIES",
    "MAX_NAME_LENGTH",
    "MAX_TOC_SIZE",
    "SKIPPABLE_HEADER_SIZE",
    "TOC",
    "TOC_NAME",
    "ZSTD_FOOTER_FRAME_SIZE",
    "ZSTD_FOOTER_SIZE",
    "ZSTD_MAGIC",
    "Chunk",
    "Entry",
    "ZstdTOCPosition",
    "clean_name",
    "estargz_footer",
    "parse_estargz_footer",
    "parse_manifest_position",
    "parse_toc",
    "parse_zstd_footer",
    "skippable_header",
]

_WHERE = {
    **dict.fromkeys(
        (
            "ANNOTATION_TOC_DIGEST",
            "ANNOTATION_UNCOMPRESSED_SIZE",
            "ANNOTATION_ZSTD_CHECKSUM",
            "ANNOTATION_ZSTD_CHECKSUM_NEW",
            "ANNOTATION_ZSTD_POSITION",
            "ANNOTATION_ZSTD_POSITION_NEW",
        ),
        "annotations",
    ),
    **dict.fromkeys(
        (
            "ESTARGZ_FOOTER_SIZE",
            "LEGACY_FOOTER_SIZE",
            "SKIPPABLE_HEADER_SIZE",
            "ZSTD_FOOTER_FRAME_SIZE",
            "ZSTD_FOOTER_SIZE",
            "ZSTD_MAGIC",
            "ZstdTOCPosition",
            "estargz_footer",
            "parse_estargz_footer",
            "parse_manifest_position",
            "parse_zstd_footer",
            "skippable_header",
        ),
        "footer",
    ),
    "parse_toc": "parse",
    **dict.fromkeys(
        (
            "LANDMARK_NO_PREFETCH",
            "LANDMARK_PREFETCH",
            "MAX_ENTRIES",
            "MAX_NAME_LENGTH",
            "MAX_TOC_SIZE",
            "TOC",
            "TOC_NAME",
            "Chunk",
            "Entry",
            "clean_name",
        ),
        "toc",
    ),
}
__getattr__ = lazy_exports(__name__, _WHERE)
