"""The oci-archive transport: ``oci-archive:FILE[:TAG]``, an OCI image layout in a tar.

Reading never extracts: the tar's headers are read once into a table of members, and a
blob is served by positional reads (``pread``) of its byte range in FILE, so streams are
independent of each other and of the source object. Only an uncompressed tar can be read
that way, which is what skopeo and containerd write.

Member names are checked before anything is used: an absolute name or one with a ``..``
component makes the whole archive MalformedDocument (no tool writes one, so it is an
attack or damage), as does any link (a layout has no reason to hold one) or a duplicate
name. Only ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>`` are used; other
members (a Docker ``manifest.json``, say) are ignored, as the layout spec asks.

Writing goes through a temporary layout directory next to FILE; on success it is packed
into a temporary tar that replaces FILE by a rename, so FILE is either the old archive or
the new one, never half of one. The tar is reproducible: sorted names, mtime 0, owner 0.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import MalformedDocument, NotFound, ResourceLimit
from imgpipe.formats.layout import INDEX_FILE, LAYOUT_FILE
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index

from .ocilayout import (
    COPY_CHUNK_SIZE,
    TEMP_PREFIX,
    OCILayoutSink,
    blob_digest_of,
    check_layout_file,
    load_index,
    select_root,
)

__all__ = ["MAX_ARCHIVE_MEMBERS", "OCIArchiveSink", "OCIArchiveSource"]

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


class OCIArchiveSource:
    """Read one image out of an oci-archive (a tar of an OCI image layout).

    Opening reads the tar headers, ``oci-layout`` and ``index.json``: NotFound if FILE is
    missing; MalformedDocument if it is not a tar, holds a hostile or duplicate member or a
    link, or lacks the layout files; Unsupported for an unknown layout version. Streams
    from ``open_blob`` stay valid after ``close``.
    """

    def __init__(self, path: str, *, tag: str = "") -> None:
        self.path = path
        self.tag = tag
        self._fd = open_archive(path)
        try:
            table = scan_archive_fd(self._fd, where=path)
            if table.links:
                name = sorted(table.links)[0]
                raise MalformedDocument(f"{path}: member {name!r} is a link; refused")
            for required in (LAYOUT_FILE, INDEX_FILE):
                if required not in table.files:
                    raise MalformedDocument(f"{path}: no {required} member: not an OCI archive")
            check_layout_file(read_member_capped(self._fd, table.files[LAYOUT_FILE],
                                                 where=path), path)  # fmt: skip
            self.index: Index = load_index(
                read_member_capped(self._fd, table.files[INDEX_FILE], where=path), path
            )
            self._blobs: dict[Digest, TarMember] = {}
            for name, member in table.files.items():
                dg = blob_digest_of(name)
                if dg is not None:
                    self._blobs[dg] = member
        except BaseException:
            os.close(self._fd)
            raise

    def resolve(self) -> Descriptor:
        """As for an OCI layout: the entry tagged TAG, or the only entry.

        NotFound (naming the tags present) or InvalidArgument (several, no tag).
        """
        return select_root(self.index, self.tag, f"oci-archive:{self.path}")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the member ``blobs/<alg>/<hex>``, unverified; NotFound if absent."""
        if self._fd < 0:
            raise ValueError(f"oci-archive:{self.path}: source is closed")
        member = self._blobs.get(desc.digest)
        if member is None:
            raise NotFound(f"oci-archive:{self.path}: no blob {desc.digest}")
        return open_member(self._fd, member, where=self.path)

    def close(self) -> None:
        """Close FILE. Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> OCIArchiveSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class OCIArchiveSink:
    """Write one image as an oci-archive, replacing FILE on success.

    Blobs go into a temporary OCI layout in FILE's directory (so the final rename stays
    on one filesystem); normal exit from the ``with`` block packs it into a temporary tar
    and renames that over FILE. An existing FILE is replaced, not added to, as skopeo
    does. On exit with an exception FILE is untouched and the temporary files are
    removed. NotFound if FILE's directory does not exist.
    """

    def __init__(self, path: str, *, tag: str = "", image_name: str = "") -> None:
        self.path = path
        self.tag = tag
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise NotFound(f"{path}: directory {parent} does not exist")
        if os.path.isdir(path):
            raise MalformedDocument(f"{path}: is a directory; an oci-archive is a file")
        base = os.path.basename(path)
        self._tmpdir = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{base}.", dir=parent)
        try:
            self._layout = OCILayoutSink(self._tmpdir, tag=tag, image_name=image_name)
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        self._closed = False

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether this sink has been given the blob already (FILE is not looked at)."""
        return self._layout.has_blob(desc)

    def write_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        """Store the blob, verified (DigestMismatch / SizeMismatch); see OCILayoutSink."""
        self._layout.write_blob(desc, stream)

    def write_root(self, desc: Descriptor) -> None:
        """Remember ``desc`` as the archive's image; the archive is written on exit."""
        self._layout.write_root(desc)

    def commit(self) -> None:
        """Write FILE now from what was given (``__exit__`` calls this)."""
        self._layout.commit()
        parent = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{os.path.basename(self.path)}.", suffix=".tar", dir=parent
        )
        try:
            with os.fdopen(fd, "wb") as out:
                write_layout_tar(self._tmpdir, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self) -> None:
        """Drop the temporary layout without writing FILE. Idempotent."""
        if not self._closed:
            self._closed = True
            self._layout.close()
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> OCIArchiveSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.close()


def write_layout_tar(layout_dir: str, out: BinaryIO) -> None:
    """Pack the OCI layout at ``layout_dir`` into ``out`` as a reproducible tar.

    Entries are sorted by name with fixed metadata (mtime 0, uid/gid 0, no owner names,
    0644 files, 0755 directories), so the same layout always gives the same bytes.
    Temporary files of a sink are left out. PAX format, because a sha512 blob name is
    longer than a ustar name field.
    """
    entries: list[tuple[str, bool]] = []
    for dirpath, dirnames, filenames in os.walk(layout_dir):
        rel = os.path.relpath(dirpath, layout_dir)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
        entries.extend((prefix + d, True) for d in dirnames)
        entries.extend((prefix + f, False) for f in filenames if not f.startswith(TEMP_PREFIX))
    entries.sort()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, is_dir in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if is_dir:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
                continue
            full = os.path.join(layout_dir, name)
            with open(full, "rb") as f:
                info.size = os.fstat(f.fileno()).st_size
                info.mode = 0o644
                tf.addfile(info, f)
