"""A Layer whose files are read one at a time, by Range, each chunk verified.

::

    layer = RangedLayer(image.layers()[0], range_reader(source))
    layer.stat("etc/os-release")               # from the TOC: nothing else is fetched
    layer.listdir("etc")
    layer.read("etc/os-release", 0, 4096)      # only the chunks holding those bytes
    with layer.open_file("bin/busybox") as f: ...   # sequential; whole-file digest at EOF
    layer.fetcher.bytes_fetched                # compressed bytes fetched so far

What is fetched: the footer (eStargz, or zstd:chunked without a position annotation),
the TOC, then per read the compressed range ``[chunk.offset, chunk.end)`` of each chunk
the read touches. Each chunk is decompressed (cut at its size: an eStargz member goes on
with the next tar header), hashed and compared with its ``chunkDigest`` before a byte of
it is returned: a mismatch, or a member that does not decompress, is CorruptLayer naming
the layer, the file and the offset. ``zeros`` chunks (containers/storage) need no fetch.

Verified chunks are kept in a small cache (:data:`CACHE_BYTES`), so sequential small
reads fetch each chunk once. The object is thread-safe: a FUSE server may call it from
several threads (two threads missing the same chunk may both fetch it).

It is a :class:`~imgpipe.image.model.Layer` too: descriptor, diff_id and the whole-blob
streams are the wrapped layer's.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import (
    CorruptLayer,
    InvalidArgument,
    NotFound,
    ResourceLimit,
    Unavailable,
)
from imgpipe.formats.estargz import TOC, Chunk, Entry
from imgpipe.formats.mediatype import MediaType

from .model import Layer
from .tocfetch import (
    Fetcher,
    LoadedTOC,
    RangeReader,
    Window,
    check_digest,
    decode_prefix,
    load_toc,
)

__all__ = ["CACHE_BYTES", "MAX_CHUNK_SIZE", "MAX_RETRIES", "MAX_SPAN", "RangedLayer"]

#: The largest chunk read into memory to be verified before it is served. eStargz
#: writers chunk at 4 MiB by default and zstd:chunked's chunks are content-defined and
#: small; a TOC asking for more is refused rather than allowed to exhaust memory.
MAX_CHUNK_SIZE: Final = 64 << 20
#: Verified chunks kept for later reads, in bytes.
CACHE_BYTES: Final = 32 << 20
#: Adjacent chunks a read needs are fetched together, up to this many compressed bytes
#: in one request (one round trip per 16 MiB instead of one per chunk).
MAX_SPAN: Final = 16 << 20
#: Reconnections in a row without a new verified chunk before a read gives up (as a
#: download's MAX_RESUMES); the chunks verified before the drop are kept.
MAX_RETRIES: Final = 3
_ZERO_BLOCK: Final = bytes(1 << 20)


class RangedLayer:
    """One eStargz or zstd:chunked layer of ``layer``'s image, read through ``ranges``.

    ``name`` is how errors name it (default: ``layer <digest>``). The TOC is fetched on
    first use (:meth:`toc`), once.
    """

    def __init__(
        self,
        layer: Layer,
        ranges: RangeReader,
        *,
        name: str = "",
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.layer = layer
        self.fetcher = Fetcher(ranges)
        self.name = name or f"layer {layer.descriptor.digest}"
        self._loaded: LoadedTOC | None = None
        self._toc_lock = threading.Lock()  # held while the TOC is fetched, once
        self._lock = threading.Lock()  # the chunk cache
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self._cache_bytes = cache_bytes
        self._zeros_ok: set[tuple[int, Digest]] = set()

    def __repr__(self) -> str:
        return f"RangedLayer({self.name!r})"

    # -- the Layer protocol: the wrapped layer's --------------------------------------------

    @property
    def descriptor(self) -> Descriptor:
        return self.layer.descriptor

    @property
    def media_type(self) -> MediaType:
        return self.layer.media_type

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.layer.annotations

    def diff_id(self) -> Digest:
        return self.layer.diff_id()

    def open_compressed(self) -> BinaryIO:
        return self.layer.open_compressed()

    def open_uncompressed(self, *, keys: Sequence[Any] = (), params: Any = None) -> BinaryIO:
        return self.layer.open_uncompressed(keys=keys, params=params)

    # -- the TOC --------------------------------------------------------------------------

    def loaded(self) -> LoadedTOC:
        """The verified TOC with its format and digest (fetched on the first call)."""
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._toc_lock:
            if self._loaded is None:
                self._loaded = load_toc(self.fetcher, self.descriptor, what=self.name)
            return self._loaded

    def toc(self) -> TOC:
        """The verified TOC; see :func:`~imgpipe.image.tocfetch.load_toc` for the errors."""
        return self.loaded().toc

    @property
    def format(self) -> str:
        """``estargz`` or ``zstd:chunked`` (fetches the TOC if not yet done)."""
        return self.loaded().format

    def lookup(self, path: str) -> Entry | None:
        """The entry at ``path``, or None (a name that climbs out is never found)."""
        return self.toc().get(path)

    def stat(self, path: str) -> Entry:
        """The entry at ``path`` (``/etc/passwd`` or ``etc/passwd``); NotFound if none."""
        entry = self.lookup(path)
        if entry is None:
            raise NotFound(f"{self.name}: no {path!r} in the layer")
        return entry

    def listdir(self, path: str = "") -> tuple[Entry, ...]:
        """The entries directly under the directory ``path``; NotFound, InvalidArgument
        for a non-directory."""
        entry = self.stat(path)
        if entry.type != "dir":
            raise InvalidArgument(f"{self.name}: {path!r} is not a directory")
        return self.toc().children(entry.name)

    def readlink(self, path: str) -> str:
        """A symlink's target as the TOC writes it; InvalidArgument for other types."""
        entry = self.stat(path)
        if entry.type != "symlink":
            raise InvalidArgument(f"{self.name}: {path!r} is not a symbolic link")
        return entry.link_name

    def _regular(self, path: str) -> Entry:
        entry = self.toc().data_entry(self.stat(path))
        if entry.type != "reg":
            raise InvalidArgument(f"{self.name}: {path!r} is not a regular file")
        return entry

    # -- reading ---------------------------------------------------------------------------

    def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the file at ``offset`` (fewer at its end), verified."""
        if offset < 0 or size < 0:
            raise InvalidArgument(f"{self.name}: negative read {offset}+{size}")
        entry = self._regular(path)
        return self.read_entry(entry, offset, size)

    def read_entry(self, entry: Entry, offset: int, size: int) -> bytes:
        """:meth:`read` for an entry of this layer's TOC (a regular file)."""
        end = min(offset + size, entry.size)
        parts: list[bytes] = []
        chunks = entry.chunks_for(offset, size)
        for chunk, data in zip(chunks, self.read_chunks(entry, chunks), strict=True):
            lo = max(offset - chunk.file_offset, 0)
            hi = min(end - chunk.file_offset, chunk.size)
            parts.append(data[lo:hi])
        return b"".join(parts)

    def open_file(self, path: str) -> BinaryIO:
        """The whole file as a stream, chunk by chunk, each verified; at its end the
        file's own ``digest`` is checked too (CorruptLayer on a mismatch)."""
        entry = self._regular(path)
        return io.BufferedReader(_FileStream(self, entry), buffer_size=1 << 20)

    def read_chunk(self, entry: Entry, chunk: Chunk) -> bytes:
        """The verified bytes of one chunk of ``entry`` (a zeros chunk: zeros, checked)."""
        return self.read_chunks(entry, (chunk,))[0]

    def read_chunks(self, entry: Entry, chunks: Sequence[Chunk]) -> list[bytes]:
        """The verified bytes of ``chunks`` of ``entry``, in order. The ones not cached
        are fetched in runs of adjacent chunks, one request per run (MAX_SPAN at most)."""
        found: dict[int, bytes] = {}
        missing: list[Chunk] = []
        for chunk in chunks:
            where = self._where(entry, chunk)
            if chunk.size > MAX_CHUNK_SIZE:
                raise ResourceLimit(
                    f"{where}: a chunk of {chunk.size} bytes, over {MAX_CHUNK_SIZE}"
                )
            if chunk.zeros:
                found[chunk.offset] = self._zeros(chunk, where)
                continue
            with self._lock:
                data = self._cache.get(chunk.offset)
                if data is not None:
                    self._cache.move_to_end(chunk.offset)
            if data is None:
                missing.append(chunk)
            else:
                found[chunk.offset] = data
        for run in _runs(missing):
            self._fetch_with_retries(entry, run, found)
        return [found[c.offset] for c in chunks]

    def _fetch_with_retries(self, entry: Entry, run: list[Chunk], found: dict[int, bytes]) -> None:
        failures = 0
        while todo := [c for c in run if c.offset not in found]:
            try:
                self._fetch_run(entry, todo, found)
            except Unavailable:
                # a dropped connection: ask again for what is still missing
                progress = len(todo) > len([c for c in run if c.offset not in found])
                failures = 1 if progress else failures + 1
                if failures > MAX_RETRIES:
                    raise

    def _where(self, entry: Entry, chunk: Chunk) -> str:
        return f"{self.name}: {entry.name!r} at {chunk.file_offset}"

    def _fetch_run(self, entry: Entry, run: list[Chunk], found: dict[int, bytes]) -> None:
        start, end = run[0].offset, run[-1].end
        with self.fetcher.open(self.descriptor, start, end - start) as stream:
            for chunk in run:
                window = Window(stream, chunk.end - chunk.offset, owns=False)
                data = self._verified(window, chunk, self._where(entry, chunk))
                window.drain()  # past the rest of the member: the next chunk starts there
                found[chunk.offset] = data
                self._remember(chunk.offset, data)

    def _verified(self, window: Window, chunk: Chunk, where: str) -> bytes:
        data = decode_prefix(window, self.format, chunk.size, where)
        if len(data) != chunk.size:
            raise CorruptLayer(
                f"{where}: the chunk decompresses to {len(data)} bytes, not {chunk.size}"
            )
        check_digest(data, chunk.digest, f"{where}: the chunk", "corrupt chunk")
        return data

    def _zeros(self, chunk: Chunk, where: str) -> bytes:
        key = (chunk.size, chunk.digest)
        with self._lock:
            known = key in self._zeros_ok
        if not known:
            d = Digester(chunk.digest.algorithm)
            left = chunk.size
            while left:
                n = min(left, len(_ZERO_BLOCK))
                d.update(_ZERO_BLOCK[:n])
                left -= n
            check_digest(d.digest(), chunk.digest, f"{where}: a zeros chunk")
            with self._lock:
                self._zeros_ok.add(key)
        return bytes(chunk.size)

    def _remember(self, offset: int, data: bytes) -> None:
        if len(data) > self._cache_bytes:
            return
        with self._lock:
            if offset in self._cache:
                return
            self._cache[offset] = data
            self._cached += len(data)
            while self._cached > self._cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)


def _runs(chunks: list[Chunk]) -> list[list[Chunk]]:
    """``chunks`` (in blob order) cut into runs of adjacent ones, each within MAX_SPAN."""
    runs: list[list[Chunk]] = []
    for chunk in chunks:
        last = runs[-1] if runs else None
        if last and last[-1].end == chunk.offset and chunk.end - last[0].offset <= MAX_SPAN:
            last.append(chunk)
        else:
            runs.append([chunk])
    return runs


class _FileStream(io.RawIOBase):
    """A file of a RangedLayer, read chunk after chunk; the file digest checked at EOF."""

    def __init__(self, layer: RangedLayer, entry: Entry) -> None:
        self._layer = layer
        self._entry = entry
        self._next = 0  # index of the next chunk
        self._buf = memoryview(b"")
        self._digester = Digester(entry.digest.algorithm) if entry.digest else None
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            chunks = self._entry.chunks
            if self._next >= len(chunks):
                self._finish()
                return 0
            ahead = [chunks[self._next]]
            span = ahead[0].end - ahead[0].offset
            for chunk in chunks[self._next + 1 :]:
                span += chunk.end - chunk.offset
                if span > MAX_SPAN:
                    break
                ahead.append(chunk)
            self._buf = memoryview(b"".join(self._layer.read_chunks(self._entry, ahead)))
            self._next += len(ahead)
            if self._digester is not None:
                self._digester.update(self._buf)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _finish(self) -> None:
        if self._checked or self._digester is None or self._entry.digest is None:
            return
        self._checked = True
        where = f"{self._layer.name}: {self._entry.name!r}"
        note = "its chunks verify, the file does not"
        check_digest(self._digester.digest(), self._entry.digest, where, note)
