"""The compressed members of a seekable layer (:mod:`.estargz_write`), built in order
and compressed on a thread pool.

A member is compressed in one call on its whole bytes, whatever pieces it was written
in, and each member's compressor starts fresh: so the output depends only on the bytes
and the level, never on the number of workers or on how the input arrived. gzip members
carry the header Go's ``compress/gzip`` writes (mtime 0, XFL by level, OS 255), as
:mod:`.gzip` does; zstd members are single frames with checksum and content size.

Memory: a member's pieces are joined into one exact-size ``bytes`` when it is closed
(then only that is kept until it is compressed, and dropped once it is), and a layer
keeps at most one batch per worker in flight (:func:`max_in_flight`); a batch is about
:data:`BATCH` bytes, or one chunk of a big file (4 MiB by default).
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

__all__ = ["BATCH", "Members", "gzip_compressor", "max_in_flight", "zstd_compressor"]

#: Members are handed to the workers in batches of about this many bytes, so that a
#: layer of small files does not cost one thread hand-off per file.
BATCH: Final = 1 << 20

#: The compressed member's type: the bytes of a member in, its compressed form out.
Compress = Callable[[bytes], bytes]


def max_in_flight(workers: int) -> int:
    """Batches a layer keeps submitted (queued or compressing) at most: one per worker.
    The producer (tar parsing, hashing: a few ms per 4 MiB chunk) refills a slot long
    before a worker frees the next (gzip -9: about 0.1 s per chunk), so more buys no
    speed, only memory: ``2 * workers + 1`` before, 125 MiB peak RSS for
    benchmarks/estargz.py's image, 91-93 MiB now, in the same time (measured).
    """
    return max(1, workers)


def gzip_compressor(level: int) -> Compress:
    """bytes -> one complete gzip member at ``level`` (zlib-ng; thread-safe)."""
    from .gzip import GZIP_OS_BYTE, encode_backend  # noqa: PLC0415 (codec on first use)

    _, lib = encode_backend()
    # Go's compress/gzip header (as processors.gzip writes): mtime 0, XFL by level, OS 255
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes(
        (2 if level == 9 else 4 if level == 1 else 0, GZIP_OS_BYTE)
    )

    def member(data: bytes) -> bytes:
        c = lib.compressobj(level, lib.DEFLATED, -15, 8, lib.Z_DEFAULT_STRATEGY)
        trailer = struct.pack("<II", lib.crc32(data), len(data) & 0xFFFFFFFF)
        return b"".join((header, c.compress(data), c.flush(), trailer))

    return member


def zstd_compressor(level: int) -> Compress:
    """bytes -> one zstd frame at ``level`` (one compressor per thread)."""
    import zstandard  # noqa: PLC0415 (codec on first use)

    local = threading.local()  # a ZstdCompressor is not thread-safe: one per worker

    def frame(data: bytes) -> bytes:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True
            )
        out: bytes = c.compress(data)
        return out

    return frame


class Members:
    """The members being built, in order; complete ones are compressed by the pool.

    ``write`` appends to the open member (and to the DiffID hash); ``cut`` closes it and
    opens the next, returning the new member's index. Batches of closed members are
    compressed by ``pool``; ``take`` hands back the next batch's compressed bytes, in
    order, and records each member's compressed size.
    """

    def __init__(self, compress: Compress, pool: ThreadPoolExecutor) -> None:
        self._compress = compress
        self._pool = pool
        self._open: list[bytes] = []
        self._closed: list[bytes] = []
        self._closed_size = 0
        self.jobs: deque[Future[list[bytes]]] = deque()
        self.index = 0
        self.sizes: list[int] = []
        self.diff = hashlib.sha256()
        self.uncompressed = 0

    def write(self, data: bytes) -> None:
        if data:
            self._open.append(data)
            self.diff.update(data)
            self.uncompressed += len(data)
            self._closed_size += len(data)

    def _close_open(self) -> None:
        # one exact-size copy, here, and the pieces go: nothing else holds the member
        pieces, self._open = self._open, []
        self._closed.append(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def cut(self) -> int:
        self._close_open()
        self.index += 1
        if self._closed_size >= BATCH:
            self.submit()
        return self.index

    def submit(self) -> None:
        if self._closed:
            batch, self._closed, self._closed_size = self._closed, [], 0
            self.jobs.append(self._pool.submit(self._run, batch))

    def finish(self) -> None:
        """Close the last member and hand over everything."""
        self._close_open()
        self.submit()

    def _run(self, batch: list[bytes]) -> list[bytes]:
        # one call per member on its whole bytes: how the input was split never shows;
        # each member's bytes are dropped as soon as it is compressed
        out = []
        for i, member in enumerate(batch):
            out.append(self._compress(member))
            batch[i] = b""
        return out

    def take(self) -> bytes:
        out = self.jobs.popleft().result()
        self.sizes.extend(len(m) for m in out)
        return b"".join(out)
