"""Find, fetch and verify the TOC of an eStargz or zstd:chunked layer, by Range.

The verification chain of the eStargz spec: the manifest (already verified by digest)
carries the layer's annotations; the TOC's bytes must hash to them before one entry is
believed; each chunk must hash to its ``chunkDigest`` before one byte is served
(:mod:`imgpipe.image.ranged`).

- eStargz (a gzip layer with ``containerd.io/snapshot/stargz/toc.digest``): the last 51
  bytes are the footer; ``[tocOffset, size - 51)`` is one gzip member holding the tar
  entry ``stargz.index.json``, whose content hashes to ``toc.digest``.
- zstd:chunked (a zstd layer with ``io.containers.zstd-chunked.manifest-checksum`` or
  ``toc.digest``): the position from ``manifest-position`` (what skopeo reads, saving a
  request) or else the 40-byte footer; the compressed TOC hashes to ``manifest-checksum``,
  the JSON inside to ``toc.digest``, each one checked when present.

Sources: anything with ``open_range(desc, offset, length)`` (the registry, which refuses
rather than download a whole blob when Range is ignored), or any blob reader whose
streams seek (an OCI layout, the content store) through :class:`SeekableRanges`.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol, runtime_checkable

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import (
    CorruptLayer,
    InvalidDigest,
    RangeNotSupported,
    ResourceLimit,
    Unsupported,
)
from imgpipe.formats.estargz import (
    ANNOTATION_TOC_DIGEST,
    ANNOTATION_ZSTD_CHECKSUM,
    ANNOTATION_ZSTD_CHECKSUM_NEW,
    ANNOTATION_ZSTD_POSITION,
    ANNOTATION_ZSTD_POSITION_NEW,
    ESTARGZ_FOOTER_SIZE,
    MAX_TOC_SIZE,
    SKIPPABLE_HEADER_SIZE,
    TOC,
    TOC_NAME,
    ZSTD_FOOTER_FRAME_SIZE,
    parse_estargz_footer,
    parse_manifest_position,
    parse_toc,
    parse_zstd_footer,
    skippable_header,
)
from imgpipe.processors.base import CorruptData, Readable
from imgpipe.processors.gzip import GzipDecoder
from imgpipe.processors.zstd import ZstdDecoder

from .blobs import BlobReader

__all__ = [
    "ESTARGZ",
    "ZSTD_CHUNKED",
    "Fetcher",
    "LoadedTOC",
    "RangeReader",
    "SeekableRanges",
    "Window",
    "check_digest",
    "layer_format",
    "load_toc",
    "range_reader",
]

ESTARGZ: Final = "estargz"
ZSTD_CHUNKED: Final = "zstd:chunked"
#: The TOC member holds a tar header (PAX headers at most a few KiB), the JSON, padding
#: and the 1024-byte end-of-archive marker.
_TOC_MEMBER_SLACK: Final = 64 << 10


@runtime_checkable
class RangeReader(Protocol):
    """Where byte ranges of blobs come from."""

    def open_range(self, desc: Descriptor, offset: int, length: int) -> BinaryIO:
        """Bytes ``[offset, offset + length)`` of the blob, unverified; the stream ends
        after ``length`` bytes. RangeNotSupported when only the whole blob can be had;
        NotFound, Unavailable as the source words them."""
        ...


class Window(io.RawIOBase):
    """The next ``length`` bytes of ``raw``; closing it closes ``raw`` only if ``owns``
    (a chunk's window on a run's stream leaves the stream to the next chunk)."""

    def __init__(self, raw: BinaryIO | io.RawIOBase, length: int, *, owns: bool = True) -> None:
        self._raw = raw
        self._left = length
        self._owns = owns

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = (self._raw.read(min(len(b), self._left)) or b"") if self._left > 0 else b""
        n = len(data)
        b[:n] = data
        self._left -= n
        return n

    def drain(self) -> None:
        """Read what is left of the window (the bytes a decoder did not need)."""
        while self._left > 0 and self.read(min(self._left, 1 << 20)):
            pass

    def close(self) -> None:
        if not self.closed and self._owns:
            self._raw.close()
        super().close()


class SeekableRanges:
    """Ranges of the blobs of a reader whose streams seek (layouts, the store)."""

    def __init__(self, reader: BlobReader) -> None:
        self.reader = reader

    def open_range(self, desc: Descriptor, offset: int, length: int) -> BinaryIO:
        f = self.reader.open_blob(desc)
        if not f.seekable():
            f.close()
            raise RangeNotSupported(f"blob {desc.digest}: its source cannot read a part of it")
        f.seek(offset)
        return io.BufferedReader(Window(f, length))


def range_reader(reader: BlobReader) -> RangeReader:
    """``reader`` itself if it reads ranges, else :class:`SeekableRanges` over it."""
    return reader if isinstance(reader, RangeReader) else SeekableRanges(reader)


class Fetcher:
    """A RangeReader that counts what it fetched (compressed bytes, requests). Thread-safe."""

    def __init__(self, ranges: RangeReader) -> None:
        self.ranges = ranges
        self.bytes_fetched = 0
        self.requests = 0
        self._lock = threading.Lock()

    def open(self, desc: Descriptor, offset: int, length: int) -> io.RawIOBase:
        stream = self.ranges.open_range(desc, offset, length)
        with self._lock:
            self.requests += 1
        return _Counted(stream, self)

    def fetch(self, desc: Descriptor, offset: int, length: int, what: str) -> bytes:
        """Exactly those bytes; CorruptLayer if the source has fewer."""
        with self.open(desc, offset, length) as f:
            data = _read_exactly(f, length)
        if len(data) != length:
            raise CorruptLayer(f"{what}: the blob ended {length - len(data)} bytes early")
        return data

    def counted(self, n: int) -> None:
        with self._lock:
            self.bytes_fetched += n


class _Counted(io.RawIOBase):
    def __init__(self, raw: BinaryIO, fetcher: Fetcher) -> None:
        self._raw = raw
        self._fetcher = fetcher

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        self._fetcher.counted(n)
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def _read_exactly(f: Readable, n: int) -> bytes:
    parts: list[bytes] = []
    left = n
    while left > 0:
        data = f.read(min(left, 1 << 20))
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def decode_prefix(stream: Readable, kind: str, n: int, what: str) -> bytes:
    """The first ``n`` decompressed bytes of ``stream`` (gzip members or zstd frames),
    fewer only if it ends; CorruptLayer if it does not decompress. Closes ``stream``."""
    decoder = GzipDecoder(stream) if kind == ESTARGZ else ZstdDecoder(stream)
    try:
        with decoder:
            return _read_exactly(decoder, n)
    except CorruptData as e:
        raise CorruptLayer(f"{what}: {e}") from None


def layer_format(desc: Descriptor, *, what: str) -> str:
    """ESTARGZ or ZSTD_CHUNKED, from the media type and annotations; Unsupported when the
    layer is neither (or says nothing that would let its TOC be verified)."""
    compression = desc.media_type.compression()
    notes = desc.annotations
    if desc.media_type.is_encrypted():
        raise Unsupported(f"{what}: an encrypted layer cannot be read by Range")
    if compression == "gzip" and ANNOTATION_TOC_DIGEST in notes:
        return ESTARGZ
    if compression == "zstd" and (
        ANNOTATION_TOC_DIGEST in notes
        or ANNOTATION_ZSTD_CHECKSUM in notes
        or ANNOTATION_ZSTD_CHECKSUM_NEW in notes
    ):
        return ZSTD_CHUNKED
    raise Unsupported(
        f"{what}: not an eStargz or zstd:chunked layer ({desc.media_type}, no "
        f"{ANNOTATION_TOC_DIGEST} or zstd-chunked manifest-checksum annotation)"
    )


def _annotated_digest(notes: Mapping[str, str], keys: tuple[str, ...], what: str) -> Digest | None:
    for key in keys:
        if key in notes:
            try:
                return Digest.parse(notes[key])
            except InvalidDigest as e:
                raise CorruptLayer(f"{what}: annotation {key}: {e}") from None
    return None


def check_digest(got: Digest | bytes, want: Digest, subject: str, note: str = "") -> None:
    """CorruptLayer ``SUBJECT hashes to GOT, not WANT (NOTE)`` unless ``got`` (a digest,
    or the bytes to hash) is ``want``."""
    if isinstance(got, bytes):
        d = Digester(want.algorithm)
        d.update(got)
        got = d.digest()
    if got != want:
        message = f"{subject} hashes to {got}, not {want}" + (f" ({note})" if note else "")
        raise CorruptLayer(message, expected=str(want), actual=str(got))


def _check(data: bytes, want: Digest | None, what: str, label: str) -> None:
    if want is not None:
        check_digest(data, want, f"{what}: the {label}", "corrupt TOC")


@dataclass(frozen=True, slots=True)
class LoadedTOC:
    """A verified TOC, its format and its digest (sha256 of the JSON)."""

    format: str
    toc: TOC
    digest: Digest


def _estargz_json(fetcher: Fetcher, desc: Descriptor, what: str) -> tuple[bytes, int]:
    size = desc.size
    if size < ESTARGZ_FOOTER_SIZE:
        raise CorruptLayer(f"{what}: {size} bytes is too short for an eStargz blob")
    footer = fetcher.fetch(desc, size - ESTARGZ_FOOTER_SIZE, ESTARGZ_FOOTER_SIZE, what)
    toc_offset = parse_estargz_footer(footer, size, what=what)
    length = size - ESTARGZ_FOOTER_SIZE - toc_offset
    if length > MAX_TOC_SIZE + _TOC_MEMBER_SLACK:
        raise ResourceLimit(f"{what}: the TOC member is {length} bytes, over {MAX_TOC_SIZE}")
    stream = fetcher.open(desc, toc_offset, length)
    bound = MAX_TOC_SIZE + _TOC_MEMBER_SLACK
    member = decode_prefix(stream, ESTARGZ, bound + 1, what + ": TOC")
    if len(member) > bound:
        raise ResourceLimit(f"{what}: the TOC member decompresses to over {bound} bytes")
    try:
        with tarfile.open(fileobj=io.BytesIO(member), mode="r:") as tar:
            info = tar.next()
            if info is None or info.name != TOC_NAME or not info.isreg():
                raise CorruptLayer(f"{what}: the TOC member holds no {TOC_NAME}")
            if info.size > MAX_TOC_SIZE:
                raise ResourceLimit(f"{what}: the TOC is {info.size} bytes, over {MAX_TOC_SIZE}")
            f = tar.extractfile(info)
            raw = f.read() if f is not None else b""
    except tarfile.TarError as e:
        raise CorruptLayer(f"{what}: the TOC member is not a tar entry: {e}") from None
    if len(raw) != info.size:
        raise CorruptLayer(f"{what}: the TOC entry is truncated")
    return raw, toc_offset


def _zstd_json(fetcher: Fetcher, desc: Descriptor, what: str) -> tuple[bytes, int]:
    notes, size = desc.annotations, desc.size
    text = notes.get(ANNOTATION_ZSTD_POSITION) or notes.get(ANNOTATION_ZSTD_POSITION_NEW)
    if text:
        pos = parse_manifest_position(text, size, what=what)
    else:
        if size < ZSTD_FOOTER_FRAME_SIZE:
            raise CorruptLayer(f"{what}: {size} bytes is too short for a zstd:chunked blob")
        frame = fetcher.fetch(desc, size - ZSTD_FOOTER_FRAME_SIZE, ZSTD_FOOTER_FRAME_SIZE, what)
        pos = parse_zstd_footer(frame, size, what=what)
    if pos.length > MAX_TOC_SIZE or pos.ulength > MAX_TOC_SIZE:
        raise ResourceLimit(f"{what}: the TOC is {pos.ulength} bytes, over {MAX_TOC_SIZE}")
    start = pos.offset - SKIPPABLE_HEADER_SIZE
    framed = fetcher.fetch(desc, start, pos.length + SKIPPABLE_HEADER_SIZE, what)
    if framed[:SKIPPABLE_HEADER_SIZE] != skippable_header(pos.length):
        raise CorruptLayer(f"{what}: no skippable frame of {pos.length} bytes holds the TOC")
    compressed = framed[SKIPPABLE_HEADER_SIZE:]
    checksum_keys = (ANNOTATION_ZSTD_CHECKSUM, ANNOTATION_ZSTD_CHECKSUM_NEW)
    _check(compressed, _annotated_digest(notes, checksum_keys, what), what, "compressed TOC")
    raw = decode_prefix(io.BytesIO(compressed), ZSTD_CHUNKED, pos.ulength + 1, what + ": TOC")
    if len(raw) != pos.ulength:
        raise CorruptLayer(f"{what}: the TOC is {len(raw)} bytes, the footer says {pos.ulength}")
    return raw, start


def load_toc(fetcher: Fetcher, desc: Descriptor, *, what: str) -> LoadedTOC:
    """The layer's TOC, fetched by Range and verified against its annotations.

    Unsupported for a layer of neither format; CorruptLayer for a footer, TOC or
    annotation that is not what it should be; MalformedDocument for a TOC that verifies
    but is hostile (see :func:`imgpipe.formats.estargz.parse_toc`); ResourceLimit over
    the TOC bound; RangeNotSupported when the source cannot read part of a blob.
    """
    kind = layer_format(desc, what=what)
    raw, data_end = (_estargz_json if kind == ESTARGZ else _zstd_json)(fetcher, desc, what)
    _check(raw, _annotated_digest(desc.annotations, (ANNOTATION_TOC_DIGEST,), what), what, "TOC")
    toc = parse_toc(raw, data_end=data_end, what=f"{what}: TOC")
    return LoadedTOC(kind, toc, Digest.from_bytes(raw))
