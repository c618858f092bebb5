"""eStargz and zstd:chunked writers: an uncompressed layer tar in, the seekable layer out.

Both formats are a stream of independent compressed *members* (gzip members, or zstd
frames) that decompress, concatenated, to a tar; a reader that knows where each file's
payload starts (the TOC) can fetch and decompress one file alone. The layout is that of
stargz-snapshotter 0.12's ``estargz.Writer``, which containers/storage 1.43 also reads:

* a new member starts at offset 0, at the start of every non-empty regular file's
  payload and at every ``chunk_size`` bytes of it (default 4 MiB); the tar header of a
  file (and the previous file's padding) goes into the member still open, so a member
  decompresses to its chunk first, then padding and the next headers;
* each entry's raw header blocks are copied as they are (PAX records, long names), so
  the converted tar says exactly what the source did (:mod:`.estargz_tar`);
* the TOC (:mod:`.estargz_toc`) lists every entry and chunk with the compressed
  ``offset`` of the member its payload starts in and the ``chunkDigest`` of its bytes.

**eStargz** (``format="estargz"``, gzip): the landmark ``.no.prefetch.landmark`` is the
first entry (or, with ``prioritized`` files, those files with their parent directories
and hardlink targets first, then ``.prefetch.landmark``, then the rest, as ``ctr-remote
--estargz-record-in`` orders them); existing TOC and landmark entries of the source are
dropped (converting twice gives the same layer); the source's end-of-archive blocks are
dropped and the TOC is the last tar entry, ``stargz.index.json``, in a member of its own
that also holds the new end-of-archive blocks; then the 51-byte footer. The tar changes,
so the layer has a new DiffID (:attr:`EstargzEncoder.diff_id`).

**zstd:chunked** (``format="zstdchunked"``): zstd frames instead of gzip members, no
landmarks, and the source tar kept byte for byte, end-of-archive blocks and trailing
padding included (skopeo 1.9 drops that padding and containerd then refuses the DiffID):
the DiffID does not change. The TOC (the same JSON plus containers/storage's
``endOffset``) is zstd-compressed in a skippable frame, then the 40-byte footer in
another, so decompressors never see them.

Entries that appear twice: the last one wins, as in tar extraction; the TOC lists only
the last (readers refuse duplicate names). Without ``prioritized`` files the layer
streams through (both copies stay in the tar); with them the tar is spooled to a
temporary file first, to be reordered, and earlier copies are dropped as ctr-remote does.

Reproducible: the bytes depend only on the input and the parameters, never on the
number of ``workers`` (members are compressed in parallel but each as one call on the
whole member, in order), unlike ctr-remote 0.12 whose output depends on GOMAXPROCS.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Final

from imgpipe.formats.errors import ResourceLimit
from imgpipe.formats.estargz.toc import MAX_ENTRIES

from .base import CHUNK_SIZE, ChunkReader
from .estargz_members import Members, gzip_compressor, max_in_flight, zstd_compressor
from .estargz_params import (
    ANNOTATIONS,
    DEFAULT_CHUNK_SIZE,
    ESTARGZ_GZIP_LEVEL,
    FORMATS,
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    MAX_TOC_SIZE,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EstargzParams,
)
from .estargz_tar import TarEntry, TarReader, clean_name
from .estargz_toc import (
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_NAME,
    estargz_footer,
    format_modtime,
    skippable_frame,
    toc_json,
    ustar_header,
    zstd_footer,
)

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
    "EstargzEncoder",
    "EstargzParams",
]

_EOA: Final = b"\0" * 1024
_SKIPPED: Final = frozenset({TOC_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})


class EstargzEncoder(ChunkReader):
    """``raw`` (an uncompressed tar) as an eStargz or zstd:chunked layer; closes ``raw``.

    After EOF: ``annotations()`` for the layer descriptor (toc.digest, uncompressed
    size, and the zstd:chunked manifest checksum and position), ``diff_id`` (the digest
    of the decompressed layer, ``sha256:...``), ``toc_digest``. Reading raises
    MalformedDocument / Unsupported / ResourceLimit for a tar we cannot convert.
    """

    def __init__(self, raw: BinaryIO, params: EstargzParams) -> None:
        super().__init__()
        self._raw = raw
        self._params = params
        workers = params.workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="estargz")
        self._max_jobs = max_in_flight(workers)
        zstd = params.format == "zstdchunked"
        compress = (
            zstd_compressor(params.zstd_level) if zstd else gzip_compressor(params.gzip_level)
        )
        self._compress = compress
        self._members = Members(compress, self._pool)
        self._toc: list[dict[str, Any]] = []
        self._names: dict[tuple[str, int], str] = {}
        self._producer: Iterator[None] | None = self._produce()
        self._spool: Any = None
        self._finished = False
        self._annotations: dict[str, str] = {}
        self.diff_id = ""
        self.toc_digest = ""

    # -- the layout --------------------------------------------------------------------

    def _produce(self) -> Iterator[None]:
        """Write every entry into the members; yields after each chunk, so that the
        reader can take finished members while the next ones are built."""
        reader = TarReader(self._raw)
        p = self._params
        if p.format == "zstdchunked":
            while (entry := reader.next()) is not None:
                yield from self._entry(entry, reader.read_payload)
                self._members.write(reader.read_padding(entry))
            self._members.write(reader.tail())  # every trailing byte, as it was
        elif p.prioritized:
            yield from self._reordered(reader)
        else:
            yield from self._landmark(NO_PREFETCH_LANDMARK)
            while (entry := reader.next()) is not None:
                if clean_name(entry.name) in _SKIPPED:
                    _skip(reader, entry)
                    continue
                yield from self._entry(entry, reader.read_payload)
                self._members.write(reader.read_padding(entry))
            reader.tail()  # the source's end-of-archive: the TOC member brings its own
        self._members.finish()

    def _reordered(self, reader: TarReader) -> Iterator[None]:
        """Prioritized files first (ctr-remote's order); the tar is spooled to reorder."""
        # closed by close(), with the stream: it outlives this generator's frames
        self._spool = tempfile.TemporaryFile(dir=self._params.spool_dir, prefix="estargz-")  # noqa: SIM115
        order: dict[str, tuple[TarEntry, int]] = {}  # by clean name; the last copy wins
        while (entry := reader.next()) is not None:
            name = clean_name(entry.name)
            offset = self._spool.tell()
            left = entry.size
            while left:
                data = reader.read_payload(min(left, CHUNK_SIZE))
                self._spool.write(data)
                left -= len(data)
            reader.read_padding(entry)
            if name in _SKIPPED:
                continue
            order.pop(name, None)
            order[name] = (entry, offset)
        reader.tail()
        first: dict[str, tuple[TarEntry, int]] = {}
        for path in self._params.prioritized:
            _move(clean_name(path), order, first)
        for entry, offset in first.values():
            yield from self._spooled(entry, offset)
        yield from self._landmark(PREFETCH_LANDMARK)
        for entry, offset in order.values():
            yield from self._spooled(entry, offset)

    def _spooled(self, entry: TarEntry, offset: int) -> Iterator[None]:
        spool = self._spool
        spool.seek(offset)

        def read(n: int) -> bytes:
            data: bytes = spool.read(n)
            return data

        yield from self._entry(entry, read)
        self._members.write(b"\0" * entry.padding)

    def _landmark(self, name: str) -> Iterator[None]:
        entry = TarEntry(
            header=ustar_header(name, len(LANDMARK_CONTENTS)),
            name=name,
            kind="reg",
            size=len(LANDMARK_CONTENTS),
            mode=0,
            uid=0,
            gid=0,
            uname="",
            gname="",
            mtime=0,
            linkname="",
            devmajor=0,
            devminor=0,
        )
        yield from self._entry(entry, lambda n: LANDMARK_CONTENTS[:n])
        self._members.write(b"\0" * entry.padding)

    def _name_if_changed(self, kind: str, ident: int, name: str) -> str:
        # userName/groupName only when they change for that id (estargz nameIfChanged)
        if not name or self._names.get((kind, ident)) == name:
            return ""
        self._names[(kind, ident)] = name
        return name

    def _entry(self, entry: TarEntry, read: Callable[[int], bytes]) -> Iterator[None]:
        """One entry: its header into the open member, its payload chunk by chunk into
        members of their own, its TOC entries (padding: the caller's)."""
        m = self._members
        toc: dict[str, Any] = {
            "name": entry.name,
            "type": entry.kind,
            "size": entry.size,
            "modtime": format_modtime(entry.mtime),
            "linkName": entry.linkname,
            "mode": entry.mode,
            "uid": entry.uid,
            "gid": entry.gid,
            "userName": self._name_if_changed("u", entry.uid, entry.uname),
            "groupName": self._name_if_changed("g", entry.gid, entry.gname),
            "devMajor": entry.devmajor,
            "devMinor": entry.devminor,
            "xattrs": dict(sorted(entry.xattrs.items())),
        }
        m.write(entry.header)
        if entry.kind != "reg":
            self._toc.append(toc)
            return
        file_digest = hashlib.sha256()
        chunk_size = self._params.chunk_size
        written = 0
        current = toc
        while written < entry.size:
            n = min(chunk_size, entry.size - written)
            current["_member"] = toc["_last_member"] = m.cut()
            current["chunkOffset"] = written
            if n == chunk_size:
                current["chunkSize"] = n  # the last chunk too, when it is a full one
            chunk_digest = hashlib.sha256()
            left = n
            while left:
                data = read(min(left, CHUNK_SIZE))
                m.write(data)
                chunk_digest.update(data)
                file_digest.update(data)
                left -= len(data)
            current["chunkDigest"] = "sha256:" + chunk_digest.hexdigest()
            self._toc.append(current)
            written += n
            current = {"name": entry.name, "type": "chunk"}
            yield
        toc["digest"] = "sha256:" + file_digest.hexdigest()
        if not entry.size:
            self._toc.append(toc)

    # -- the TOC and footer ------------------------------------------------------------

    def _entries(self, offsets: list[int]) -> list[dict[str, Any]]:
        """The TOC entries with offsets resolved, earlier copies of a name dropped."""
        last: dict[str, int] = {}
        for i, e in enumerate(self._toc):
            if e["type"] != "chunk":
                last[clean_name(e["name"])] = i
        out = []
        keep = False
        zstd = self._params.format == "zstdchunked"
        for i, e in enumerate(self._toc):
            if e["type"] != "chunk":
                keep = last[clean_name(e["name"])] == i
            if not keep:
                continue
            member = e.pop("_member", None)
            if member is not None:
                e["offset"] = offsets[member]
            final = e.pop("_last_member", None)
            if zstd and final is not None:
                # containers/storage's endOffset: on the file's entry, where its last
                # chunk's member ends (chunk entries carry none)
                e["endOffset"] = offsets[final + 1]
            out.append(e)
        return out

    def _finish(self) -> bytes:
        """The tail of the layer, once every member's compressed size is known."""
        m = self._members
        offsets = [0]
        for size in m.sizes:
            offsets.append(offsets[-1] + size)
        entries = self._entries(offsets)
        if len(entries) > MAX_ENTRIES:
            raise ResourceLimit(
                f"the layer has {len(entries)} TOC entries, over the {MAX_ENTRIES} readers accept"
            )
        doc = toc_json(entries)
        if len(doc) > MAX_TOC_SIZE:
            raise ResourceLimit(
                f"the layer's TOC is {len(doc)} bytes, over the {MAX_TOC_SIZE} readers accept"
            )
        self.toc_digest = "sha256:" + hashlib.sha256(doc).hexdigest()
        end = offsets[-1]
        ann = {TOC_DIGEST_ANNOTATION: self.toc_digest}
        if self._params.format == "zstdchunked":
            compressed = self._compress(doc)
            toc_offset = end + 8  # after the skippable frame's own header
            tail = skippable_frame(compressed) + skippable_frame(
                zstd_footer(toc_offset, len(compressed), len(doc))
            )
            ann[MANIFEST_CHECKSUM_ANNOTATION] = "sha256:" + hashlib.sha256(compressed).hexdigest()
            ann[MANIFEST_POSITION_ANNOTATION] = f"{toc_offset}:{len(compressed)}:{len(doc)}:1"
        else:
            member = ustar_header(TOC_NAME, len(doc)) + doc + b"\0" * (-len(doc) % 512) + _EOA
            m.diff.update(member)
            m.uncompressed += len(member)
            tail = self._compress(member) + estargz_footer(end)
        ann[UNCOMPRESSED_SIZE_ANNOTATION] = str(m.uncompressed)
        self.diff_id = "sha256:" + m.diff.hexdigest()
        self._annotations = ann
        return tail

    # -- the stream --------------------------------------------------------------------

    def _next_chunk(self) -> bytes:
        m = self._members
        while True:
            ready = m.jobs and (
                self._producer is None or len(m.jobs) >= self._max_jobs or m.jobs[0].done()
            )
            if ready:
                return m.take()
            if self._producer is not None:
                if next(self._producer, StopIteration) is StopIteration:
                    self._producer = None
                continue
            if not self._finished:
                self._finished = True
                return self._finish()
            return b""

    def annotations(self) -> dict[str, str]:
        return dict(self._annotations)

    def _close_inner(self) -> None:
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._spool is not None:
                self._spool.close()
        finally:
            self._raw.close()


def _skip(reader: TarReader, entry: TarEntry) -> None:
    left = entry.size
    while left:
        left -= len(reader.read_payload(min(left, CHUNK_SIZE)))
    reader.read_padding(entry)


def _move(
    name: str, source: dict[str, tuple[TarEntry, int]], dest: dict[str, tuple[TarEntry, int]]
) -> None:
    """Move ``name`` to ``dest`` after its parent directories and its hardlink target
    (estargz ``moveRec``); a name in neither is skipped, as ctr-remote allows."""
    if name == "":
        if "" in source:
            dest[""] = source.pop("")
        return
    if name not in source and name not in dest:
        return
    _move(posixpath.dirname(name), source, dest)
    if name in source and source[name][0].kind == "hardlink":
        _move(clean_name(source[name][0].linkname), source, dest)
    if name in source:
        dest[name] = source.pop(name)
