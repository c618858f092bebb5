"""PassThrough, the base of every stream that hands bytes on unchanged: its hooks see
each chunk once and the end once, and closing it closes what it reads."""

from __future__ import annotations

import io
from typing import BinaryIO

import pytest

from imgpipe.processors.streams import PassThrough


class Recorder(PassThrough):
    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(raw)
        self.chunks: list[bytes] = []
        self.eofs = 0

    def _seen(self, chunk: bytes | memoryview) -> None:
        self.chunks.append(bytes(chunk))

    def _eof(self) -> None:
        self.eofs += 1


class BareReader:
    """Only read and close: no readinto to fill a caller's buffer with."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.closed = False

    def read(self, size: int = -1, /) -> bytes:
        return self._inner.read(size)

    def close(self) -> None:
        self.closed = True


DATA = bytes(range(256)) * 40


@pytest.mark.parametrize("bare", [False, True])
def test_readinto_hands_on_every_chunk_and_the_end_once(bare: bool) -> None:
    raw = BareReader(DATA) if bare else io.BytesIO(DATA)
    stream = Recorder(raw)  # type: ignore[arg-type]
    buffer = bytearray(1000)
    out = bytearray()
    while n := stream.readinto(buffer):
        out += buffer[:n]
    assert stream.readinto(buffer) == 0
    assert bytes(out) == DATA
    assert b"".join(stream.chunks) == DATA
    assert all(stream.chunks)
    assert stream.eofs == 1


def test_read_passes_raws_bytes_and_read_all_ends() -> None:
    stream = Recorder(io.BytesIO(DATA))
    head = stream.read(10)
    assert head == DATA[:10]
    assert stream.eofs == 0
    assert stream.read() == DATA[10:]
    assert stream.eofs == 1
    assert stream.read(5) == b""
    assert stream.read() == b""
    assert stream.eofs == 1
    assert b"".join(stream.chunks) == DATA


def test_empty_requests_are_not_the_end() -> None:
    stream = Recorder(io.BytesIO(DATA))
    assert stream.read(0) == b""
    assert stream.readinto(bytearray()) == 0
    assert stream.eofs == 0
    assert stream.chunks == []


def test_buffered_reads_over_it() -> None:
    stream = Recorder(io.BytesIO(DATA))
    with io.BufferedReader(stream, 4096) as buffered:
        assert buffered.read() == DATA
    assert stream.eofs == 1
    assert stream.closed


@pytest.mark.parametrize("bare", [False, True])
def test_close_closes_raw_once(bare: bool) -> None:
    raw = BareReader(DATA) if bare else io.BytesIO(DATA)
    stream = PassThrough(raw)  # type: ignore[arg-type]
    assert stream.readable()
    stream.close()
    assert raw.closed
    assert stream.closed
    stream.close()
    with pytest.raises(ValueError):
        stream.read(1)


def test_a_hook_that_raises_surfaces_from_the_read() -> None:
    class Refuses(PassThrough):
        def _eof(self) -> None:
            raise RuntimeError("digest mismatch")

    stream = Refuses(io.BytesIO(b"abc"))
    assert stream.read(3) == b"abc"
    with pytest.raises(RuntimeError, match="digest mismatch"):
        stream.read(3)
