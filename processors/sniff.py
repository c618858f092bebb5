"""Compression by magic bytes, and the built-in decompressor that trusts the bytes.

containerd's ``DecompressStream`` does not believe the media type: it looks at the first
bytes and decodes gzip (``1f 8b 08``), zstd (``28 b5 2f fd``, or a skippable frame
``5? 2a 4d 18``) or passes the bytes through. Registries and tools do mislabel layers
(a ``tar.gzip`` type on a plain tar, an uncompressed type on gzip bytes), and users
expect such images to unpack as they do with containerd, so :class:`Decompress` does the
same: the media type chooses the processor, the bytes choose the codec. A tar never
starts with those bytes (a tar starts with a file name), so plain tars are never mistaken.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.mediatype import LAYER_TYPES, OCI_LAYER, Compression, MediaType

from .base import Direction, ProcessorParams
from .gzip import GzipDecoder
from .limits import BoundedReader, CountingReader
from .streams import PassThrough
from .zstd import ZstdDecoder

__all__ = [
    "GZIP_MAGIC",
    "MAGIC_SIZE",
    "ZSTD_MAGIC",
    "Decompress",
    "PrefixedReader",
    "detect",
    "peek",
]

GZIP_MAGIC: Final = b"\x1f\x8b\x08"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
#: Bytes needed to tell the formats apart.
MAGIC_SIZE: Final = 4


def detect(head: bytes) -> Compression:
    """The compression the first bytes of a stream show: ``"gzip"``, ``"zstd"`` or ``""``."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    # a skippable frame, 0x184D2A50-0x184D2A5F little-endian (zstd:chunked may start so)
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return "zstd"
    return ""


class PrefixedReader(PassThrough):
    """``prefix`` then the rest of ``raw``: puts back what ``peek`` took. Closes ``raw``."""

    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        super().__init__(raw)
        self._prefix = prefix

    def read(self, size: int | None = -1) -> bytes:
        if not self._prefix or size is None or size < 0:
            return super().read(size)
        head, self._prefix = self._prefix[:size], self._prefix[size:]
        if len(head) < size:
            head += super().read(size - len(head))
        return head

    def readall(self) -> bytes:
        head, self._prefix = self._prefix, b""
        return head + super().readall()

    def readinto(self, buffer: Any) -> int:
        if not self._prefix:
            return super().readinto(buffer)
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def annotations(self) -> dict[str, str]:
        return {}


def peek(stream: BinaryIO, size: int = MAGIC_SIZE) -> tuple[bytes, PrefixedReader]:
    """Up to ``size`` first bytes of ``stream`` (fewer only at EOF), and a reader that
    yields the whole stream again."""
    head = b""
    while len(head) < size:
        data = stream.read(size - len(head))
        if not data:
            break
        head += data
    return head, PrefixedReader(head, stream)


class Decompress:
    """Decoder: any known unencrypted layer type -> the OCI tar, by the bytes' magic.

    Expanding output is bounded by ``params.limits``.
    """

    name = "decompress"
    direction: Direction = "decode"

    def accepts(self, media_type: MediaType) -> bool:
        # every known unencrypted layer type; unknown suffixes need a processor of their own
        return media_type.base in LAYER_TYPES

    def output_type(self, media_type: MediaType) -> MediaType:
        return OCI_LAYER

    def open(self, stream: BinaryIO, desc: Descriptor, params: ProcessorParams) -> Any:
        head, prefixed = peek(stream)
        kind = detect(head)
        if not kind:
            return prefixed
        counter = CountingReader(prefixed)
        decoder = GzipDecoder(counter) if kind == "gzip" else ZstdDecoder(counter)
        return BoundedReader(decoder, counter, params.limits, what=f"layer {desc.digest}")
