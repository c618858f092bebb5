"""The eStargz TOC as its writers produce it: entries, their JSON, the tar headers and
footers around it (the layout rules are in :mod:`.estargz_write`).

JSON: byte for byte what Go's ``json.MarshalIndent(toc, "", "\\t")`` writes for
stargz-snapshotter's ``JTOC`` (``estargz/types.go``): keys in the struct's order, zero
values omitted (``omitempty``), map keys sorted, xattr values base64 (Go ``[]byte``),
strings escaped as Go 1.19 does (``<``, ``>``, ``&``, U+2028/9 and control characters as
``\\u00XX``, invalid UTF-8 as U+FFFD), no trailing newline. The TOC digest is the sha256
of exactly these bytes, so ``ctr-remote images get-toc-digest --dump-toc`` re-marshals
our TOC to the same bytes. zstd:chunked adds ``endOffset`` (containers/storage's key,
ignored by stargz-snapshotter) after ``offset``.

Footers: eStargz's 51-byte empty gzip member with ``%016xSTARGZ`` in an ``SG`` extra
field (containers/storage 1.43 reads bytes 16-31 directly); zstd:chunked's 40 bytes
(TOC offset, compressed and uncompressed length, type 1, ``GnUlInUx``) in a skippable
frame, as both containers/storage 1.43 and stargz-snapshotter 0.12 read them.
"""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

# the footers, sizes and names the reader parses, shared so that both sides agree
from imgpipe.formats.estargz.footer import (
    ESTARGZ_FOOTER_SIZE,
    ZSTD_FOOTER_SIZE,
    ZSTD_MAGIC,
    estargz_footer,
    skippable_header,
)
from imgpipe.formats.estargz.toc import LANDMARK_NO_PREFETCH as NO_PREFETCH_LANDMARK
from imgpipe.formats.estargz.toc import LANDMARK_PREFETCH as PREFETCH_LANDMARK
from imgpipe.formats.estargz.toc import TOC_NAME

__all__ = [
    "ESTARGZ_FOOTER_SIZE",
    "LANDMARK_CONTENTS",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TOC_NAME",
    "ZSTD_FOOTER_SIZE",
    "estargz_footer",
    "format_modtime",
    "go_json",
    "skippable_frame",
    "toc_json",
    "ustar_header",
    "zstd_footer",
]

#: A landmark file's only byte (stargz-snapshotter's ``landmarkContents``).
LANDMARK_CONTENTS: Final = b"\x0f"
#: The TOC type in the zstd:chunked footer and position annotation ("CRFS").
_MANIFEST_TYPE_CRFS: Final = 1

#: TOCEntry's JSON keys in the Go struct's field order (the order MarshalIndent writes).
ENTRY_KEYS: Final = (
    "name",
    "type",
    "size",
    "modtime",
    "linkName",
    "mode",
    "uid",
    "gid",
    "userName",
    "groupName",
    "offset",
    "endOffset",  # containers/storage's; only zstd:chunked file entries carry it
    "devMajor",
    "devMinor",
    "xattrs",
    "digest",
    "chunkOffset",
    "chunkSize",
    "chunkDigest",
)

_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif o < 0x20 or ch in "<>&" or o in (0x2028, 0x2029):
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\ufffd")  # a byte that was not UTF-8 (surrogateescape)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_json(value: Any, indent: str = "") -> str:
    """``value`` as Go's MarshalIndent with prefix "" and indent tab writes it (dicts keep
    their order: build them in the Go struct's order; ``bytes`` become base64)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, bytes):
        return _go_string(base64.b64encode(value).decode())
    inner = indent + "\t"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{inner}{_go_string(k)}: {go_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + go_json(v, inner) for v in value) + "\n" + indent + "]"
    raise TypeError(f"go_json: {type(value).__name__}")


def toc_json(entries: Iterable[Mapping[str, Any]]) -> bytes:
    """The TOC document: ``{"version": 1, "entries": [...]}``; each entry's zero values
    are dropped here and its keys put in the Go order."""
    cleaned = []
    for e in entries:
        cleaned.append({k: e[k] for k in ENTRY_KEYS if e.get(k)})
    doc = {"version": 1, "entries": cleaned}
    return go_json(doc).encode()


def format_modtime(mtime: float) -> str:
    """As Go's ``formatModtime``: "" for Unix 0 (the whole second, floored), else UTC
    RFC 3339 rounded to the second (halves up)."""
    if math.floor(mtime) == 0:
        return ""
    seconds = math.floor(mtime + 0.5)
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return ""  # a time no calendar here can show; Go's would not round-trip either


def _octal(value: int, width: int) -> bytes:
    # Go's formatOctal: zero-padded, NUL-terminated
    return b"%0*o\0" % (width - 1, value)


def ustar_header(name: str, size: int) -> bytes:
    """The header Go's ``tar.Writer`` writes for ``{Typeflag: reg, Name, Size}`` (mode,
    uid, gid and mtime 0, no user names, ustar): the landmarks' and the TOC's."""
    raw = name.encode()
    assert len(raw) <= 100, name
    block = bytearray(512)
    block[0 : len(raw)] = raw
    block[100:108] = _octal(0, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)
    block[156:157] = b"0"
    block[257:265] = b"ustar\x0000"
    block[329:337] = _octal(0, 8)
    block[337:345] = _octal(0, 8)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def skippable_frame(data: bytes) -> bytes:
    """A zstd skippable frame (magic 0x184D2A50) holding ``data``."""
    return skippable_header(len(data)) + data


def zstd_footer(toc_offset: int, compressed: int, uncompressed: int) -> bytes:
    """The 40-byte zstd:chunked footer (put it in a skippable frame)."""
    return (
        struct.pack("<QQQQ", toc_offset, compressed, uncompressed, _MANIFEST_TYPE_CRFS) + ZSTD_MAGIC
    )
