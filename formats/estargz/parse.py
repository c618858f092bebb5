"""Parse and validate a TOC's JSON into the model of :mod:`.toc`.

The rules are listed in :mod:`.toc`'s docstring. One pass over the entries, in order:
names are cleaned and placed (implicit parents added), each regular file's chunks are
collected and checked to tile it, and chunk offsets must increase (both writers list
chunks in the order they wrote them, so anything else is an overlap or a lie). A second
pass gives every chunk its compressed end: the next chunk's offset, the file's
``endOffset`` (containers/storage) for its last chunk, or the start of the TOC.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from imgpipe.formats._json import load_object
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidDigest, MalformedDocument, Unsupported

from .toc import MAX_ENTRIES, MAX_TOC_SIZE, TOC, Chunk, Entry, clean_name

__all__ = ["parse_toc"]

_TYPES: Final = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo"})
#: The zero time containers/storage writes for "not set".
_ZERO_TIME: Final = datetime(1, 1, 1, tzinfo=UTC)


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key, 0)
    if type(value) is int and value >= 0:
        return value  # the common case, first (a TOC has ~10 numbers per entry)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedDocument(f"{where}: {key} must be an integer")
    if value < 0:
        raise MalformedDocument(f"{where}: {key} is negative ({value})")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise MalformedDocument(f"{where}: {key} must be a string")
    return value


# A TOC repeats itself (a one-chunk file's chunkDigest is its digest, most files share a
# few modification times): parsed values are kept, pure functions of their text.
@functools.lru_cache(maxsize=4096)
def _parse_digest(text: str) -> Digest:
    return Digest.parse(text)


@functools.lru_cache(maxsize=4096)
def _parse_time(text: str) -> datetime | None:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return None if when == _ZERO_TIME else when


def _digest(obj: Mapping[str, Any], key: str, where: str) -> Digest | None:
    text = _str(obj, key, where)
    if not text:
        return None
    try:
        return _parse_digest(text)
    except InvalidDigest as e:
        raise MalformedDocument(f"{where}: {key}: {e}") from None


def _mtime(obj: Mapping[str, Any], where: str) -> datetime | None:
    text = _str(obj, "modtime", where)
    if not text:
        return None
    try:
        return _parse_time(text)
    except ValueError:
        raise MalformedDocument(f"{where}: modtime {text!r} is not RFC 3339 with a zone") from None


def _xattrs(obj: Mapping[str, Any], where: str) -> dict[str, bytes]:
    raw = obj.get("xattrs") or {}
    if not isinstance(raw, dict):
        raise MalformedDocument(f"{where}: xattrs must be an object")
    out: dict[str, bytes] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not key or "\0" in key:
            raise MalformedDocument(f"{where}: xattr {key!r} is not a name with base64 value")
        try:
            out[key] = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise MalformedDocument(f"{where}: xattr {key!r} is not base64") from None
    return out


@dataclass
class _RawChunk:
    """A chunk before its compressed end is known."""

    file_offset: int
    size: int
    offset: int
    digest: Digest
    zeros: bool
    explicit_end: int | None  # containers/storage's endOffset, for a file's last chunk
    name: str
    end: int = 0


@dataclass
class _Parser:
    data_end: int
    max_entries: int
    what: str
    entries: list[Entry] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)  # name -> position in entries
    chunks: dict[str, list[_RawChunk]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    file_end: dict[str, int] = field(default_factory=dict)  # endOffset per file
    last_offset: int = -1  # chunks come in blob order: each starts after the one before

    def fail(self, message: str) -> MalformedDocument:
        return MalformedDocument(f"{self.what}: {message}")

    # -- one entry --

    def add(self, n: int, obj: Any) -> None:
        where = f"{self.what}: entry {n}"
        if not isinstance(obj, dict):
            raise MalformedDocument(f"{where} is not an object")
        kind = _str(obj, "type", where)
        if kind == "chunk":
            self._chunk(obj, where)
            return
        if kind not in _TYPES:
            raise MalformedDocument(f"{where}: unknown type {kind!r}")
        raw_name = _str(obj, "name", where)
        if raw_name.startswith("/"):
            raise MalformedDocument(f"{where}: absolute name {raw_name!r}")
        name = clean_name(raw_name, what=f"{where}: name")
        if not name and kind != "dir":
            raise MalformedDocument(f"{where}: a {kind} at the root of the layer")
        where = f"{self.what}: {raw_name!r}"
        self._parent(name, where)
        link = _str(obj, "linkName", where)
        if kind == "symlink" and (not link or "\0" in link):
            raise MalformedDocument(f"{where}: a symlink needs a target")
        if kind == "hardlink":
            link = self._hardlink_target(link, where)
        entry = Entry(
            name=name,
            type=kind,
            size=_int(obj, "size", where) if kind == "reg" else 0,
            mode=_int(obj, "mode", where) & 0o7777,
            uid=_int(obj, "uid", where),
            gid=_int(obj, "gid", where),
            user_name=_str(obj, "userName", where),
            group_name=_str(obj, "groupName", where),
            mtime=_mtime(obj, where),
            link_name=link,
            dev_major=_int(obj, "devMajor", where),
            dev_minor=_int(obj, "devMinor", where),
            xattrs=_xattrs(obj, where),
            digest=_digest(obj, "digest", where),
        )
        self._place(entry, where)
        if kind == "reg" and entry.size:
            self._first_chunk(entry, obj, where)

    def _parent(self, name: str, where: str) -> None:
        """Make sure every parent of ``name`` is a directory, adding the unlisted ones."""
        parent = name.rpartition("/")[0]
        missing: list[str] = []
        while parent and parent not in self.index:
            missing.append(parent)
            parent = parent.rpartition("/")[0]
        if parent and self.entries[self.index[parent]].type != "dir":
            raise MalformedDocument(f"{where}: its parent {parent!r} is not a directory")
        for p in reversed(missing):
            self.index[p] = len(self.entries)
            self.entries.append(Entry(name=p, type="dir", mode=0o755, implicit=True))

    def _hardlink_target(self, link: str, where: str) -> str:
        if not link or link.startswith("/"):
            raise MalformedDocument(f"{where}: hardlink target {link!r} is not a layer name")
        target = clean_name(link, what=f"{where}: hardlink target")
        at = self.index.get(target)
        if at is None:
            raise MalformedDocument(f"{where}: hardlink to {link!r}, which is not before it")
        if self.entries[at].type == "dir":
            raise MalformedDocument(f"{where}: hardlink to the directory {link!r}")
        return target

    def _place(self, entry: Entry, where: str) -> None:
        at = self.index.get(entry.name)
        if at is None:
            self.index[entry.name] = len(self.entries)
            self.entries.append(entry)
            return
        old = self.entries[at]
        if old.implicit and entry.type == "dir":
            self.entries[at] = entry  # listed after its children: the listing wins
            return
        if old.implicit:
            raise MalformedDocument(f"{where}: a {entry.type}, but entries are under it")
        raise MalformedDocument(f"{where}: listed twice")

    # -- chunks --

    def _first_chunk(self, entry: Entry, obj: Mapping[str, Any], where: str) -> None:
        if "offset" not in obj:
            raise MalformedDocument(f"{where}: a file with data but no offset")
        if _int(obj, "chunkOffset", where):
            raise MalformedDocument(f"{where}: the first chunk must start at 0")
        self.sizes[entry.name] = entry.size
        if "endOffset" in obj:
            self.file_end[entry.name] = _int(obj, "endOffset", where)
        self.chunks[entry.name] = [self._raw_chunk(obj, entry.name, 0, where, entry.digest)]

    def _chunk(self, obj: Mapping[str, Any], where: str) -> None:
        last = self.entries[-1] if self.entries else None
        if last is None or last.name not in self.chunks or self.chunks[last.name] == []:
            raise MalformedDocument(f"{where}: a chunk that follows no file with data")
        name = last.name
        if "name" in obj:
            raw = _str(obj, "name", where)
            if raw.startswith("/") or clean_name(raw, what=f"{where}: name") != name:
                raise MalformedDocument(f"{where}: a chunk of {raw!r} after {name!r}")
        where = f"{self.what}: {name!r} chunk"
        chunks = self.chunks[name]
        expected = chunks[-1].file_offset + chunks[-1].size
        at = _int(obj, "chunkOffset", where)
        if at != expected:
            raise MalformedDocument(
                f"{where} at {at}: the chunks before it end at {expected} (gap or overlap)"
            )
        chunks.append(self._raw_chunk(obj, name, at, where, None))

    def _raw_chunk(
        self, obj: Mapping[str, Any], name: str, at: int, where: str, file_digest: Digest | None
    ) -> _RawChunk:
        if _int(obj, "innerOffset", where):
            raise Unsupported(
                f"{where}: innerOffset (eStargz min-chunk-size, stargz-snapshotter 0.13+) "
                "is not supported"
            )
        file_size = self.sizes[name]
        size = _int(obj, "chunkSize", where) or file_size - at
        if size <= 0 or at + size > file_size:
            raise MalformedDocument(
                f"{where} at {at}: {size} bytes do not fit the file's {file_size}"
            )
        offset = _int(obj, "offset", where)
        if offset >= self.data_end:
            raise MalformedDocument(f"{where}: offset {offset} is past the data ({self.data_end})")
        if offset <= self.last_offset:
            # both writers list chunks in the order they wrote them
            raise MalformedDocument(
                f"{where}: offset {offset} is not after the previous chunk's "
                f"{self.last_offset} (chunks overlap or are out of order)"
            )
        self.last_offset = offset
        digest = _digest(obj, "chunkDigest", where)
        if digest is None and at == 0 and size == file_size:
            digest = file_digest  # containers/storage: a one-chunk file has only `digest`
        if digest is None:
            raise MalformedDocument(f"{where} at {at}: no chunkDigest to verify it against")
        chunk_type = _str(obj, "chunkType", where) or "data"
        if chunk_type not in ("data", "zeros"):
            raise MalformedDocument(f"{where}: unknown chunkType {chunk_type!r}")
        return _RawChunk(at, size, offset, digest, chunk_type == "zeros", None, name)

    def finish(self) -> list[Entry]:
        """Check every file is tiled exactly and give each chunk its compressed end."""
        every: list[_RawChunk] = []
        for name, chunks in self.chunks.items():
            last = chunks[-1]
            if last.file_offset + last.size != self.sizes[name]:
                raise self.fail(
                    f"{name!r}: its chunks cover {last.file_offset + last.size} of "
                    f"{self.sizes[name]} bytes"
                )
            last.explicit_end = self.file_end.get(name)
            every += chunks
        every.sort(key=lambda c: c.offset)
        for i, c in enumerate(every):
            nxt = every[i + 1] if i + 1 < len(every) else None
            if nxt is not None and nxt.offset == c.offset:
                raise self.fail(
                    f"chunks of {c.name!r} and {nxt.name!r} overlap (both at offset {c.offset})"
                )
            end = nxt.offset if nxt is not None else self.data_end
            if c.explicit_end is not None:
                if not c.offset < c.explicit_end <= end:
                    raise self.fail(
                        f"{c.name!r}: endOffset {c.explicit_end} overlaps the next chunk or "
                        f"the TOC (offset {c.offset}, next at {end})"
                    )
                end = c.explicit_end
            c.end = end
        for entry in self.entries:
            raw = self.chunks.get(entry.name) if entry.type == "reg" else None
            if raw:
                made = tuple(
                    Chunk(c.file_offset, c.size, c.offset, c.end, c.digest, c.zeros) for c in raw
                )
                # The Entry is not shared yet: its chunks are set once, here, and it is
                # frozen from then on (dataclasses.replace would copy every entry again).
                object.__setattr__(entry, "chunks", made)
        return self.entries


def parse_toc(
    raw: bytes, *, data_end: int, what: str = "TOC", max_entries: int = MAX_ENTRIES
) -> TOC:
    """The TOC in ``raw`` (its exact JSON bytes, already verified against the layer's
    annotation by the caller), for a blob whose compressed data ends at ``data_end`` (the
    TOC's own start). MalformedDocument for anything the module docstring lists,
    ResourceLimit for a TOC over MAX_TOC_SIZE bytes, Unsupported for ``innerOffset``."""
    doc = load_object(raw, what, limit=MAX_TOC_SIZE)
    version = doc.get("version")
    if version != 1:
        raise MalformedDocument(f"{what}: version {version!r}, not 1")
    items = doc.get("entries")
    if not isinstance(items, list):
        raise MalformedDocument(f"{what}: entries must be a list")
    if len(items) > max_entries:
        raise MalformedDocument(f"{what}: {len(items)} entries, over the bound {max_entries}")
    parser = _Parser(data_end, max_entries, what)
    parser.entries.append(Entry(name="", type="dir", mode=0o755, implicit=True))
    parser.index[""] = 0
    for n, obj in enumerate(items):
        parser.add(n, obj)
    return TOC(1, parser.finish(), data_end)
