"""The eStargz and zstd:chunked writers, byte level (processors/estargz_write.py).

Layouts checked against the rules of the reference (stargz-snapshotter 0.12's writer,
containers/storage 1.43's reader): members start where payloads and chunks start and
decompress to the chunk first; the TOC's keys and omissions; the 51-byte and 40-byte
footers; zstd:chunked keeps the source tar byte for byte; the output does not depend on
the worker count or on how the input arrives. The peers read the same layers in
test_estargz_write_peers.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import struct
import tarfile
import zlib
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from imgpipe.formats.errors import MalformedDocument, Unsupported
from imgpipe.processors.estargz_toc import go_json
from imgpipe.processors.estargz_write import (
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EstargzEncoder,
    EstargzParams,
)

#: A small chunk size keeps the tests quick (the default, 4 MiB, is tested through the CLI).
CHUNK = 64 << 10
BIG = random.Random(14).randbytes(96 << 10) + b"\0" * (32 << 10)  # two chunks


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tar(entries: list[tuple[str, dict[str, Any], bytes | None]], *, pad: int = 0) -> bytes:
    """A PAX tar of (name, TarInfo attributes, data); ``pad`` zero bytes appended."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, attrs, data in entries:
            ti = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue() + b"\0" * pad


SAMPLE = make_tar(
    [
        ("etc", {"type": tarfile.DIRTYPE, "mode": 0o755, "mtime": 1_600_000_000}, None),
        ("etc/hello", {"mode": 0o644, "mtime": 1_600_000_000.6, "uname": "root"}, b"hello\n"),
        ("etc/empty", {"mode": 0o600, "uid": 1000, "gid": 1000, "uname": "u", "gname": "g"}, b""),
        ("etc/again", {"uid": 1000, "uname": "u"}, b"x"),
        ("etc/link", {"type": tarfile.SYMTYPE, "linkname": "hello"}, None),
        ("etc/hard", {"type": tarfile.LNKTYPE, "linkname": "etc/hello"}, None),
        ("etc/xattr", {"pax_headers": {"SCHILY.xattr.user.test": "v1"}}, b"abc"),
        ("dev/null", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None),
        ("big", {"mode": 0o755}, BIG),
        ("exact", {}, b"e" * CHUNK),
        ("a<b&c", {}, b"x"),
    ],
    pad=4096,
)


def encode(tar: bytes, **kw: Any) -> tuple[bytes, EstargzEncoder]:
    kw.setdefault("chunk_size", CHUNK)
    enc = EstargzEncoder(io.BytesIO(tar), EstargzParams(**kw))
    with enc:
        out = enc.read()
    return out, enc


def toc_of(blob: bytes) -> tuple[bytes, dict[str, Any]]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as t:
        member = t.getmember("stargz.index.json")
        raw = t.extractfile(member).read()  # type: ignore[union-attr]
    return raw, json.loads(raw)


def member_at(blob: bytes, offset: int, n: int, zstd: bool = False) -> bytes:
    """The first ``n`` bytes decompressed from ``offset`` (one member, or frames on)."""
    if zstd:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(blob[offset:]), read_across_frames=True
        )
        out = b""
        while len(out) < n and (piece := reader.read(n - len(out))):
            out += piece
        return out
    return zlib.decompressobj(31).decompress(blob[offset:], n)[:n]


def test_estargz_toc_keys_and_rules() -> None:
    blob, enc = encode(SAMPLE)
    raw, toc = toc_of(blob)
    assert raw.startswith(b'{\n\t"version": 1,\n\t"entries": [\n\t\t{\n\t\t\t"name": ')
    assert not raw.endswith(b"\n")
    assert enc.toc_digest == sha(raw) == enc.annotations()[TOC_DIGEST_ANNOTATION]
    entries = toc["entries"]
    by_name = {e["name"]: e for e in entries if e["type"] != "chunk"}
    # the landmark comes first, the TOC is not listed
    assert entries[0]["name"] == ".no.prefetch.landmark"
    assert entries[0]["digest"] == entries[0]["chunkDigest"] == sha(b"\x0f")
    assert "stargz.index.json" not in by_name
    # names as in the tar (a directory keeps its slash); zero values omitted
    assert by_name["etc/"] == {
        "name": "etc/",
        "type": "dir",
        "modtime": "2020-09-13T12:26:40Z",
        "mode": 0o755,
    }
    hello = by_name["etc/hello"]
    assert hello["modtime"] == "2020-09-13T12:26:41Z"  # rounded to the second
    assert hello["userName"] == "root" and "uid" not in hello and "gid" not in hello
    assert hello["digest"] == hello["chunkDigest"] == sha(b"hello\n")
    assert "chunkSize" not in hello and "chunkOffset" not in hello
    empty = by_name["etc/empty"]
    assert empty["digest"] == sha(b"") and "offset" not in empty and "chunkDigest" not in empty
    assert (empty["userName"], empty["groupName"]) == ("u", "g")
    # userName only when it changes for that uid
    assert "userName" not in by_name["etc/again"]
    assert by_name["etc/link"]["linkName"] == "hello"
    assert by_name["etc/hard"]["linkName"] == "etc/hello" and "digest" not in by_name["etc/hard"]
    assert by_name["etc/xattr"]["xattrs"] == {"user.test": "djE="}  # base64 of b"v1"
    assert (by_name["dev/null"]["devMajor"], by_name["dev/null"]["devMinor"]) == (1, 3)
    assert all("innerOffset" not in e and "endOffset" not in e for e in entries)
    # chunks: the reg entry is chunk 0; chunk entries carry only the chunk's keys
    big = [e for e in entries if e["name"] == "big"]
    assert [e["type"] for e in big] == ["reg", "chunk"]
    assert big[0]["chunkSize"] == CHUNK and big[0]["size"] == len(BIG)
    assert set(big[1]) == {"name", "type", "offset", "chunkOffset", "chunkSize", "chunkDigest"}
    assert big[1]["chunkOffset"] == CHUNK and big[1]["chunkSize"] == CHUNK
    # an exact multiple of the chunk size: its (only) chunk carries chunkSize
    assert by_name["exact"]["chunkSize"] == CHUNK
    # Go's encoder escapes <, > and &
    assert b'"a\\u003cb\\u0026c"' in raw


def test_estargz_members_start_at_each_payload() -> None:
    blob, enc = encode(SAMPLE)
    _, toc = toc_of(blob)
    entries = toc["entries"]
    size = {e["name"]: e.get("size", 0) for e in entries if e["type"] == "reg"}
    for e in entries:
        if "offset" not in e:
            continue
        n = e.get("chunkSize") or size[e["name"]] - e.get("chunkOffset", 0)
        assert sha(member_at(blob, e["offset"], n)) == e["chunkDigest"], e["name"]
    # the footer: an empty gzip member naming the TOC member's offset at bytes 16-31
    footer = blob[-51:]
    assert footer[:10] == b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
    assert footer[10:16] == b"\x1a\x00SG\x16\x00" and footer[32:38] == b"STARGZ"
    assert footer[38:] == b"\x01\x00\x00\xff\xff" + b"\0" * 8
    toc_offset = int(footer[16:32], 16)
    tail = zlib.decompressobj(31).decompress(blob[toc_offset:-51])
    assert tail[:17] == b"stargz.index.json" and tail.endswith(b"\0" * 1024)
    assert gzip.decompress(footer) == b""
    # the whole blob is a gzip stream of a tar whose DiffID and size are announced
    plain = gzip.decompress(blob)
    assert enc.diff_id == sha(plain)
    assert enc.annotations()[UNCOMPRESSED_SIZE_ANNOTATION] == str(len(plain))
    with tarfile.open(fileobj=io.BytesIO(plain)) as t:
        names = t.getnames()
    assert names[0] == ".no.prefetch.landmark" and names[-1] == "stargz.index.json"


def test_zstdchunked_keeps_the_tar_byte_for_byte() -> None:
    blob, enc = encode(SAMPLE, format="zstdchunked")
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    assert plain == SAMPLE  # the padding after the end-of-archive blocks included
    assert enc.diff_id == sha(SAMPLE)
    ann = enc.annotations()
    assert ann[UNCOMPRESSED_SIZE_ANNOTATION] == str(len(SAMPLE))
    # 40-byte footer in a skippable frame; the TOC in the one before it
    assert blob[-48:-40] == b"\x50\x2a\x4d\x18\x28\x00\x00\x00"
    off, clen, ulen, kind = struct.unpack("<QQQQ", blob[-40:-8])
    assert (kind, blob[-8:]) == (1, b"GnUlInUx")
    assert ann[MANIFEST_POSITION_ANNOTATION] == f"{off}:{clen}:{ulen}:1"
    assert blob[off - 8 : off - 4] == b"\x50\x2a\x4d\x18"
    compressed = blob[off : off + clen]
    assert ann[MANIFEST_CHECKSUM_ANNOTATION] == sha(compressed)
    doc = zstandard.ZstdDecompressor().decompress(compressed)
    assert len(doc) == ulen and ann[TOC_DIGEST_ANNOTATION] == sha(doc)
    entries = json.loads(doc)["entries"]
    assert not [e for e in entries if "landmark" in e["name"]]  # no landmarks in zstd:chunked
    size = {e["name"]: e.get("size", 0) for e in entries if e["type"] == "reg"}
    ends = set()
    for e in entries:
        if "offset" in e:
            n = e.get("chunkSize") or size[e["name"]] - e.get("chunkOffset", 0)
            assert sha(member_at(blob, e["offset"], n, zstd=True)) == e["chunkDigest"]
        if e["type"] == "chunk":
            assert "endOffset" not in e
        elif "offset" in e:
            # containers/storage's endOffset: the end of the file's last chunk
            frames = blob[e["offset"] : e["endOffset"]]
            assert sha(member_at(frames, 0, size[e["name"]], zstd=True)) == e["digest"]
            ends.add(e["endOffset"])
    assert max(ends) == off - 8  # the last member ends where the TOC frame starts


def test_output_depends_on_neither_workers_nor_input_splits() -> None:
    class Trickle(io.RawIOBase):
        """The tar in odd short reads, as a pipe would hand it over."""

        def __init__(self, data: bytes) -> None:
            self._data, self._pos, self._n = data, 0, 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            self._n += 1
            n = min(len(b), 1 + (self._n * 7919) % 70000, len(self._data) - self._pos)
            b[:n] = self._data[self._pos : self._pos + n]
            self._pos += n
            return n

    for fmt in ("estargz", "zstdchunked"):
        one, _ = encode(SAMPLE, format=fmt, workers=1)
        two, _ = encode(SAMPLE, format=fmt, workers=2)
        params = EstargzParams(format=fmt, chunk_size=CHUNK, workers=3)  # type: ignore[arg-type]
        enc = EstargzEncoder(Trickle(SAMPLE), params)
        with enc:
            trickled = enc.read()
        assert one == two == trickled, fmt


def test_converting_an_estargz_layer_again_gives_the_same_layer() -> None:
    once, _ = encode(SAMPLE, chunk_size=CHUNK // 2)
    twice, _ = encode(gzip.decompress(once), chunk_size=CHUNK // 2)
    assert once == twice


def test_prioritized_files_come_first_with_parents_and_link_targets() -> None:
    tar = make_tar(
        [
            ("a/", {"type": tarfile.DIRTYPE}, None),
            ("a/one", {}, b"1"),
            ("b/", {"type": tarfile.DIRTYPE}, None),
            ("b/target", {}, b"t"),
            ("c/", {"type": tarfile.DIRTYPE}, None),
            ("c/link", {"type": tarfile.LNKTYPE, "linkname": "b/target"}, None),
            ("a/one", {}, b"1 again"),  # the last copy wins, at its own place
        ]
    )
    blob, _ = encode(tar, prioritized=("/c/link", "missing/file"))
    _, toc = toc_of(blob)
    names = [e["name"] for e in toc["entries"]]
    assert names == ["c/", "b/", "b/target", "c/link", ".prefetch.landmark", "a/", "a/one"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as t:
        assert t.extractfile("a/one").read() == b"1 again"  # type: ignore[union-attr]


def test_a_name_twice_is_listed_once_in_the_toc() -> None:
    tar = make_tar([("f", {}, b"old"), ("g", {}, b"g"), ("f", {}, b"new")])
    blob, _ = encode(tar)
    _, toc = toc_of(blob)
    files = [e for e in toc["entries"] if e["name"] == "f"]
    assert len(files) == 1 and files[0]["digest"] == sha(b"new")


@pytest.mark.parametrize(
    ("tar", "error"),
    [
        (SAMPLE[:2000], MalformedDocument),  # cut inside an entry
        (b"\x01" * 512, MalformedDocument),  # a header with a bad checksum
        (
            make_tar([("f", {"type": tarfile.XGLTYPE, "pax_headers": {"comment": "x"}}, None)]),
            Unsupported,
        ),
    ],
    ids=["truncated", "bad-checksum", "pax-global-header"],
)
def test_a_tar_we_cannot_convert_is_a_clear_error(tar: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(tar)


def test_go_json_matches_go_marshal_indent_rules() -> None:
    assert go_json({"a": [], "b": {}, "c": "\u2028\x01\x08", "d": b"\xff"}) == (
        '{\n\t"a": [],\n\t"b": {},\n\t"c": "\\u2028\\u0001\\u0008",\n\t"d": "/w=="\n}'
    )
    # a byte that is not UTF-8 (read with surrogateescape) becomes U+FFFD, as in Go
    assert go_json(b"\xe9".decode("utf-8", "surrogateescape")) == '"\ufffd"'


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
    chunk=st.integers(1, 1500),
    fmt=st.sampled_from(["estargz", "zstdchunked"]),
)
def test_every_chunk_reads_back_whatever_the_sizes(sizes: list[int], chunk: int, fmt: str) -> None:
    rng = random.Random(sum(sizes) + chunk)
    files = [(f"f{i}", {}, rng.randbytes(n)) for i, n in enumerate(sizes)]
    blob, _ = encode(make_tar(files), format=fmt, chunk_size=chunk, gzip_level=1)
    zstd = fmt == "zstdchunked"
    if zstd:
        off, clen = struct.unpack("<QQ", blob[-40:-24])
        entries = json.loads(zstandard.ZstdDecompressor().decompress(blob[off : off + clen]))
    else:
        entries = toc_of(blob)[1]
    data = {name: payload for name, _, payload in files}
    data[".no.prefetch.landmark"] = b"\x0f"
    got: dict[str, bytes] = {}
    for e in entries["entries"]:
        if "offset" not in e:
            continue
        whole = data[e["name"]]
        start = e.get("chunkOffset", 0)
        n = e.get("chunkSize") or len(whole) - start
        assert n <= chunk
        piece = member_at(blob, e["offset"], n, zstd=zstd)
        assert sha(piece) == e["chunkDigest"]
        got[e["name"]] = got.get(e["name"], b"") + piece
    landmark = {} if zstd else {".no.prefetch.landmark": b"\x0f"}
    assert got == {k: v for k, v in data.items() if v and (k in landmark or "." not in k)}
