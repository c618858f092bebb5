"""Reading an uncompressed tar in place: a table of its members from one pass over the
headers, and each member's bytes by positional reads of the archive file, so streams are
independent of each other and of the source that made them. Nothing is extracted.

Member names are checked before anything is used: an absolute name or one with a ``..``
component makes the whole archive MalformedDocument (no tool writes one, so it is an
attack or damage), as does a duplicate name or a link leading outside the archive.
``MemberSource`` is the half the archive transports share: a source whose blobs are
members, by digest.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import MalformedDocument, NotFound, ResourceLimit
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE

from .base import FdHolder
from .layoutfs import COPY_CHUNK_SIZE

__all__ = [
    "MAX_ARCHIVE_MEMBERS",
    "MemberReader",
    "MemberSource",
    "TarMember",
    "TarTable",
    "normalise_member_name",
    "open_archive",
    "open_member",
    "read_member_capped",
    "scan_archive_fd",
    "scan_tar",
]

#: Most members an archive may have. tarfile keeps every header it has read in memory
#: (a few hundred bytes each), so an endless stream of tiny members must stop somewhere.
#: ``docker save`` writes about four members per layer and an OCI archive one per blob:
#: ten thousand is thousands of layers, far above any real image.
MAX_ARCHIVE_MEMBERS: Final = 10_000


@dataclass(frozen=True, slots=True)
class TarMember:
    """A regular file in a tar: where its bytes are in the archive file."""

    name: str
    offset: int
    size: int


@dataclass(slots=True)
class TarTable:
    """The members of a tar archive, by normalised name, read once from the headers.

    ``files`` are regular files; ``links`` maps a symlink or hardlink to the normalised
    name it points at (already checked to stay inside the archive).
    """

    files: dict[str, TarMember] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


def normalise_member_name(name: str, *, where: str) -> str:
    """``./a//b/`` -> ``a/b``; MalformedDocument for an absolute name or a ``..`` in it."""
    if name.startswith("/"):
        raise MalformedDocument(f"{where}: archive member {name!r} has an absolute name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MalformedDocument(f"{where}: archive member {name!r} points outside the archive")
    return "/".join(parts)


def scan_tar(f: BinaryIO, *, where: str) -> TarTable:
    """Read the headers of the uncompressed tar ``f`` (seekable) into a TarTable.

    MalformedDocument if ``f`` is not a tar, a name escapes, a regular file appears
    twice, a link leads outside the archive or a file is sparse; ResourceLimit past
    ``MAX_ARCHIVE_MEMBERS``.
    """
    table = TarTable()
    try:
        # errorlevel=2 turns tarfile's logged, skipped oddities into exceptions we map.
        with tarfile.open(fileobj=f, mode="r:", errorlevel=2) as tf:
            count = 0
            while (m := tf.next()) is not None:
                count += 1
                if count > MAX_ARCHIVE_MEMBERS:
                    raise ResourceLimit(f"{where}: more than {MAX_ARCHIVE_MEMBERS} members")
                name = normalise_member_name(m.name, where=where)
                if m.issym() or m.islnk():
                    table.links[name] = _link_target(m, name, where=where)
                elif m.isreg():
                    if m.sparse is not None:
                        raise MalformedDocument(f"{where}: member {name!r} is a sparse file")
                    if name in table.files or name in table.links:
                        raise MalformedDocument(f"{where}: member {name!r} appears twice")
                    table.files[name] = TarMember(name, m.offset_data, m.size)
                # Directories, devices and FIFOs carry no bytes we use.
    except (tarfile.TarError, EOFError) as e:
        raise MalformedDocument(f"{where}: not a readable tar archive: {e}") from None
    return table


def _link_target(m: tarfile.TarInfo, name: str, *, where: str) -> str:
    target = m.linkname
    if m.issym():
        # A symlink's target is relative to the directory holding it.
        if target.startswith("/"):
            raise MalformedDocument(f"{where}: symlink {name!r} points to an absolute path")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target == ".." or target.startswith("../"):
            raise MalformedDocument(f"{where}: symlink {name!r} points outside the archive")
    return normalise_member_name(target, where=where)


class MemberReader(io.RawIOBase):
    """The bytes of one tar member, read with ``pread`` from its own descriptor.

    Owns ``fd`` (a ``dup`` of the archive's), so it outlives the source that made it and
    never disturbs another reader's position.
    """

    def __init__(self, fd: int, member: TarMember, *, where: str) -> None:
        super().__init__()
        self._fd = fd
        self._member = member
        self._pos = 0
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buf), self._member.size - self._pos)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [memoryview(buf)[:want]], self._member.offset + self._pos)
        if n == 0:
            raise MalformedDocument(
                f"{self._where}: archive ends inside member {self._member.name!r}"
            )
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


def open_member(fd: int, member: TarMember, *, where: str) -> io.BufferedReader:
    """A buffered stream of ``member``'s bytes from the archive open as ``fd``."""
    raw = MemberReader(os.dup(fd), member, where=where)
    return io.BufferedReader(raw, buffer_size=COPY_CHUNK_SIZE)


def read_member_capped(fd: int, member: TarMember, *, where: str) -> bytes:
    """A small document member, at most ``MAX_DOCUMENT_SIZE``; ResourceLimit if larger."""
    if member.size > MAX_DOCUMENT_SIZE:
        raise ResourceLimit(f"{where}/{member.name}: larger than {MAX_DOCUMENT_SIZE} bytes")
    with open_member(fd, member, where=where) as f:
        return f.read()


def open_archive(path: str) -> int:
    """Open FILE for reading; NotFound if missing, MalformedDocument if not a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MalformedDocument(f"{path}: is a directory, not an archive") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MalformedDocument(f"{path}: not a regular file")
    os.set_blocking(fd, True)
    return fd


def scan_archive_fd(fd: int, *, where: str) -> TarTable:
    """``scan_tar`` over a descriptor, through a ``dup`` so ``fd`` stays open."""
    with os.fdopen(os.dup(fd), "rb") as f:
        return scan_tar(f, where=where)


class MemberSource(FdHolder):
    """A source whose blobs are members of the archive FILE, found by digest.

    Opening opens FILE and reads its member table (NotFound, MalformedDocument, as
    ``open_archive`` and ``scan_tar``); a subclass fills ``_blobs`` from it. Streams from
    ``open_blob`` stay valid after ``close``.
    """

    def __init__(self, kind: str, path: str) -> None:
        self.path = path
        self._kind = kind
        self._name = f"{kind}:{path}: source"
        self._blobs: dict[Digest, TarMember] = {}
        self._fd = open_archive(path)
        try:
            self._table = scan_archive_fd(self._fd, where=path)
        except BaseException:
            self.close()
            raise

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the member holding the blob, unverified; NotFound if absent."""
        fd = self._check_open()
        member = self._blobs.get(desc.digest)
        if member is None:
            raise NotFound(f"{self._kind}:{self.path}: no blob {desc.digest}")
        return open_member(fd, member, where=self.path)

    def _read_capped(self, member: TarMember) -> bytes:
        return read_member_capped(self._fd, member, where=self.path)
