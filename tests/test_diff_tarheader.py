"""The applier's fast tar header parser gives exactly what tarfile's gives, errors
included, on well-formed headers of every format and on bytes flipped at random."""

from __future__ import annotations

import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgpipe.diff.tarstream import _BoundedTarInfo

_FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname",
           "uname", "gname", "devmajor", "devminor")  # fmt: skip


def _header(fmt: int, **kw: object) -> bytes:
    ti = tarfile.TarInfo(str(kw.pop("name", "a/b.txt")))
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti.tobuf(fmt, "utf-8", "surrogateescape")[:512]


def _parse(cls: type[tarfile.TarInfo], buf: bytes) -> tuple[object, ...] | type[BaseException]:
    try:
        ti = cls.frombuf(buf, "utf-8", "surrogateescape")
    except Exception as e:  # the class of error is what must agree
        return type(e)
    return tuple(getattr(ti, f) for f in _FIELDS)


HEADERS = [
    _header(tarfile.USTAR_FORMAT),
    _header(tarfile.USTAR_FORMAT, name="d/" * 60 + "file", mode=0o4755, uid=1000, gid=1000),
    _header(tarfile.USTAR_FORMAT, name="dir/", type=tarfile.DIRTYPE),
    _header(tarfile.GNU_FORMAT, uid=2**40, gid=7, mtime=-5),
    _header(tarfile.GNU_FORMAT, name="l", type=tarfile.SYMTYPE, linkname="../../etc/passwd"),
    _header(tarfile.USTAR_FORMAT, name="c", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
    _header(tarfile.USTAR_FORMAT, name="v7dir/", type=tarfile.AREGTYPE),
    _header(tarfile.USTAR_FORMAT, name="n\udcff", uname="\u00e9", gname="g"),
    _header(tarfile.PAX_FORMAT, name="x" * 200, size=12345),
    b"\0" * 512,
    b"\0" * 100,
    b"",
]


@pytest.mark.parametrize("buf", HEADERS, ids=range(len(HEADERS)))
def test_same_as_tarfile(buf: bytes) -> None:
    assert _parse(_BoundedTarInfo, buf) == _parse(tarfile.TarInfo, buf)


def test_checksum_refused_like_tarfile() -> None:
    buf = bytearray(HEADERS[0])
    buf[0] ^= 1
    assert _parse(_BoundedTarInfo, bytes(buf)) is tarfile.InvalidHeaderError
    assert _parse(tarfile.TarInfo, bytes(buf)) is tarfile.InvalidHeaderError


def _fix_checksum(buf: bytearray) -> None:
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(HEADERS[:9]),
    st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), min_size=1, max_size=6),
    st.booleans(),
)
def test_flipped_bytes_agree(base: bytes, flips: list[tuple[int, int]], fix: bool) -> None:
    buf = bytearray(base)
    for pos, value in flips:
        buf[pos] = value
    if fix:  # past the checksum: the number and string fields are what is tested
        _fix_checksum(buf)
    assert _parse(_BoundedTarInfo, bytes(buf)) == _parse(tarfile.TarInfo, bytes(buf))
