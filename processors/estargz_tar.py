"""A forward-only tar reader that keeps every byte: each entry's raw header blocks, its
payload and padding, and the end-of-archive tail, for the eStargz and zstd:chunked
writers (:mod:`.estargz_write`).

Why not ``tarfile``: the writers copy each entry's header blocks as they are (PAX and
GNU extension blocks included), so that the converted tar describes exactly what the
source did, and zstd:chunked keeps the source tar byte for byte (its DiffID stays). They
also need the name as written (``etc/`` keeps its slash, as Go's reader and the eStargz
TOC have it; tarfile strips it). So this reads the header blocks itself, with the rules
Go's ``archive/tar`` applies (that is what ctr-remote and containers/storage parse with):

* ustar (``ustar\\0`` + ``00``: name = prefix/name), GNU (``ustar  \\0``: no prefix) and v7;
* PAX extended headers (``x``) override path, linkpath, size, uid, gid, uname, gname and
  mtime; ``SCHILY.xattr.NAME`` records are the xattrs; GNU ``L``/``K`` long names;
* numbers in octal or base-256; the header checksum is checked (signed or unsigned sum);
* type ``\\0`` is a regular file (a directory if the name ends in ``/``);
* a PAX global header (``g``), GNU sparse files and multi-volume entries are refused:
  eStargz's TOC cannot describe them (ctr-remote refuses them too);
* the archive ends at the first zero block, or at a clean EOF on a block boundary (the
  zstd variant of stargz-snapshotter writes no end-of-archive blocks); EOF inside an
  entry is an error.

Extension headers are bounded (:data:`MAX_EXTENSION`), so a hostile tar cannot make us
read a huge PAX record into memory.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from imgpipe.formats.errors import MalformedDocument, ResourceLimit, Unsupported

__all__ = ["BLOCK", "MAX_EXTENSION", "TarEntry", "TarReader", "clean_name"]

BLOCK: Final = 512
#: The largest PAX / GNU long-name body read into memory (Go's reader allows 1 MiB).
MAX_EXTENSION: Final = 1 << 20

_REG_TYPES: Final = (b"0", b"\0", b"7")  # 7 (contiguous) is read as a regular file, as Go does
_TYPES: Final = {
    b"0": "reg",
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}
_XATTR_PREFIX: Final = "SCHILY.xattr."


def clean_name(name: str) -> str:
    """A tar name as readers compare them: ``path.Clean("/" + name)`` without the ``/``."""
    return posixpath.normpath("/" + name).lstrip("/")


@dataclass
class TarEntry:
    """One tar entry: its raw header blocks and what they say.

    ``header`` holds every block before the payload (PAX / GNU extension headers and
    their bodies included). ``kind`` is the eStargz TOC type (``reg``, ``dir``, ...).
    ``mtime`` is in seconds (a float when a PAX record had a fraction).
    """

    header: bytes
    name: str
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: float
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def padding(self) -> int:
        """Zero bytes after the payload, up to the block boundary."""
        return -self.size % BLOCK


def _str(raw: bytes) -> str:
    # NUL-terminated; bytes that are not UTF-8 survive (surrogateescape) for the JSON
    # writer to replace, as Go's encoder does
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(raw: bytes, what: str) -> int:
    if raw and raw[0] & 0x80:  # base-256 (GNU): big-endian two's complement
        value = int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
        if raw[0] & 0x40:
            value -= 1 << (8 * len(raw) - 1)
        return value
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise MalformedDocument(f"tar header: {what} field {raw!r} is not a number") from None


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    body = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(body)
    signed = sum(b - 256 if b > 127 else b for b in body)
    return stored in (unsigned, signed)


def _pax_records(body: bytes) -> dict[str, str]:
    """``"%d key=value\\n"`` records; later ones win, as in Go."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        if body[pos] == 0:
            break  # NUL padding after the last record
        space = body.find(b" ", pos)
        if space < 0:
            raise MalformedDocument("tar: a PAX record without a length")
        try:
            length = int(body[pos:space])
        except ValueError:
            raise MalformedDocument("tar: a PAX record length is not a number") from None
        record = body[space + 1 : pos + length]
        if length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise MalformedDocument("tar: a malformed PAX record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class TarReader:
    """Reads ``stream`` (an uncompressed tar) entry by entry, keeping every byte.

    ``next()`` returns the next :class:`TarEntry` (or None at the end); the caller then
    reads exactly ``entry.size`` payload bytes with ``read_payload`` and the padding with
    ``read_padding``. After the end, ``tail()`` is every byte left (the end-of-archive
    blocks and any padding after them). ``offset`` counts the bytes consumed.
    Raises MalformedDocument (a header that does not parse, EOF inside an entry),
    ResourceLimit (an extension header over MAX_EXTENSION) and Unsupported.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lookahead = b""
        self.offset = 0

    def _read(self, n: int) -> bytes:
        parts = [self._lookahead[:n]]
        self._lookahead = self._lookahead[n:]
        got = len(parts[0])
        while got < n:
            data = self._stream.read(n - got)
            if not data:
                break
            parts.append(bytes(data))
            got += len(data)
        out = b"".join(parts)
        self.offset += len(out)
        return out

    def _exact(self, n: int, what: str) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise MalformedDocument(f"tar ends at offset {self.offset} inside {what} (truncated)")
        return data

    def read_payload(self, n: int) -> bytes:
        """Up to ``n`` payload bytes (exactly ``n`` unless the tar is cut: an error)."""
        return self._exact(n, "a file's data")

    def read_padding(self, entry: TarEntry) -> bytes:
        return self._exact(entry.padding, "a file's padding")

    def tail(self) -> bytes:
        """Every byte after the last entry (call once, after ``next()`` returned None)."""
        rest = [self._lookahead]
        self._lookahead = b""
        while data := self._stream.read(1 << 20):
            rest.append(bytes(data))
        out = b"".join(rest)
        self.offset += len(out)
        return out

    def next(self) -> TarEntry | None:
        """The next entry, or None at the end-of-archive block or a clean EOF."""
        raw: list[bytes] = []
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            start = self.offset
            block = self._read(BLOCK)
            if not block:
                if raw:
                    raise MalformedDocument("tar ends after an extension header (truncated)")
                return None
            if len(block) < BLOCK:
                raise MalformedDocument(f"tar ends at offset {self.offset} inside a header")
            if block.count(0) == BLOCK:
                if raw:
                    raise MalformedDocument("tar: an extension header without its entry")
                # keep the end-of-archive block for tail()
                self._lookahead = block + self._lookahead
                self.offset -= BLOCK
                return None
            if not _checksum_ok(block):
                raise MalformedDocument(f"tar: invalid header checksum at offset {start}")
            flag = block[156:157]
            size = _number(block[124:136], "size")
            if flag in (b"x", b"L", b"K"):
                if size > MAX_EXTENSION:
                    raise ResourceLimit(
                        f"tar extended header of {size} bytes at offset {start}: "
                        f"more than {MAX_EXTENSION}"
                    )
                body = self._exact(size + (-size % BLOCK), "an extended header")
                raw += [block, body]
                if flag == b"x":
                    pax.update(_pax_records(body[:size]))
                elif flag == b"L":
                    long_name = _str(body[:size])
                else:
                    long_link = _str(body[:size])
                continue
            if flag == b"g":
                raise Unsupported(
                    f"tar: a PAX global header at offset {start}: eStargz cannot carry it"
                )
            if flag in (b"S", b"M", b"V") or any(k.startswith("GNU.sparse.") for k in pax):
                raise Unsupported(f"tar: a GNU sparse or multi-volume entry at offset {start}")
            raw.append(block)
            return self._entry(b"".join(raw), block, pax, long_name, long_link)

    def _entry(
        self,
        header: bytes,
        block: bytes,
        pax: dict[str, str],
        long_name: str | None,
        long_link: str | None,
    ) -> TarEntry:
        flag = block[156:157]
        name = _str(block[0:100])
        magic = block[257:265]
        if magic == b"ustar\x0000" and (prefix := _str(block[345:500])):
            name = f"{prefix}/{name}"
        name = pax.get("path", long_name if long_name is not None else name)
        linkname = pax.get("linkpath", long_link if long_link is not None else _str(block[157:257]))
        if flag in _REG_TYPES:
            kind = "dir" if flag == b"\0" and name.endswith("/") else "reg"
        elif flag in _TYPES:
            kind = _TYPES[flag]
        else:
            raise Unsupported(f"tar entry {name!r}: type {flag!r} has no eStargz equivalent")

        def num(key: str, raw: bytes) -> int:
            if key in pax:
                try:
                    return int(pax[key])
                except ValueError:
                    raise MalformedDocument(f"tar: PAX {key} {pax[key]!r}") from None
            return _number(raw, key)

        size = num("size", block[124:136])
        if kind != "reg":
            size = 0  # only regular files have data (Go ignores the size of the others)
        mtime: float = _number(block[136:148], "mtime")
        if "mtime" in pax:
            try:
                mtime = float(pax["mtime"])
            except ValueError:
                raise MalformedDocument(f"tar: PAX mtime {pax['mtime']!r}") from None
        if size < 0:
            raise MalformedDocument(f"tar entry {name!r}: negative size")
        return TarEntry(
            header=header,
            name=name,
            kind=kind,
            size=size,
            mode=_number(block[100:108], "mode"),
            uid=num("uid", block[108:116]),
            gid=num("gid", block[116:124]),
            uname=pax.get("uname", _str(block[265:297])),
            gname=pax.get("gname", _str(block[297:329])),
            mtime=mtime,
            linkname=linkname if kind in ("symlink", "hardlink") else "",
            devmajor=_number(block[329:337], "devmajor") if kind in ("char", "block") else 0,
            devminor=_number(block[337:345], "devminor") if kind in ("char", "block") else 0,
            xattrs={
                k[len(_XATTR_PREFIX) :]: v.encode("utf-8", "surrogateescape")
                for k, v in pax.items()
                if k.startswith(_XATTR_PREFIX)
            },
        )
