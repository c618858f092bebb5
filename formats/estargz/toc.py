"""The table of contents of an eStargz or zstd:chunked layer: parsed, validated, typed.

Both dialects are one JSON object ``{"version": 1, "entries": [...]}``; an entry per tar
entry, and ``chunk`` entries after a regular file for its further chunks. eStargz (and
stargz-snapshotter's zstd variant) gives a chunk's compressed start (``offset``) and lets
the next offset end it; containers/storage adds ``endOffset`` to a file's first entry (the
end of its last chunk), leaves ``chunkDigest`` out of one-chunk files (then ``digest``
covers the chunk) and marks runs of zeros ``chunkType: "zeros"``.

The TOC comes from the layer, so it is hostile until proven otherwise.
:func:`~imgpipe.formats.estargz.parse.parse_toc` refuses (MalformedDocument) what a
reader must never act on:

- names that are absolute or climb out (``/x``, ``a/../../x``), NUL bytes, overlong names;
- two entries for one name, an entry under a non-directory, a hardlink to nothing;
- chunks that do not tile their file exactly (gaps, overlaps, sizes that disagree with
  the file size), chunks whose compressed ranges overlap or lie past the data;
- a file with data but no digest to check it against; types outside the spec;
- more than ``max_entries`` entries (the JSON size is bounded before it is decoded).

Names are normalised: no leading ``./`` or ``/`` and no trailing ``/``; the root is ``""``.
Parent directories the TOC does not list are added (``implicit``), as the reference
reader does. Only pure data here: the reader that fetches and verifies lives in
:mod:`imgpipe.image.ranged`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import MalformedDocument

__all__ = [
    "LANDMARK_NO_PREFETCH",
    "LANDMARK_PREFETCH",
    "MAX_ENTRIES",
    "MAX_NAME_LENGTH",
    "MAX_TOC_SIZE",
    "TOC",
    "TOC_NAME",
    "Chunk",
    "Entry",
    "clean_name",
]

#: The largest TOC JSON accepted, uncompressed. A layer of 200 000 files has a TOC of
#: about 60 MB; the bound is checked before anything is decoded.
MAX_TOC_SIZE: Final = 64 << 20
#: The most entries (files and chunks) a TOC may list.
MAX_ENTRIES: Final = 1 << 20
#: Linux's PATH_MAX: no tar entry of a real layer names more.
MAX_NAME_LENGTH: Final = 4096
#: The TOC's tar entry name in an eStargz blob.
TOC_NAME: Final = "stargz.index.json"
LANDMARK_PREFETCH: Final = ".prefetch.landmark"
LANDMARK_NO_PREFETCH: Final = ".no.prefetch.landmark"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One verified unit of a file: ``size`` bytes at ``file_offset`` in the file, whose
    compressed frame or member lies at ``[offset, end)`` of the blob and whose bytes hash
    to ``digest``. A ``zeros`` chunk is all zero bytes: nothing needs fetching."""

    file_offset: int
    size: int
    offset: int
    end: int
    digest: Digest
    zeros: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    """A file, directory, link or device of the layer, as the TOC lists it.

    ``mode`` is the permission bits (with setuid, setgid, sticky); ``link_name`` is a
    symlink's target as written, or a hardlink's target as a normalised name.
    ``chunks`` tile ``[0, size)`` of a regular file in order. ``implicit``: a parent
    directory the TOC did not list.
    """

    name: str
    type: str
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    mtime: datetime | None = None
    link_name: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    digest: Digest | None = None
    chunks: tuple[Chunk, ...] = ()
    implicit: bool = False

    def chunks_for(self, offset: int, size: int) -> tuple[Chunk, ...]:
        """The chunks holding bytes ``[offset, offset + size)`` of the file (clipped)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return ()
        first = max(bisect.bisect_right(self.chunks, offset, key=_start) - 1, 0)
        last = bisect.bisect_left(self.chunks, end, key=_start)
        return self.chunks[first:last]


def _start(chunk: Chunk) -> int:
    return chunk.file_offset


class TOC:
    """A validated TOC: the entries in TOC order (implicit parents before their first
    child), looked up by name. Read-only after construction."""

    def __init__(self, version: int, entries: list[Entry], data_end: int) -> None:
        self.version = version
        self.data_end = data_end
        self.entries: tuple[Entry, ...] = tuple(entries)
        self._by_name = {e.name: e for e in entries}
        children: dict[str, list[Entry]] = {}
        for e in entries:
            if e.name:
                children.setdefault(e.name.rpartition("/")[0], []).append(e)
        self._children = {k: tuple(v) for k, v in children.items()}

    def __repr__(self) -> str:
        return f"TOC({len(self.entries)} entries)"

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def get(self, name: str) -> Entry | None:
        """The entry at ``name`` (``/etc/passwd``, ``etc/passwd`` or ``./etc/passwd``),
        None if the layer has none; InvalidArgument-like MalformedDocument is never
        raised here: a name that climbs out simply is not in the layer."""
        try:
            return self._by_name.get(clean_name(name))
        except MalformedDocument:
            return None

    def children(self, name: str) -> tuple[Entry, ...]:
        """The entries directly under the directory ``name``, in TOC order."""
        return self._children.get(clean_name(name), ())

    def data_entry(self, entry: Entry) -> Entry:
        """The regular file whose chunks hold ``entry``'s bytes (itself, or a hardlink's
        target)."""
        while entry.type == "hardlink":
            entry = self._by_name[entry.link_name]
        return entry

    def prefetch_end(self) -> int:
        """Where the files to prefetch end (the offset of ``.prefetch.landmark``); 0 when
        the layer has no such landmark."""
        landmark = self._by_name.get(LANDMARK_PREFETCH)
        if landmark is None or not landmark.chunks:
            return 0
        return landmark.chunks[0].offset


def clean_name(raw: str, *, what: str = "name") -> str:
    """``raw`` normalised (no ``./``, ``/`` or empty components, no trailing ``/``); the
    root is ``""``. MalformedDocument for ``..`` components, NUL bytes or overlong
    names. A leading ``/`` is allowed here (for lookups); :func:`parse_toc` refuses it."""
    if "\0" in raw:
        raise MalformedDocument(f"{what} {raw!r} contains a NUL byte")
    if len(raw) > MAX_NAME_LENGTH:
        raise MalformedDocument(f"{what} is {len(raw)} characters, over {MAX_NAME_LENGTH}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MalformedDocument(f"{what} {raw!r} climbs out of the layer ('..')")
    return "/".join(parts)
