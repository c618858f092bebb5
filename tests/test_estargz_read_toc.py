"""The eStargz / zstd:chunked TOC model and footers: real shapes accepted, hostile ones refused."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from imgpipe.formats.errors import CorruptLayer, MalformedDocument, ResourceLimit, Unsupported
from imgpipe.formats.estargz import (
    ESTARGZ_FOOTER_SIZE,
    MAX_TOC_SIZE,
    ZSTD_MAGIC,
    estargz_footer,
    parse_estargz_footer,
    parse_manifest_position,
    parse_toc,
    parse_zstd_footer,
    skippable_header,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def toc(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"version": 1, "entries": list(entries)}, indent="\t").encode()


# What ctr-remote 0.12 writes (the reference's observed shapes): a landmark, a dir, small
# files, an empty file, a chunked file, links, an xattr.
ESTARGZ = toc(
    {"name": ".no.prefetch.landmark", "type": "reg", "size": 1, "offset": 85,
     "digest": D1, "chunkDigest": D1},
    {"name": "etc/", "type": "dir", "modtime": "2023-11-14T22:13:20Z", "mode": 16877},
    {"name": "etc/hello.txt", "type": "reg", "size": 12, "mode": 420, "offset": 208,
     "digest": D2, "chunkDigest": D2, "uid": 1000, "userName": "u"},
    {"name": "etc/empty", "type": "reg", "digest": EMPTY},
    {"name": "big", "type": "reg", "size": 10, "offset": 342, "chunkSize": 4,
     "digest": D3, "chunkDigest": D1},
    {"name": "big", "type": "chunk", "offset": 400, "chunkOffset": 4, "chunkSize": 4,
     "chunkDigest": D2},
    {"name": "big", "type": "chunk", "offset": 450, "chunkOffset": 8, "chunkDigest": D3},
    {"name": "etc/link", "type": "symlink", "linkName": "hello.txt"},
    {"name": "etc/hard", "type": "hardlink", "linkName": "etc/hello.txt"},
    {"name": "etc/x", "type": "reg", "size": 2, "offset": 500, "xattrs": {"user.test": "djE="},
     "digest": D1, "chunkDigest": D1},
)  # fmt: skip

# What containers/storage 1.43 (skopeo 1.9) writes: endOffset, no chunkDigest for one
# chunk, zeros chunks.
ZSTD_CHUNKED = toc(
    {"type": "dir", "name": "etc/", "mode": 493, "modtime": "0001-01-01T00:00:00Z"},
    {"type": "reg", "name": "etc/hello.txt", "size": 12, "digest": D1, "offset": 107,
     "endOffset": 132, "modtime": "2023-11-14T22:13:20.123456789Z"},
    {"type": "reg", "name": "big", "size": 9, "digest": D2, "offset": 241, "endOffset": 400,
     "chunkSize": 3, "chunkDigest": D1},
    {"type": "chunk", "name": "big", "offset": 300, "chunkSize": 3, "chunkOffset": 3,
     "chunkDigest": D2, "chunkType": "zeros"},
    {"type": "chunk", "name": "big", "offset": 320, "chunkSize": 3, "chunkOffset": 6,
     "chunkDigest": D3},
)  # fmt: skip


def test_estargz_toc_shapes() -> None:
    t = parse_toc(ESTARGZ, data_end=600)
    names = [e.name for e in t]
    assert names[:3] == ["", ".no.prefetch.landmark", "etc"]
    etc = t.get("/etc/")
    assert etc is not None and etc.type == "dir" and etc.mode == 0o755
    hello = t.get("./etc/hello.txt")
    assert hello is not None and hello.uid == 1000 and hello.user_name == "u"
    assert [(c.offset, c.end) for c in hello.chunks] == [(208, 342)]
    big = t.get("big")
    assert big is not None
    assert [(c.file_offset, c.size, c.offset, c.end) for c in big.chunks] == [
        (0, 4, 342, 400),
        (4, 4, 400, 450),
        (8, 2, 450, 500),
    ]
    assert [c.file_offset for c in big.chunks_for(5, 4)] == [4, 8]
    assert t.get("etc/x") is not None and t.get("etc/x").xattrs == {"user.test": b"v1"}  # type: ignore[union-attr]
    hard = t.get("etc/hard")
    assert hard is not None and t.data_entry(hard) is hello
    assert [e.name for e in t.children("etc")][:2] == ["etc/hello.txt", "etc/empty"]
    assert t.get("../etc/hello.txt") is None
    assert t.prefetch_end() == 0


def test_zstd_chunked_toc_shapes() -> None:
    t = parse_toc(ZSTD_CHUNKED, data_end=1000)
    hello = t.get("etc/hello.txt")
    assert hello is not None and [(c.offset, c.end, str(c.digest)) for c in hello.chunks] == [
        (107, 132, D1)
    ]
    big = t.get("big")
    assert big is not None
    assert [(c.offset, c.end, c.zeros) for c in big.chunks] == [
        (241, 300, False),
        (300, 320, True),
        (320, 400, False),
    ]
    etc = t.get("etc")
    assert etc is not None and etc.mtime is None  # the zero time means "not set"


def test_implicit_parents_and_late_directory() -> None:
    t = parse_toc(
        toc(
            {"name": "a/b/c", "type": "reg", "digest": EMPTY},
            {"name": "a/", "type": "dir", "mode": 0o700},
        ),
        data_end=10,
    )
    a, b = t.get("a"), t.get("a/b")
    assert a is not None and not a.implicit and a.mode == 0o700
    assert b is not None and b.implicit and b.type == "dir"


HOSTILE: list[tuple[str, bytes, str]] = [
    ("dotdot", toc({"name": "a/../../etc/passwd", "type": "reg", "digest": EMPTY}), "climbs out"),
    ("absolute", toc({"name": "/etc/passwd", "type": "reg", "digest": EMPTY}), "absolute"),
    ("nul", toc({"name": "a\u0000b", "type": "reg", "digest": EMPTY}), "NUL"),
    ("duplicate", toc(
        {"name": "a", "type": "reg", "digest": EMPTY},
        {"name": "./a", "type": "reg", "digest": EMPTY},
    ), "listed twice"),
    ("under-a-file", toc(
        {"name": "a", "type": "reg", "digest": EMPTY},
        {"name": "a/b", "type": "reg", "digest": EMPTY},
    ), "not a directory"),
    ("file-over-children", toc(
        {"name": "a/b", "type": "reg", "digest": EMPTY},
        {"name": "a", "type": "reg", "digest": EMPTY},
    ), "entries are under it"),
    ("hardlink-to-nothing", toc({"name": "h", "type": "hardlink", "linkName": "x"}), "not before"),
    ("hardlink-out", toc({"name": "h", "type": "hardlink", "linkName": "../x"}), "climbs out"),
    ("hardlink-dir", toc(
        {"name": "d", "type": "dir"}, {"name": "h", "type": "hardlink", "linkName": "d"}
    ), "directory"),
    ("overlap", toc(
        {"name": "a", "type": "reg", "size": 2, "offset": 10, "chunkDigest": D1},
        {"name": "b", "type": "reg", "size": 2, "offset": 10, "chunkDigest": D2},
    ), "overlap"),
    ("endoffset-overlap", toc(
        {"name": "a", "type": "reg", "size": 2, "offset": 10, "endOffset": 30, "digest": D1},
        {"name": "b", "type": "reg", "size": 2, "offset": 20, "endOffset": 25, "digest": D2},
    ), "overlaps"),
    ("chunk-gap", toc(
        {"name": "a", "type": "reg", "size": 8, "offset": 10, "chunkSize": 4, "chunkDigest": D1},
        {"name": "a", "type": "chunk", "offset": 20, "chunkOffset": 5, "chunkDigest": D2},
    ), "gap or overlap"),
    ("chunk-short", toc(
        {"name": "a", "type": "reg", "size": 8, "offset": 10, "chunkSize": 4, "chunkDigest": D1},
    ), "cover 4 of 8"),
    ("chunk-too-big", toc(
        {"name": "a", "type": "reg", "size": 8, "offset": 10, "chunkSize": 9, "chunkDigest": D1},
    ), "do not fit"),
    ("chunk-of-other-file", toc(
        {"name": "a", "type": "reg", "size": 8, "offset": 10, "chunkSize": 4, "chunkDigest": D1},
        {"name": "b", "type": "chunk", "offset": 20, "chunkOffset": 4, "chunkDigest": D2},
    ), "a chunk of"),
    ("orphan-chunk", toc(
        {"name": "a", "type": "chunk", "offset": 20, "chunkOffset": 4, "chunkDigest": D2},
    ), "follows no file"),
    ("past-the-data", toc(
        {"name": "a", "type": "reg", "size": 2, "offset": 5000, "chunkDigest": D1},
    ), "past the data"),
    ("no-digest", toc({"name": "a", "type": "reg", "size": 2, "offset": 10}), "no chunkDigest"),
    ("no-offset", toc({"name": "a", "type": "reg", "size": 2, "chunkDigest": D1}), "no offset"),
    ("negative", toc({"name": "a", "type": "reg", "size": -1, "digest": EMPTY}), "negative"),
    ("bad-type", toc({"name": "a", "type": "socket"}), "unknown type"),
    ("bad-digest", toc({"name": "a", "type": "reg", "digest": "md5:00"}), "digest"),
    ("bad-xattr", toc({"name": "a", "type": "dir", "xattrs": {"user.x": "!!"}}), "base64"),
    ("bad-time", toc({"name": "a", "type": "dir", "modtime": "yesterday"}), "RFC 3339"),
    ("version", json.dumps({"version": 2, "entries": []}).encode(), "version"),
    ("duplicate-key", b'{"version": 1, "version": 1, "entries": []}', "duplicate"),
    ("not-json", b"\x1f\x8b garbage", "not UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_tocs_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedDocument, match=message):
        parse_toc(raw, data_end=1000)


def test_toc_bounds() -> None:
    with pytest.raises(ResourceLimit):
        parse_toc(b" " * (MAX_TOC_SIZE + 1), data_end=10)
    many = toc(*({"name": f"f{i}", "type": "dir"} for i in range(11)))
    with pytest.raises(MalformedDocument, match="over the bound"):
        parse_toc(many, data_end=10, max_entries=10)
    inner = toc({"name": "a", "type": "reg", "size": 2, "offset": 1, "innerOffset": 5,
                 "chunkDigest": D1})  # fmt: skip
    with pytest.raises(Unsupported, match="innerOffset"):
        parse_toc(inner, data_end=10)


# -- footers --------------------------------------------------------------------------------


def test_estargz_footer_round_trip() -> None:
    # the bytes the reference observed from ctr-remote 0.12 for a TOC at 6294330
    observed = bytes.fromhex(
        "1f8b08040000000000ff1a0053471600" + "30303030303030303030363030623361"
        "5354415247" + "5a" + "010000ffff" + "0000000000000000"
    )
    assert estargz_footer(6294330) == observed
    assert parse_estargz_footer(observed, 7_000_000) == 6294330


@pytest.mark.parametrize("flip", [0, 3, 11, 14, 20, 33, 40, 47])
def test_estargz_footer_flipped_byte(flip: int) -> None:
    footer = bytearray(estargz_footer(1234))
    footer[flip] ^= 0x01
    with pytest.raises(CorruptLayer):
        parse_estargz_footer(bytes(footer), 10_000, what="layer sha256:x")


def test_estargz_footer_offset_outside_blob() -> None:
    with pytest.raises(CorruptLayer, match="past the data"):
        parse_estargz_footer(estargz_footer(9999), 9999 + ESTARGZ_FOOTER_SIZE - 1)


def test_legacy_stargz_footer_is_named() -> None:
    legacy = (
        b"\x1f\x8b\x08\x04\0\0\0\0\0\xff\x16\x00" + b"%016xSTARGZ" % 100
        + b"\x01\x00\x00\xff\xff" + b"\0" * 8
    )  # fmt: skip
    with pytest.raises(Unsupported, match="legacy stargz"):
        parse_estargz_footer(b"\0" * 4 + legacy, 10_000)


def zstd_footer(offset: int, length: int, ulength: int, kind: int = 1) -> bytes:
    return skippable_header(40) + struct.pack("<QQQQ", offset, length, ulength, kind) + ZSTD_MAGIC


def test_zstd_footer() -> None:
    # the reference's observation: 6292534:815:2686:1
    observed = bytes.fromhex(
        "502a4d1828000000" "3604600000000000" "2f03000000000000" "7e0a000000000000"
        "0100000000000000" "476e556c496e5578"
    )  # fmt: skip
    pos = parse_zstd_footer(observed, 6292534 + 815 + 48)
    assert (pos.offset, pos.length, pos.ulength) == (6292534, 815, 2686)
    assert parse_manifest_position("6292534:815:2686:1", 6292534 + 815 + 48) == pos
    with pytest.raises(CorruptLayer, match="not inside"):
        parse_zstd_footer(observed, 6292534 + 815 + 47)
    with pytest.raises(CorruptLayer, match="type 2"):
        parse_zstd_footer(zstd_footer(100, 10, 10, kind=2), 1000)
    bad = bytearray(observed)
    bad[-1] ^= 1
    with pytest.raises(CorruptLayer, match="no zstd:chunked footer"):
        parse_zstd_footer(bytes(bad), 10**8)
    with pytest.raises(Unsupported, match=r"1\.48"):
        parse_zstd_footer(observed[:-8] + b"GNUlInUx", 10**8)
    with pytest.raises(CorruptLayer, match="N:N:N:N"):
        parse_manifest_position("1:2:x:1", 1000)
