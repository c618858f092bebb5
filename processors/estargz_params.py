"""The parameters and names of the seekable layer writers (:mod:`.estargz_write`).

Apart from the writer, so that what only configures or recognises a seekable layer (the
conversion's options, its plan, the annotations it drops from a re-encoded layer) does
not import the writer, its tar reader and its compressors: a ``convert --zstd`` never
writes eStargz.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import imgpipe.formats.estargz.annotations as _ann
from imgpipe.formats.errors import InvalidArgument

from .base import ZSTD_LEVEL

__all__ = [
    "ANNOTATIONS",
    "DEFAULT_CHUNK_SIZE",
    "ESTARGZ_GZIP_LEVEL",
    "FORMATS",
    "MANIFEST_CHECKSUM_ANNOTATION",
    "MANIFEST_POSITION_ANNOTATION",
    "MAX_TOC_SIZE",
    "TOC_DIGEST_ANNOTATION",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "EstargzParams",
    "Format",
]

Format = Literal["estargz", "zstdchunked"]
FORMATS: Final = ("estargz", "zstdchunked")
#: ctr-remote's and estargz.Build's default chunk size (``4 << 20``).
DEFAULT_CHUNK_SIZE: Final = 4 << 20
#: ctr-remote's default gzip level for eStargz (``gzip.BestCompression``).
ESTARGZ_GZIP_LEVEL: Final = 9
#: containers/storage 1.43 refuses a TOC over 50 MiB ("manifest too big"); so do we.
MAX_TOC_SIZE: Final = 50 << 20

# the reader's names (imgpipe.formats.estargz), under the names the conversion uses
TOC_DIGEST_ANNOTATION: Final = _ann.ANNOTATION_TOC_DIGEST
UNCOMPRESSED_SIZE_ANNOTATION: Final = _ann.ANNOTATION_UNCOMPRESSED_SIZE
MANIFEST_CHECKSUM_ANNOTATION: Final = _ann.ANNOTATION_ZSTD_CHECKSUM
MANIFEST_POSITION_ANNOTATION: Final = _ann.ANNOTATION_ZSTD_POSITION
#: Every layer annotation these formats define (c/storage 1.44+ spellings too): false on
#: a layer re-encoded any other way.
ANNOTATIONS: Final = (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    _ann.ANNOTATION_ZSTD_CHECKSUM_NEW,
    _ann.ANNOTATION_ZSTD_POSITION_NEW,
)


@dataclass(frozen=True, slots=True)
class EstargzParams:
    """How to write the layer. ``gzip_level`` applies to eStargz, ``zstd_level`` to
    zstd:chunked. ``prioritized``: paths to put first (eStargz only), in access order.
    ``workers``: compression threads (0 = one per CPU); the output does not depend on it.
    ``spool_dir``: where the reordering spool lives (None: the system's temp dir)."""

    format: Format = "estargz"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    gzip_level: int = ESTARGZ_GZIP_LEVEL
    zstd_level: int = ZSTD_LEVEL
    prioritized: tuple[str, ...] = ()
    workers: int = 0
    spool_dir: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidArgument(f"seekable format {self.format!r}: want one of {FORMATS}")
        if isinstance(self.chunk_size, bool) or self.chunk_size < 1:
            raise InvalidArgument(f"chunk size {self.chunk_size}: must be at least 1 byte")
        if not 0 <= self.gzip_level <= 9:
            raise InvalidArgument(f"gzip level {self.gzip_level}: must be 0-9")
        if not -(1 << 17) <= self.zstd_level <= 22:
            raise InvalidArgument(f"zstd level {self.zstd_level}: must be at most 22")
        if self.prioritized and self.format != "estargz":
            raise InvalidArgument("prioritized files need the eStargz format")
        if self.workers < 0:
            raise InvalidArgument(f"workers {self.workers}: must be 0 or more")
