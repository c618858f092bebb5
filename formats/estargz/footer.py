"""The footers that say where a lazily readable layer keeps its TOC.

eStargz (gzip), 51 bytes: an empty gzip member whose FEXTRA field holds the subfield
``SG`` with ``%016x`` of the TOC offset and ``STARGZ``. containers/storage reads bytes
16-31 directly, so the positions are fixed::

    1f 8b 08 04 | 00 00 00 00 | 00 | ff | 1a 00 | 53 47 | 16 00 | <16 hex> STARGZ
    01 00 00 ff ff | 00 00 00 00 | 00 00 00 00

The legacy stargz (CRFS) footer is 47 bytes, the same member with the 22 bytes as the
whole extra field; it comes with no chunk digests, so it is recognised only to say so.

zstd:chunked (containers/storage 1.43 and stargz-snapshotter's zstd variant), 40 bytes,
the payload of the last skippable frame (``50 2a 4d 18 | 28 00 00 00``): little-endian
u64 offset of the compressed TOC, its compressed and uncompressed lengths, the type (1),
and the magic ``GnUlInUx``. The same four numbers may come in the layer annotation
``io.containers.zstd-chunked.manifest-position`` (``offset:length:ulength:type``).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from imgpipe.formats.errors import CorruptLayer, Unsupported

__all__ = [
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
]

ESTARGZ_FOOTER_SIZE: Final = 51
LEGACY_FOOTER_SIZE: Final = 47
ZSTD_FOOTER_SIZE: Final = 40
#: A skippable frame's header: 4 bytes of magic, 4 of little-endian length.
SKIPPABLE_HEADER_SIZE: Final = 8
#: What the footer occupies at the end of the blob, frame header included.
ZSTD_FOOTER_FRAME_SIZE: Final = SKIPPABLE_HEADER_SIZE + ZSTD_FOOTER_SIZE
ZSTD_MAGIC: Final = b"GnUlInUx"
#: c/storage 1.50+ spells it with a capital N and writes a 64-byte footer.
_NEWER_ZSTD_MAGIC: Final = b"GNUlInUx"
_SKIPPABLE_MAGIC: Final = b"\x50\x2a\x4d\x18"
_TOC_TYPE_CRFS: Final = 1

_GZIP_HEAD: Final = b"\x1f\x8b\x08"
_FEXTRA: Final = 0x04
_HEX16 = re.compile(rb"[0-9a-f]{16}")


def estargz_footer(toc_offset: int) -> bytes:
    """The 51-byte footer for a TOC at ``toc_offset`` (what the reference writer emits)."""
    extra = b"SG" + struct.pack("<H", 22) + b"%016xSTARGZ" % toc_offset
    head = _GZIP_HEAD + bytes([_FEXTRA]) + b"\0\0\0\0" + b"\0\xff" + struct.pack("<H", 26)
    return head + extra + b"\x01\x00\x00\xff\xff" + b"\0" * 8


def _check_empty_member(footer: bytes, what: str) -> None:
    # The footer is a whole gzip member: inflating it checks the header fields, the
    # stored block and the CRC/length trailer in one go.
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(footer) + d.flush()
    except zlib.error as e:
        raise CorruptLayer(f"{what}: the eStargz footer is not a gzip member ({e})") from None
    if out or not d.eof or d.unused_data:
        raise CorruptLayer(f"{what}: the eStargz footer is not an empty gzip member")


def parse_estargz_footer(footer: bytes, blob_size: int, *, what: str = "layer") -> int:
    """The TOC offset the last 51 bytes of an eStargz blob of ``blob_size`` bytes name.

    CorruptLayer if they are not the footer, or the offset is not inside the blob;
    Unsupported for a legacy (CRFS) stargz footer, which comes without chunk digests.
    """
    if len(footer) != ESTARGZ_FOOTER_SIZE:
        raise CorruptLayer(f"{what}: the blob is too short for an eStargz footer")
    legacy = footer[-LEGACY_FOOTER_SIZE:]
    if legacy[:3] == _GZIP_HEAD and legacy[10:12] == b"\x16\x00" and legacy[28:34] == b"STARGZ":
        raise Unsupported(
            f"{what}: a legacy stargz layer (47-byte footer): it has no chunk digests, so it "
            "cannot be read verified; convert it to eStargz"
        )
    if (
        footer[:3] != _GZIP_HEAD
        or footer[3] != _FEXTRA
        or footer[10:16] != b"\x1a\x00SG\x16\x00"
        or footer[32:38] != b"STARGZ"
        or not _HEX16.fullmatch(footer[16:32])
    ):
        raise CorruptLayer(f"{what}: no eStargz footer at the end of the blob")
    _check_empty_member(footer, what)
    offset = int(footer[16:32], 16)
    if offset >= blob_size - ESTARGZ_FOOTER_SIZE:
        raise CorruptLayer(
            f"{what}: the eStargz footer puts the TOC at {offset}, past the data "
            f"({blob_size - ESTARGZ_FOOTER_SIZE} bytes)"
        )
    return offset


@dataclass(frozen=True, slots=True)
class ZstdTOCPosition:
    """Where a zstd:chunked TOC is: ``offset`` of its compressed bytes (after their
    skippable frame header), ``length`` compressed, ``ulength`` uncompressed."""

    offset: int
    length: int
    ulength: int

    def check(self, blob_size: int, what: str) -> ZstdTOCPosition:
        """Self, if the TOC lies between the data and the footer frame; CorruptLayer if not."""
        end = blob_size - ZSTD_FOOTER_FRAME_SIZE
        if (
            self.offset < SKIPPABLE_HEADER_SIZE
            or self.length <= 0
            or self.ulength <= 0
            or self.offset + self.length > end
        ):
            raise CorruptLayer(
                f"{what}: the zstd:chunked TOC position {self.offset}:{self.length} is not "
                f"inside the blob ({blob_size} bytes)"
            )
        return self


def skippable_header(length: int) -> bytes:
    """The 8 bytes that open a skippable frame of ``length`` payload bytes."""
    return _SKIPPABLE_MAGIC + struct.pack("<I", length)


def parse_zstd_footer(frame: bytes, blob_size: int, *, what: str = "layer") -> ZstdTOCPosition:
    """The TOC position the last 48 bytes (footer frame) of a zstd:chunked blob name.

    CorruptLayer if they are not the footer or name a place outside the blob;
    Unsupported for the newer containers/storage footers (1.48+), which add tar-split.
    """
    if len(frame) != ZSTD_FOOTER_FRAME_SIZE:
        raise CorruptLayer(f"{what}: the blob is too short for a zstd:chunked footer")
    footer = frame[SKIPPABLE_HEADER_SIZE:]
    if footer[-8:] == _NEWER_ZSTD_MAGIC:
        raise Unsupported(
            f"{what}: a zstd:chunked layer of containers/storage 1.48 or later (tar-split "
            "footer); only the 1.43 dialect is read"
        )
    if footer[-8:] != ZSTD_MAGIC or frame[:SKIPPABLE_HEADER_SIZE] != skippable_header(
        ZSTD_FOOTER_SIZE
    ):
        raise CorruptLayer(f"{what}: no zstd:chunked footer at the end of the blob")
    offset, length, ulength, kind = struct.unpack("<QQQQ", footer[:32])
    if kind != _TOC_TYPE_CRFS:
        raise CorruptLayer(f"{what}: the zstd:chunked footer names TOC type {kind}, not 1")
    return ZstdTOCPosition(offset, length, ulength).check(blob_size, what)


def parse_manifest_position(text: str, blob_size: int, *, what: str = "layer") -> ZstdTOCPosition:
    """The ``manifest-position`` annotation, ``offset:length:ulength:type``, checked
    against the blob. MalformedDocument-like errors are CorruptLayer: the annotation is
    covered by the manifest digest, so a bad one is the producer's broken promise."""
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise CorruptLayer(f"{what}: manifest-position annotation {text!r} is not N:N:N:N")
    offset, length, ulength, kind = (int(p) for p in parts)
    if kind != _TOC_TYPE_CRFS:
        raise CorruptLayer(f"{what}: manifest-position names TOC type {kind}, not 1")
    return ZstdTOCPosition(offset, length, ulength).check(blob_size, what)
