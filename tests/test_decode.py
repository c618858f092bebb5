"""imgpipe.decode.ReadAhead: the one read-ahead thread unpack and convert share."""

from __future__ import annotations

import io
import threading

import pytest

from imgpipe.decode import ReadAhead
from imgpipe.errors import DigestMismatch


class Failing(io.RawIOBase):
    """Gives ``good`` bytes, then raises as a verifying stream does at a bad EOF."""

    def __init__(self, good: bytes) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.left:
            out, self.left = self.left[:4], self.left[4:]
            return out
        raise DigestMismatch("content hashes to something else")


def test_reads_everything_in_order() -> None:
    data = bytes(range(256)) * 5000
    with ReadAhead(io.BytesIO(data), depth=2, chunk=1000) as r:
        got = b"".join(iter(lambda: r.read(777), b""))
    assert got == data


def test_an_error_stays_raised() -> None:
    """A failed stream must never look like a clean EOF on a later read."""
    with ReadAhead(Failing(b"abcdefgh"), depth=2, chunk=4) as r:
        assert r.read() + r.read() == b"abcdefgh"
        with pytest.raises(DigestMismatch):
            r.read()
        with pytest.raises(DigestMismatch):
            r.read()


def test_close_stops_the_helper_and_closes_the_source() -> None:
    src = io.BytesIO(b"x" * (10 << 20))
    r = ReadAhead(src, depth=1, chunk=1 << 16, name="test-read-ahead")
    assert r.read(10) == b"x" * 10
    r.close()
    assert src.closed
    assert not [t for t in threading.enumerate() if t.name == "test-read-ahead"]
