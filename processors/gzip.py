"""gzip: streaming multi-member decode and reproducible encode.

Decode
    Every member of the stream is decoded (eStargz layers are many members, one per
    file plus a TOC; decoding only the first silently truncates them). Each member's
    CRC-32 and length are checked by the inflate library. Anything after the last member
    that is not another member is an error, as in Go's ``compress/gzip`` (containerd's
    in-process decoder). Output comes in chunks of at most ``CHUNK_SIZE``, whatever the
    ratio, so memory stays flat on a bomb; bounds are the caller's (limits.py).

    Backends, first importable wins (the output is the same whatever the backend):
    ``isal`` (python-isal; 750-780 MB/s on an idle 2-core machine), ``zlib-ng``
    (python-zlib-ng, the declared dependency; 575 MB/s), stdlib ``zlib`` (290 MB/s, the
    fallback). We drive ``decompressobj`` ourselves rather than the libraries' GzipFile
    classes: those were 4-8% faster (isal 808, zlib-ng 620 MB/s), but we need what they
    do not give: each output chunk bounded (``max_length``) whatever the ratio, and
    trailing bytes refused rather than ignored (GzipFile skips zero padding).

Encode (pinned for reproducible digests)
    The same input and level give the same bytes as long as these hold:

    - deflate by **zlib-ng** (python-zlib-ng 1.x, zlib-ng 2.x), raw deflate
      (wbits -15), memLevel 8, default strategy, the given level (default 6); stdlib zlib
      is used only if zlib-ng is missing, and its bytes differ;
    - our own 10-byte header: no name, no comment, no extra field, **mtime 0**,
      **OS byte 255** ("unknown"), XFL 2 at level 9, 4 at level 1, else 0: the header Go's
      ``compress/gzip`` writes, so imgpipe's layers look like containerd's and Docker's;
    - a single member; the trailer is CRC-32 and the length mod 2**32 (RFC 1952);
    - input handed to deflate in pieces of exactly ``CHUNK_SIZE`` (1 MiB): deflate's
      output depends on how its input is split, so short reads from a pipe are undone.

    A different zlib-ng release may change the deflate bytes; the DiffID (the digest of
    the uncompressed tar) never changes.
"""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any, BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import InvalidArgument

from .base import (
    CHUNK_SIZE,
    ChunkReader,
    Compressor,
    CorruptData,
    ProcessorParams,
    Readable,
    read_full,
)

__all__ = [
    "DECODE_BACKENDS",
    "ENCODE_BACKENDS",
    "GZIP_OS_BYTE",
    "GzipCompress",
    "GzipDecoder",
    "GzipEncoder",
    "decode_backend",
    "encode_backend",
]

#: Decoders in order of preference (measured fastest first); see the module docstring.
DECODE_BACKENDS: Final = ("isal", "zlib-ng", "zlib")
#: Encoders in order of preference: zlib-ng is the pinned one; zlib only as a fallback.
ENCODE_BACKENDS: Final = ("zlib-ng", "zlib")
#: The OS byte of our header: 255 (unknown), as Go's compress/gzip writes.
GZIP_OS_BYTE: Final = 255
#: Input read per inflate call. Smaller than an output chunk: with ``max_length`` the
#: unconsumed input is copied on each call, so a small input chunk keeps that cheap.
_INPUT_CHUNK: Final = 256 << 10
_GZIP_WBITS: Final = 31  # zlib: gzip header and trailer, 32 KiB window
_RAW_WBITS: Final = -15  # zlib: raw deflate, 32 KiB window (we write header and trailer)
_MEM_LEVEL: Final = 8


def _load(name: str) -> ModuleType | None:
    # backends load on first use: an import of imgpipe.processors costs none of them
    try:
        if name == "isal":
            from isal import isal_zlib  # noqa: PLC0415

            return isal_zlib
        if name == "zlib-ng":
            from zlib_ng import zlib_ng  # noqa: PLC0415

            return zlib_ng
        if name == "zlib":
            import zlib  # noqa: PLC0415

            return zlib
    except ImportError:
        return None
    raise InvalidArgument(f"unknown gzip backend {name!r}")


def decode_backend(name: str | None = None) -> tuple[str, ModuleType]:
    """The inflate module to use: ``name``, or the first importable of DECODE_BACKENDS.

    Raises InvalidArgument for an unknown or uninstalled backend name.
    """
    for candidate in (name,) if name else DECODE_BACKENDS:
        mod = _load(candidate)
        if mod is not None:
            return candidate, mod
    raise InvalidArgument(f"gzip backend {name!r} is not installed")


def encode_backend(name: str | None = None) -> tuple[str, ModuleType]:
    """The deflate module to use: ``name``, or the first importable of ENCODE_BACKENDS."""
    if name == "isal":
        raise InvalidArgument("gzip encoding is pinned to zlib-ng (or zlib); not isal")
    for candidate in (name,) if name else ENCODE_BACKENDS:
        mod = _load(candidate)
        if mod is not None:
            return candidate, mod
    raise InvalidArgument(f"gzip backend {name!r} is not installed")


class GzipDecoder(ChunkReader):
    """The decompressed bytes of a (multi-member) gzip stream; closing it closes ``raw``.

    ``read`` raises CorruptData for an empty stream, a bad header, a corrupt or truncated
    member, a CRC or length mismatch, or trailing bytes that are not a gzip member.
    """

    def __init__(self, raw: Readable, *, backend: str | None = None) -> None:
        super().__init__()
        self._raw = raw
        self.backend, self._lib = decode_backend(backend)
        self._d: Any = None  # the current member's decompressobj
        self._in = b""  # input not yet given to inflate
        self._members = 0

    @property
    def members(self) -> int:
        """How many members were decoded completely so far."""
        return self._members

    def _next_chunk(self) -> bytes:
        lib = self._lib
        while True:
            if self._d is None:  # between members
                if not self._in:
                    self._in = self._raw.read(_INPUT_CHUNK)
                    if not self._in:
                        if not self._members:
                            raise CorruptData("gzip stream is empty")
                        return b""
                self._d = lib.decompressobj(_GZIP_WBITS)
            d = self._d
            if not self._in:
                self._in = self._raw.read(_INPUT_CHUNK)
                if not self._in:
                    # input ended inside a member: inflate may still hold output that
                    # did not fit the last chunk; anything else means truncation
                    try:
                        out = d.flush()
                    except lib.error as e:
                        raise CorruptData(f"gzip stream is corrupt: {e}") from None
                    if not d.eof:
                        raise CorruptData("gzip stream is truncated")
                    self._end_member(d)
                    if out:
                        return bytes(out)
                    continue
            try:
                out = d.decompress(self._in, CHUNK_SIZE)
            except lib.error as e:
                what = "trailing data after the last gzip member" if self._members else "gzip"
                raise CorruptData(f"{what} is corrupt: {e}") from None
            if d.eof:
                self._end_member(d)
            else:
                self._in = d.unconsumed_tail
            if out:
                return bytes(out)

    def _end_member(self, d: Any) -> None:
        self._in = d.unused_data
        self._members += 1
        self._d = None

    def _close_inner(self) -> None:
        self._raw.close()


def _header(level: int) -> bytes:
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    # magic, CM=deflate, FLG=0, MTIME=0, XFL, OS
    return b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + bytes((xfl, GZIP_OS_BYTE))


class GzipEncoder(ChunkReader):
    """``raw`` gzip-compressed, reproducibly (see the module docstring); closes ``raw``."""

    def __init__(self, raw: Readable, *, level: int, backend: str | None = None) -> None:
        super().__init__()
        if not 0 <= level <= 9:
            raise InvalidArgument(f"gzip level {level}: must be 0-9")
        self._raw = raw
        self.backend, self._lib = encode_backend(backend)
        self._c = self._lib.compressobj(
            level, self._lib.DEFLATED, _RAW_WBITS, _MEM_LEVEL, self._lib.Z_DEFAULT_STRATEGY
        )
        self._pending = _header(level)
        self._crc = 0
        self._size = 0
        self._finished = False

    def _next_chunk(self) -> bytes:
        if self._finished:
            return b""
        out = [self._pending] if self._pending else []
        self._pending = b""
        while True:
            data = read_full(self._raw, CHUNK_SIZE)
            if not data:
                out.append(self._c.flush())
                out.append(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
                self._finished = True
                return b"".join(out)
            self._crc = self._lib.crc32(data, self._crc)
            self._size += len(data)
            compressed = self._c.compress(data)
            if compressed:
                out.append(compressed)
                return b"".join(out) if len(out) > 1 else compressed

    def _close_inner(self) -> None:
        self._raw.close()


class GzipCompress(Compressor):
    """Encoder: uncompressed layer tar -> the gzip variant of its media type."""

    name = "gzip-compress"
    compression = "gzip"

    def open(self, stream: BinaryIO, desc: Descriptor, params: ProcessorParams) -> GzipEncoder:
        return GzipEncoder(stream, level=params.gzip_level)
