"""The Processor protocol, its parameters, its errors, and a base for stream implementations.

A processor turns one byte stream into another and says which media types it takes and
which it gives: a decoder goes towards the uncompressed tar (decrypt, decompress), an
encoder away from it (compress, encrypt). The registry chains them by media type, as
containerd's diff service chains stream processors.

Every stream a processor returns is a binary file-like object (``read``, ``readinto``,
``close``) that also has ``annotations()``: what the encoder wants recorded on the
descriptor of its output (ocicrypt's wrapped keys). It is complete only after EOF (an
encoder may raise FailedPrecondition before); processors with nothing to add return
``{}``. Closing a processed stream closes the stream it reads from, so closing the end
of a chain releases the whole chain.

Errors (from :mod:`imgpipe.formats.errors`, plus three here)::

    NoProcessor (Unsupported)          no processor accepts the media type
    CorruptData (MalformedDocument)    compressed bytes that do not decode (truncated, garbage)
    ProcessorFailed (ImgpipeError)     an external processor exited non-zero; carries stderr
    ResourceLimit                      a decompression bound was crossed (limits.py)
    DigestMismatch, Unauthorized ...   from ocicrypt (a tampered layer, no key)
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, Final, Literal, Protocol, runtime_checkable

from imgpipe.formats._record import FrozenValue
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import (
    ImgpipeError,
    InvalidArgument,
    MalformedDocument,
    Unsupported,
)
from imgpipe.formats.mediatype import MediaType

from .limits import Limits
from .streams import PassThrough, Readable

__all__ = [
    "CHUNK_SIZE",
    "GZIP_LEVEL",
    "ZSTD_LEVEL",
    "ZSTD_THREADS",
    "ChunkReader",
    "Compressor",
    "CorruptData",
    "Direction",
    "FullReads",
    "NoProcessor",
    "ProcessedStream",
    "Processor",
    "ProcessorFailed",
    "ProcessorParams",
    "Readable",
    "read_full",
]

#: Read and output chunk size: big enough that per-call overhead vanishes next to
#: inflate/zstd/AES work, small enough that a chain of processors stays a few MB.
CHUNK_SIZE: Final = 1 << 20
#: gzip level for encoding (zlib scale 1-9). 6 is zlib's and Go's default, what
#: containerd and Docker produce, a good ratio at acceptable speed.
GZIP_LEVEL: Final = 6
#: zstd level for encoding. 3 is zstd's default and what nerdctl/containerd use.
ZSTD_LEVEL: Final = 3
#: zstd worker threads for encoding. -1 = one per available CPU (processors.zstd: the
#: multi-threaded framing, whose bytes are the same for any number of workers, so
#: reproducible whatever the machine); 0 = single-threaded in-line (other bytes).
ZSTD_THREADS: Final = -1

Direction = Literal["decode", "encode"]


class NoProcessor(Unsupported):
    """No processor turns this media type into the wanted one."""

    def __init__(self, message: str, *, media_type: str = "") -> None:
        super().__init__(message)
        self.media_type = media_type


class CorruptData(MalformedDocument):
    """Compressed (or otherwise encoded) bytes that do not decode: truncated, garbage,
    a failed checksum."""


class ProcessorFailed(ImgpipeError):
    """An external processor failed; ``stderr`` is its last words, one line, trimmed."""

    def __init__(self, message: str, *, returncode: int = 0, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class ProcessorParams(FrozenValue):
    """What processors may need besides the bytes: keys, levels, bounds.

    ``decrypt_keys`` are ocicrypt private keys (``DecryptKey``), ``recipients`` ocicrypt
    public keys (``Recipient``); both are opaque here, so this module does not import the
    cryptography. Levels apply to encoders only; ``limits`` to decoders that expand
    (default: a fresh :class:`Limits`). (A hand-written value class, not a dataclass:
    every unpack and conversion defines it.)
    """

    __slots__ = (
        "decrypt_keys",
        "gzip_level",
        "limits",
        "recipients",
        "zstd_level",
        "zstd_threads",
    )
    decrypt_keys: Sequence[Any]
    recipients: Sequence[Any]
    gzip_level: int
    zstd_level: int
    zstd_threads: int
    limits: Limits

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's was)
        self,
        decrypt_keys: Sequence[Any] = (),
        recipients: Sequence[Any] = (),
        gzip_level: int = GZIP_LEVEL,
        zstd_level: int = ZSTD_LEVEL,
        zstd_threads: int = ZSTD_THREADS,
        limits: Limits | None = None,
    ) -> None:
        if not 0 <= gzip_level <= 9:
            raise InvalidArgument(f"gzip level {gzip_level}: must be 0-9")
        if not -(1 << 17) <= zstd_level <= 22:
            raise InvalidArgument(f"zstd level {zstd_level}: must be at most 22")
        if zstd_threads < -1:
            raise InvalidArgument(f"zstd threads {zstd_threads}: must be -1, 0 or more")
        self._set(
            decrypt_keys=tuple(decrypt_keys),
            recipients=tuple(recipients),
            gzip_level=gzip_level,
            zstd_level=zstd_level,
            zstd_threads=zstd_threads,
            limits=Limits() if limits is None else limits,
        )


@runtime_checkable
class ProcessedStream(Protocol):
    """A binary, read-only stream out of a processor. ``annotations()`` is final after EOF."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: Any, /) -> int: ...

    def close(self) -> None: ...

    def annotations(self) -> Mapping[str, str]: ...


@runtime_checkable
class Processor(Protocol):
    """One step between media types.

    ``name`` identifies it in messages and configuration. ``direction`` says whether the
    registry uses it to decode (towards tar) or to encode (away from it).
    """

    name: str
    direction: Direction

    def accepts(self, media_type: MediaType) -> bool:
        """Whether ``open`` takes a stream of this type. Pure; no I/O."""
        ...

    def output_type(self, media_type: MediaType) -> MediaType:
        """The media type of the output for an input of ``media_type`` (accepted)."""
        ...

    def open(self, stream: BinaryIO, desc: Descriptor, params: ProcessorParams) -> ProcessedStream:
        """Start processing ``stream`` (of type ``desc.media_type``); the result owns it.

        Errors in the data surface from ``read`` (CorruptData, ResourceLimit,
        DigestMismatch...), errors in the setup from ``open`` (Unauthorized without a key,
        MalformedDocument without ocicrypt annotations, ProcessorFailed).
        """
        ...


class Compressor:
    """The shared half of the gzip and zstd encoders: which types they take and give.

    A known uncompressed layer type (see ``formats.mediatype.LAYER_TYPES``) becomes its
    ``compression`` variant of the same family; subclasses add ``name`` and ``open``.
    """

    compression: Literal["gzip", "zstd"]
    direction: Direction = "encode"

    def accepts(self, media_type: MediaType) -> bool:
        return MediaType(media_type.base).compressed(self.compression) is not None

    def output_type(self, media_type: MediaType) -> MediaType:
        out = MediaType(media_type.base).compressed(self.compression)
        if out is None:
            raise NoProcessor(
                f"no {self.compression} variant of {media_type}", media_type=media_type
            )
        return out


def read_full(stream: Any, size: int) -> bytes:
    """``size`` bytes from ``stream``, fewer only at EOF: undoes short reads (pipes).

    Encoders read through this: deflate's output depends on how its input is split, so
    fixed-size input pieces are what makes the output a function of the data alone.
    """
    data = stream.read(size)
    if len(data) == size or not data:
        return bytes(data)
    parts = [data]
    have = len(data)
    while have < size:
        more = stream.read(size - have)
        if not more:
            break
        parts.append(more)
        have += len(more)
    return b"".join(parts)


class FullReads(PassThrough):
    """``raw`` with short reads undone (see :func:`read_full`). Closes ``raw``."""

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return read_full(self._raw, size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        have = 0
        while have < len(view) and (n := super().readinto(view[have:])):
            have += n
        return have


class ChunkReader(io.RawIOBase):
    """A read-only stream fed by ``_next_chunk()``; the base of our processed streams.

    Subclasses return the next chunk of output (``b""`` at the end) and close their
    input in ``_close_inner``. ``read(n)`` hands out a whole chunk without copying when
    it fits, so 1 MiB reads through a chain cost no extra copies.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buf = b""
        self._pos = 0
        self._done = False

    def _next_chunk(self) -> bytes:
        raise NotImplementedError

    def _close_inner(self) -> None:
        """Release the input and any resources; called once, by close()."""

    def annotations(self) -> Mapping[str, str]:
        return {}

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed stream")
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        while self._pos >= len(self._buf):
            if self._done:
                return b""
            chunk = self._next_chunk()
            if not chunk:
                self._done = True
                self._buf, self._pos = b"", 0
                return b""
            self._buf, self._pos = chunk, 0
        if self._pos == 0 and len(self._buf) <= size:
            out = self._buf
            self._buf = b""
            return out
        out = self._buf[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def readall(self) -> bytes:
        return b"".join(iter(lambda: self.read(CHUNK_SIZE), b""))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._close_inner()
            finally:
                self._buf = b""
                super().close()
