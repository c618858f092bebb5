"""zstd: the one wrapper over ``zstandard`` for streaming decode and encode.

Decode
    ``ZstdDecompressor().stream_reader(read_across_frames=True)``: it reads every frame
    (zstd:chunked layers are one frame per file) and skips skippable frames (their TOC),
    in bounded chunks (``read_to_iter`` and ``decompressobj()`` stop after the first frame,
    and ``decompressobj`` returns a frame's whole output at once, unbounded). Checksums in
    the frames are verified by libzstd.

    The stream reader reports a truncated stream as a clean end of data. So the input is
    watched by a small frame walker (:class:`FrameWalker`: magic, frame header, block
    headers, checksum; no decoding) and a stream that ends anywhere but on a frame
    boundary is CorruptData. The window is capped at libzstd's default (128 MiB, window
    log 27): a frame asking for more is refused, so a hostile header cannot make us
    allocate gigabytes.

Encode
    ``ZstdCompressor(level, threads, write_checksum=True).stream_reader``: one frame, no
    content size (the input length is not known up front), with a checksum (cheap:
    xxhash64; lets every decoder catch corruption). Input reaches libzstd in pieces of
    exactly ``CHUNK_SIZE`` (short reads undone), so the output does not depend on how the
    source delivers it.

    Workers: with ``threads >= 1`` libzstd's streaming multi-threaded mode cuts the input
    into jobs whose size follows from the level (not from the worker count) and
    compresses them on that many threads; its bytes are **the same whatever the number
    of workers** (1, 2, 4: measured, byte for byte, on our layers at levels 1, 3 and 9 by
    benchmarks/zstd_workers.py; libzstd's maintainers promise it for streaming, zstd
    issues #2238 and #2327), and differ from the single-threaded bytes of
    ``threads == 0`` (which runs in the calling thread). So the default,
    ``threads == -1`` (:data:`ZSTD_AUTO_THREADS`), uses one worker per available CPU, at
    least one and at most :data:`MAX_AUTO_WORKERS`: a layer's digest is a function of
    its bytes, the level and the libzstd version only, never of the machine's core
    count. ``threads == 0`` is the single-threaded framing, for digests made before
    (imgpipe 0.x converted with it).

    The job size is pinned (:data:`JOB_SIZE`, 1 MiB, instead of libzstd's 4 windows,
    8 MiB at level 3): it is part of what fixes the bytes, and each worker holds a few
    jobs, so it bounds memory (a conversion runs three layers at once). Measured on the
    120 MB layer at level 3, 2 workers: 11 MB more RSS instead of 51, the same time
    (0.33-0.40 s against 0.33-0.36 s; 0.54-0.65 s single-threaded), 0.5% smaller output.
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, Final, cast

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import InvalidArgument

from .base import (
    CHUNK_SIZE,
    ChunkReader,
    Compressor,
    CorruptData,
    FullReads,
    ProcessorParams,
    Readable,
)
from .streams import PassThrough

__all__ = [
    "JOB_SIZE",
    "MAX_AUTO_WORKERS",
    "MAX_WINDOW_SIZE",
    "ZSTD_AUTO_THREADS",
    "FrameWalker",
    "ZstdCompress",
    "ZstdDecoder",
    "ZstdEncoder",
    "default_workers",
]

#: The largest window a frame may ask for (libzstd's default decoder limit, 2**27).
MAX_WINDOW_SIZE: Final = 1 << 27


#: ``threads`` meaning "one worker per available CPU" (the multi-threaded framing).
ZSTD_AUTO_THREADS: Final = -1
#: The most workers the automatic choice starts per layer: a worker holds a job in and
#: out, and a conversion runs three layers at once.
MAX_AUTO_WORKERS: Final = 4
#: libzstd's job size with workers (``ZSTD_c_jobSize``): pinned, as it shapes the bytes.
JOB_SIZE: Final = 1 << 20

_ZSTD_MAGIC: Final = 0xFD2FB528
_SKIPPABLE_MASK: Final = 0xFFFFFFF0
_SKIPPABLE_MAGIC: Final = 0x184D2A50

# walker states
_MAGIC, _FRAME_HEADER, _BLOCK_HEADER, _SKIPPABLE_SIZE = range(4)
_DICT_ID_SIZES: Final = (0, 1, 2, 4)
_CONTENT_SIZE_SIZES: Final = (0, 2, 4, 8)


class FrameWalker:
    """Follows the frame structure of a zstd stream fed to it in arbitrary pieces.

    It reads only the structure (RFC 8878 section 3.1): magic numbers, frame header
    descriptors, 3-byte block headers, checksums, skippable frame sizes, and skips the
    payloads. ``at_boundary()`` says whether the bytes so far end exactly after a whole
    frame. Costs one small Python step per block (blocks are up to 128 KiB).
    """

    def __init__(self) -> None:
        self._state = _MAGIC
        self._need = 4
        self._head = bytearray()
        self._skip = 0
        self._checksum = False
        self.frames = 0
        self.skippable_frames = 0
        self.invalid = False

    def at_boundary(self) -> bool:
        return not self.invalid and self._state == _MAGIC and not self._head and self._skip == 0

    def feed(self, data: bytes | memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end and not self.invalid:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._head), end - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) == self._need:
                head = bytes(self._head)
                self._head.clear()
                self._advance(head)

    def _advance(self, head: bytes) -> None:
        if self._state == _MAGIC:
            (magic,) = struct.unpack("<I", head)
            if magic == _ZSTD_MAGIC:
                self._state, self._need = _FRAME_HEADER, 1
            elif magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._state, self._need = _SKIPPABLE_SIZE, 4
            else:
                self.invalid = True
        elif self._state == _FRAME_HEADER:
            fhd = head[0]
            if fhd & 0x08:  # reserved bit
                self.invalid = True
                return
            single_segment = bool(fhd & 0x20)
            fcs = _CONTENT_SIZE_SIZES[fhd >> 6] or (1 if single_segment else 0)
            self._skip = (0 if single_segment else 1) + _DICT_ID_SIZES[fhd & 3] + fcs
            self._checksum = bool(fhd & 0x04)
            self._state, self._need = _BLOCK_HEADER, 3
        elif self._state == _BLOCK_HEADER:
            value = head[0] | head[1] << 8 | head[2] << 16
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:  # reserved block type
                self.invalid = True
                return
            self._skip = 1 if kind == 1 else size  # an RLE block carries one byte
            if last:
                self._skip += 4 if self._checksum else 0
                self.frames += 1
                self._state, self._need = _MAGIC, 4
        else:  # _SKIPPABLE_SIZE
            (self._skip,) = struct.unpack("<I", head)
            self.skippable_frames += 1
            self._state, self._need = _MAGIC, 4


class _Watched(PassThrough):
    """The decoder's input: every byte read also goes through the frame walker."""

    def __init__(self, raw: Readable, walker: FrameWalker) -> None:
        super().__init__(raw)
        self._walker = walker
        self.eof = False

    def _seen(self, chunk: bytes | memoryview) -> None:
        self._walker.feed(chunk)

    def _eof(self) -> None:
        self.eof = True


class ZstdDecoder(ChunkReader):
    """The decompressed bytes of every frame of a zstd stream; closing it closes ``raw``.

    ``read`` raises CorruptData for an empty stream, garbage, a corrupt or truncated
    frame, a failed checksum, a window over MAX_WINDOW_SIZE, or trailing bytes.
    """

    def __init__(self, raw: Readable) -> None:
        super().__init__()
        import zstandard  # noqa: PLC0415 (loaded when a zstd stream is opened)

        self._zstd_error = zstandard.ZstdError
        self.walker = FrameWalker()
        self._source = _Watched(raw, self.walker)
        source: Any = self._source  # zstandard wants IO[bytes]; read() is all it uses
        self._reader: Any = zstandard.ZstdDecompressor(
            max_window_size=MAX_WINDOW_SIZE
        ).stream_reader(source, read_size=CHUNK_SIZE, read_across_frames=True, closefd=False)

    def _next_chunk(self) -> bytes:
        try:
            out: bytes = self._reader.read(CHUNK_SIZE)
        except self._zstd_error as e:
            raise CorruptData(f"zstd stream is corrupt: {e}") from None
        if out:
            return out
        if not self._source.eof and self._source.read(CHUNK_SIZE):
            raise CorruptData("zstd stream has trailing data after its last frame")
        if self.walker.invalid:
            raise CorruptData("zstd stream is corrupt: not a zstd frame")
        if not self.walker.at_boundary():
            raise CorruptData("zstd stream is truncated")
        if not self.walker.frames and not self.walker.skippable_frames:
            raise CorruptData("zstd stream is empty")
        return b""

    def _close_inner(self) -> None:
        try:
            self._reader.close()
        finally:
            self._source.close()


def default_workers() -> int:
    """The workers ``threads=-1`` means: the CPUs this process may run on, 1 to
    MAX_AUTO_WORKERS (the bytes are the same for any count of at least one)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_AUTO_WORKERS))


class ZstdEncoder(ChunkReader):
    """``raw`` zstd-compressed into one frame (see the module docstring); closes ``raw``.

    ``threads``: -1 (default_workers()), 0 (single-threaded, in the calling thread) or
    that many workers; any count >= 1 gives the same bytes.
    """

    def __init__(self, raw: Readable, *, level: int, threads: int = ZSTD_AUTO_THREADS) -> None:
        super().__init__()
        import zstandard  # noqa: PLC0415 (loaded when a zstd stream is opened)

        if threads < ZSTD_AUTO_THREADS:
            raise InvalidArgument(f"zstd threads {threads}: must be -1, 0 or more")
        if threads == ZSTD_AUTO_THREADS:
            threads = default_workers()
        self.threads = threads
        self._raw = raw
        if threads:
            cparams = zstandard.ZstdCompressionParameters.from_level(
                level,
                threads=threads,
                job_size=JOB_SIZE,
                write_checksum=True,
                write_content_size=False,
            )
            compressor = zstandard.ZstdCompressor(compression_params=cparams)
        else:
            compressor = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=False
            )
        self._reader: Any = compressor.stream_reader(
            cast(Any, FullReads(raw)), read_size=CHUNK_SIZE, closefd=False
        )

    def _next_chunk(self) -> bytes:
        out: bytes = self._reader.read(CHUNK_SIZE)
        return out

    def _close_inner(self) -> None:
        try:
            self._reader.close()
        finally:
            self._raw.close()


class ZstdCompress(Compressor):
    """Encoder: uncompressed layer tar -> the zstd variant of its media type."""

    name = "zstd-compress"
    compression = "zstd"

    def open(self, stream: BinaryIO, desc: Descriptor, params: ProcessorParams) -> ZstdEncoder:
        return ZstdEncoder(stream, level=params.zstd_level, threads=params.zstd_threads)
