"""gzip and zstd codecs, magic sniffing and decompression bounds.

Round trips run over Hypothesis-chosen data, input read sizes (a source that returns
short reads) and output read sizes; hostile inputs each end in one clear error class.
"""

from __future__ import annotations

import gzip as stdlib_gzip
import io
import os
import struct
import subprocess
import zlib

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument, MalformedDocument, ResourceLimit
from imgpipe.formats.mediatype import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    MediaType,
)
from imgpipe.processors import CorruptData, Limits, ProcessorParams
from imgpipe.processors.gzip import (
    DECODE_BACKENDS,
    GzipCompress,
    GzipDecoder,
    GzipEncoder,
    decode_backend,
)
from imgpipe.processors.limits import BoundedReader, CountingReader
from imgpipe.processors.sniff import Decompress, detect, peek
from imgpipe.processors.zstd import FrameWalker, ZstdCompress, ZstdDecoder, ZstdEncoder


class ShortReads(io.RawIOBase):
    """A source that returns at most ``step`` bytes per read, like a pipe or a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def drain(stream, size: int = 1 << 20) -> bytes:  # type: ignore[no-untyped-def]
    out = bytearray()
    while chunk := stream.read(size):
        out += chunk
    return bytes(out)


def desc_of(data: bytes, mt: str = OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(MediaType(mt), Digest.from_bytes(data), len(data))


payloads = st.one_of(
    st.binary(max_size=4096),
    # compressible runs, so members and blocks span chunk boundaries
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=64), st.integers(1, 5000)),
)
read_sizes = st.sampled_from([1, 7, 512, 4096, 65536, 1 << 20])

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- round trips


@SETTINGS
@given(data=payloads, in_step=read_sizes, out_size=read_sizes, level=st.integers(0, 9))
def test_gzip_round_trip(data: bytes, in_step: int, out_size: int, level: int) -> None:
    encoded = drain(GzipEncoder(ShortReads(data, in_step), level=level), out_size)  # type: ignore[arg-type]
    assert stdlib_gzip.decompress(encoded) == data  # a standard decoder agrees
    decoded = drain(GzipDecoder(ShortReads(encoded, in_step)), out_size)  # type: ignore[arg-type]
    assert decoded == data


@SETTINGS
@given(data=payloads, in_step=read_sizes, out_size=read_sizes, level=st.integers(1, 9))
def test_zstd_round_trip(data: bytes, in_step: int, out_size: int, level: int) -> None:
    encoded = drain(ZstdEncoder(ShortReads(data, in_step), level=level), out_size)  # type: ignore[arg-type]
    assert zstandard.ZstdDecompressor().decompressobj().decompress(encoded) == data
    decoded = drain(ZstdDecoder(ShortReads(encoded, in_step)), out_size)  # type: ignore[arg-type]
    assert decoded == data


@SETTINGS
@given(data=payloads, in_step=read_sizes)
def test_encoders_are_reproducible_whatever_the_read_sizes(data: bytes, in_step: int) -> None:
    for make in (lambda s: GzipEncoder(s, level=6), lambda s: ZstdEncoder(s, level=3)):
        one = drain(make(io.BytesIO(data)))
        other = drain(make(ShortReads(data, in_step)), 333)
        assert one == other


@pytest.mark.parametrize("backend", DECODE_BACKENDS)
def test_every_gzip_backend_decodes_the_same(backend: str) -> None:
    data = os.urandom(50_000) + b"a" * 3_000_000
    encoded = stdlib_gzip.compress(data, mtime=0)
    assert drain(GzipDecoder(io.BytesIO(encoded), backend=backend)) == data  # type: ignore[arg-type]


def test_gzip_header_is_pinned() -> None:
    encoded = drain(GzipEncoder(io.BytesIO(b"x" * 1000), level=6))  # type: ignore[arg-type]
    # magic, deflate, no flags, mtime 0, XFL 0, OS 255 (as Go's compress/gzip)
    assert encoded[:10] == bytes.fromhex("1f8b08000000000000ff")
    assert drain(GzipEncoder(io.BytesIO(b""), level=9))[8] == 2  # type: ignore[arg-type]
    assert drain(GzipEncoder(io.BytesIO(b""), level=1))[8] == 4  # type: ignore[arg-type]
    trailer = struct.unpack("<II", encoded[-8:])
    assert trailer == (zlib.crc32(b"x" * 1000), 1000)


def test_gzip_reads_what_gzip_and_pigz_write(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(100_000) * 20
    (tmp_path / "f").write_bytes(data)
    for tool in (["gzip", "-c", "-n"], ["pigz", "-c", "-p", "2"]):
        out = subprocess.run([*tool, tmp_path / "f"], capture_output=True, check=True).stdout
        assert drain(GzipDecoder(io.BytesIO(out))) == data  # type: ignore[arg-type]


def test_zstd_cli_reads_what_we_write_and_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(100_000) * 20
    ours = drain(ZstdEncoder(io.BytesIO(data), level=3))  # type: ignore[arg-type]
    out = subprocess.run(["zstd", "-dc"], input=ours, capture_output=True, check=True).stdout
    assert out == data
    theirs = subprocess.run(["zstd", "-3", "-c"], input=data, capture_output=True, check=True)
    assert drain(ZstdDecoder(io.BytesIO(theirs.stdout))) == data  # type: ignore[arg-type]


def test_zstd_threads_change_bytes_not_content() -> None:
    data = os.urandom(1 << 20) * 12
    single = drain(ZstdEncoder(io.BytesIO(data), level=3, threads=0))  # type: ignore[arg-type]
    assert single == drain(ZstdEncoder(io.BytesIO(data), level=3, threads=0))  # type: ignore[arg-type]
    multi = drain(ZstdEncoder(io.BytesIO(data), level=3, threads=2))  # type: ignore[arg-type]
    assert multi != single
    assert drain(ZstdDecoder(io.BytesIO(multi))) == data  # type: ignore[arg-type]


def test_zstd_workers_bytes_do_not_depend_on_their_count_or_the_pieces() -> None:
    # libzstd's streaming multi-threaded framing: the default (one worker per CPU) is
    # reproducible on any machine because 1, 2 or 4 workers write the same bytes
    words = b" ".join(b"w%d" % (i * 7919 % 5000) for i in range(700_000))  # ~4.5 MB of text
    data = words + os.urandom(300_000) + words[:2_000_000]
    outs = {
        (w, piece): drain(ZstdEncoder(ShortReads(data, piece), level=3, threads=w))  # type: ignore[arg-type]
        for w in (1, 2, 4)
        for piece in (1 << 20, 65_537)
    }
    assert len(set(outs.values())) == 1
    assert drain(ZstdEncoder(io.BytesIO(data), level=3)) == outs[(1, 1 << 20)]  # type: ignore[arg-type]
    assert drain(ZstdDecoder(io.BytesIO(outs[(2, 65_537)]))) == data  # type: ignore[arg-type]


def test_zstd_default_workers_are_bounded() -> None:
    from imgpipe.processors.zstd import MAX_AUTO_WORKERS, default_workers

    assert 1 <= default_workers() <= MAX_AUTO_WORKERS
    with pytest.raises(InvalidArgument):
        ZstdEncoder(io.BytesIO(b""), level=3, threads=-2)  # type: ignore[arg-type]


# ---------------------------------------------------------------- many members, many frames


def test_gzip_decodes_every_member() -> None:
    parts = [b"first " * 1000, b"", os.urandom(70_000), b"last"]
    stream = b"".join(stdlib_gzip.compress(p, mtime=0) for p in parts)
    dec = GzipDecoder(ShortReads(stream, 1000))  # type: ignore[arg-type]
    assert drain(dec, 4096) == b"".join(parts)
    assert dec.members == len(parts)


def test_zstd_decodes_every_frame_and_skips_skippable_frames() -> None:
    c = zstandard.ZstdCompressor(level=3, write_checksum=True)
    skippable = struct.pack("<II", 0x184D2A5E, 11) + b"toc-payload"
    frames = [b"a" * 200_000, os.urandom(10_000), b"", b"tail"]
    stream = skippable + b"".join(c.compress(f) + skippable for f in frames)
    dec = ZstdDecoder(ShortReads(stream, 777))  # type: ignore[arg-type]
    assert drain(dec, 1000) == b"".join(frames)
    assert dec.walker.frames == len(frames)
    assert dec.walker.skippable_frames == len(frames) + 1


@SETTINGS
@given(data=payloads, step=st.integers(1, 300))
def test_frame_walker_finds_the_end_in_any_piece_sizes(data: bytes, step: int) -> None:
    encoded = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(data)
    walker = FrameWalker()
    for i in range(0, len(encoded), step):
        walker.feed(encoded[i : i + step])
        if i + step < len(encoded):
            assert not walker.at_boundary() or walker.frames == 1
    assert walker.at_boundary() and walker.frames == 1


# ---------------------------------------------------------------- sniffing

SNIFF_TABLE = [
    (b"\x1f\x8b\x08\x00", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x50\x2a\x4d\x18", "zstd"),  # skippable frame, first of the range
    (b"\x5f\x2a\x4d\x18", "zstd"),  # skippable frame, last of the range
    (b"\x60\x2a\x4d\x18", ""),
    (b"\x1f\x8b\x07\x00", ""),  # gzip magic with another method
    (b"etc/", ""),  # a tar starts with a name
    (b"", ""),
    (b"\x1f", ""),
]


@pytest.mark.parametrize(("head", "kind"), SNIFF_TABLE)
def test_detect(head: bytes, kind: str) -> None:
    assert detect(head) == kind


def test_peek_gives_the_whole_stream_back() -> None:
    head, rest = peek(ShortReads(b"abcdefgh", 1))  # type: ignore[arg-type]
    assert head == b"abcd"
    assert drain(rest, 3) == b"abcdefgh"


TAR = b"hello/" + b"\0" * 10234  # not a real tar: only the bytes matter here
CASES = [
    # (declared media type, encoder of the actual bytes)
    (OCI_LAYER_GZIP, "gzip"),
    (OCI_LAYER_GZIP, "zstd"),  # claims gzip, is zstd
    (OCI_LAYER_GZIP, ""),  # claims gzip, is plain
    (OCI_LAYER_ZSTD, "gzip"),
    (OCI_LAYER, "gzip"),  # claims uncompressed, is gzip
    (OCI_LAYER, ""),
    (DOCKER_LAYER, "zstd"),
    (DOCKER_LAYER_GZIP, "gzip"),
]


@pytest.mark.parametrize(("mt", "actual"), CASES)
def test_decompress_follows_the_bytes(mt: str, actual: str) -> None:
    blob = {
        "gzip": lambda d: stdlib_gzip.compress(d, mtime=0),
        "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
        "": lambda d: d,
    }[actual](TAR)
    out = Decompress().open(io.BytesIO(blob), desc_of(blob, mt), ProcessorParams())  # type: ignore[arg-type]
    assert drain(out) == TAR


# ---------------------------------------------------------------- hostile input


def _gz(data: bytes) -> bytes:
    return stdlib_gzip.compress(data, mtime=0)


def _zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


BIG = os.urandom(200_000) + b"z" * 300_000
HOSTILE = [
    ("gzip truncated in the middle", GzipDecoder, _gz(BIG)[:5000]),
    ("gzip truncated in the trailer", GzipDecoder, _gz(BIG)[:-3]),
    ("gzip truncated header", GzipDecoder, _gz(BIG)[:6]),
    ("gzip empty", GzipDecoder, b""),
    ("gzip garbage", GzipDecoder, b"\x1f\x8b\x08\x00" + os.urandom(1000)),
    ("gzip garbage after a member", GzipDecoder, _gz(b"ok") + b"garbage!"),
    ("gzip zero padding after a member", GzipDecoder, _gz(b"ok") + b"\0" * 512),
    ("gzip bad crc", GzipDecoder, _gz(b"data")[:-8] + b"\0\0\0\0" + _gz(b"data")[-4:]),
    ("zstd truncated in the middle", ZstdDecoder, _zst(BIG)[:5000]),
    ("zstd truncated in the checksum", ZstdDecoder, _zst(BIG)[:-2]),
    ("zstd truncated header", ZstdDecoder, _zst(BIG)[:5]),
    ("zstd empty", ZstdDecoder, b""),
    ("zstd garbage", ZstdDecoder, b"\x28\xb5\x2f\xfd" + os.urandom(1000)),
    ("zstd garbage after a frame", ZstdDecoder, _zst(b"ok") + b"garbage!"),
    ("zstd bad checksum", ZstdDecoder, _zst(b"data" * 100)[:-4] + b"\0\0\0\0"),
    (
        "zstd truncated skippable frame",
        ZstdDecoder,
        _zst(b"ok") + struct.pack("<II", 0x184D2A50, 100) + b"short",
    ),
]


@pytest.mark.parametrize(("name", "decoder", "blob"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_is_corrupt_data(name: str, decoder, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CorruptData) as info:
        drain(decoder(io.BytesIO(blob)))
    assert isinstance(info.value, MalformedDocument)  # exit code 4, "malformed"
    assert "\n" not in str(info.value)


def test_zstd_frame_asking_for_a_huge_window_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters(window_log=30, enable_ldm=True)
    # streamed: the size is unknown, so the header keeps the 1 GiB window
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    blob = c.compress(os.urandom(1000) * 3) + c.flush()
    with pytest.raises(CorruptData):
        drain(ZstdDecoder(io.BytesIO(blob)))  # type: ignore[arg-type]


# ---------------------------------------------------------------- bombs


def _zero_stream(kind: str, size: int) -> bytes:
    zeros = b"\0" * (1 << 20)
    if kind == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(c.compress(zeros) for _ in range(size >> 20)) + c.flush()
    z = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(z.compress(zeros) for _ in range(size >> 20)) + z.flush()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_bomb_over_the_size_limit_is_a_resource_limit(kind: str) -> None:
    blob = _zero_stream(kind, 64 << 20)  # 64 MiB of zeros in a few KiB
    limits = Limits(max_decompressed_size=8 << 20)
    stream = Decompress().open(io.BytesIO(blob), desc_of(blob), ProcessorParams(limits=limits))  # type: ignore[arg-type]
    produced = 0
    with pytest.raises(ResourceLimit, match="decompressed size exceeds"):
        while chunk := stream.read(1 << 20):
            produced += len(chunk)
    assert produced <= 8 << 20  # stopped at the bound, not at the end of the bomb


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_bomb_over_the_ratio_is_a_resource_limit(kind: str) -> None:
    blob = _zero_stream(kind, 64 << 20)
    limits = Limits(max_ratio=100, ratio_floor=4 << 20)
    stream = Decompress().open(io.BytesIO(blob), desc_of(blob), ProcessorParams(limits=limits))  # type: ignore[arg-type]
    with pytest.raises(ResourceLimit, match="ratio exceeds 100:1"):
        drain(stream)


def test_ratio_is_not_checked_below_the_floor() -> None:
    blob = _zero_stream("zstd", 4 << 20)
    limits = Limits(max_ratio=2, ratio_floor=8 << 20)
    stream = Decompress().open(io.BytesIO(blob), desc_of(blob), ProcessorParams(limits=limits))  # type: ignore[arg-type]
    assert len(drain(stream)) == 4 << 20


def test_bounded_reader_counts_both_sides() -> None:
    counter = CountingReader(io.BytesIO(b"abc" * 10))
    bounded = BoundedReader(counter, counter, Limits(max_decompressed_size=20), what="t")
    assert bounded.read(10) == b"abcabcabca" and counter.count == 10
    with pytest.raises(ResourceLimit):
        bounded.read(20)


def test_processors_say_what_they_encode() -> None:
    assert GzipCompress().output_type(MediaType(DOCKER_LAYER)) == DOCKER_LAYER_GZIP
    assert ZstdCompress().output_type(MediaType(OCI_LAYER)) == OCI_LAYER_ZSTD
    assert not ZstdCompress().accepts(MediaType(OCI_LAYER_GZIP))
    assert decode_backend()[0] in DECODE_BACKENDS


@pytest.mark.parametrize("backend", DECODE_BACKENDS)
def test_every_gzip_backend_refuses_hostile_input(backend: str) -> None:
    good = _gz(BIG)
    assert drain(GzipDecoder(ShortReads(good, 999), backend=backend)) == BIG  # type: ignore[arg-type]
    for name, decoder, blob in HOSTILE:
        if decoder is GzipDecoder:
            with pytest.raises(CorruptData):
                drain(GzipDecoder(io.BytesIO(blob), backend=backend))  # type: ignore[arg-type]
            del name
