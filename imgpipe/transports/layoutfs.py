"""Files inside a layout directory, reached without ever following a symlink.

Paths inside the layout are opened component by component from a directory file
descriptor with ``O_NOFOLLOW``: a symlink anywhere below DIR (``blobs``, ``blobs/sha256``
or a blob) is refused, so a layout cannot make us read or write outside itself. DIR
itself may be a symlink: the caller named it. Files are replaced atomically (temporary
file, fsync, rename) and the directory is fsynced after, so a crash leaves the old file
or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO, Final

from imgpipe.formats.errors import MalformedDocument, NotFound, ResourceLimit
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE

__all__ = [
    "COPY_CHUNK_SIZE",
    "TEMP_PREFIX",
    "atomic_write",
    "fsync_dir",
    "locked",
    "makedirs_beneath",
    "open_beneath",
    "open_layout_dir",
    "read_capped",
    "read_layout_document",
]

#: Bytes moved per read while copying a blob: large enough that the per-call cost of
#: Python is lost in the noise, small enough to stay out of the way of the page cache.
COPY_CHUNK_SIZE: Final = 1 << 20

#: Prefix of the temporary files a sink writes next to their final name; a crash can
#: leave one behind, and nothing ever reads a name with this prefix as a blob.
TEMP_PREFIX: Final = ".imgpipe-tmp-"

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK so that opening a FIFO planted as a blob returns at once (and is then
# refused as not a regular file) instead of waiting forever for a writer.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@contextlib.contextmanager
def locked(dirfd: int) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the layout directory.

    Serialises the read-modify-write of ``index.json`` between imgpipe processes; other
    tools do not lock, which is why the rewrite is also atomic.
    """
    fcntl.flock(dirfd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(dirfd, fcntl.LOCK_UN)


def open_layout_dir(path: str) -> int:
    """Open DIR (following a symlink: the caller named it); NotFound if missing."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such directory") from None
    except NotADirectoryError:
        raise MalformedDocument(
            f"{path}: not a directory (an OCI layout is a directory; use oci-archive: "
            "for a tar file)"
        ) from None


def _refuse(dirfd: int, name: str, *, where: str, rel: str, want: str) -> MalformedDocument:
    """The error for a path component that could not be opened as ``want``."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return MalformedDocument(f"{where}: {rel}: cannot be opened as a {want}")
    if stat.S_ISLNK(st.st_mode):
        return MalformedDocument(f"{where}: {rel}: is a symlink; refused in an OCI layout")
    return MalformedDocument(f"{where}: {rel}: not a {want}")


def _walk_beneath(dirfd: int, rel: str, *, where: str, create: bool) -> int:
    """Open each component of ``rel`` below ``dirfd`` in turn, never via a symlink.

    Every component but the last is a directory (made first if ``create``); the last is
    a regular file, or a directory too when ``create``. Returns the last one's fd.
    NotFound if a component is missing; MalformedDocument if one is a symlink or of the
    wrong kind.
    """
    parts = rel.split("/")
    fd = dirfd
    try:
        for i, part in enumerate(parts):
            file = i == len(parts) - 1 and not create
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nfd = os.open(part, _FILE_FLAGS if file else _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(f"{where}: {rel}: no such file") from None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(
                        fd, part, where=where, rel="/".join(parts[: i + 1]),
                        want="file" if file else "directory",
                    ) from None  # fmt: skip
                raise
            if fd != dirfd:
                os.close(fd)
            fd = nfd
        if not create:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise MalformedDocument(f"{where}: {rel}: not a regular file")
            os.set_blocking(fd, True)
    except BaseException:
        if fd != dirfd:
            os.close(fd)
        raise
    return fd


def open_beneath(dirfd: int, rel: str, *, where: str) -> int:
    """Open the regular file ``rel`` below ``dirfd`` without following any symlink.

    NotFound if a component is missing; MalformedDocument if one is a symlink, or the
    file is not a regular file.
    """
    return _walk_beneath(dirfd, rel, where=where, create=False)


def makedirs_beneath(dirfd: int, rel: str, *, where: str) -> int:
    """Open (creating as needed) the directory ``rel`` below ``dirfd``, never via a symlink."""
    return _walk_beneath(dirfd, rel, where=where, create=True)


def read_capped(dirfd: int, name: str, where: str) -> bytes:
    """A small document of the layout (``oci-layout``, ``index.json``), at most 4 MiB.

    NotFound if missing, ResourceLimit if larger than ``MAX_DOCUMENT_SIZE``.
    """
    fd = open_beneath(dirfd, name, where=where)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_DOCUMENT_SIZE + 1)
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise ResourceLimit(f"{where}/{name}: larger than {MAX_DOCUMENT_SIZE} bytes")
    return raw


def read_layout_document(dirfd: int, name: str, where: str) -> bytes:
    """``read_capped`` for a file the layout must have: missing is MalformedDocument."""
    try:
        return read_capped(dirfd, name, where)
    except NotFound:
        raise MalformedDocument(f"{where}: no {name} file: not an OCI image layout") from None


def atomic_write(dirfd: int, name: str, fill: bytes | Callable[[BinaryIO], None]) -> None:
    """Replace ``name`` below ``dirfd``: temp file (0644), fsync, rename, fsync the dir.

    ``fill`` is the content, or a function that writes it to the file it is given; if
    it raises, the temporary file is removed and ``name`` is untouched.
    """
    tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
        dir_fd=dirfd,
    )  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(fill, bytes):
                f.write(fill)
            else:
                fill(f)
            f.flush()
            # The mode is the layout's, not the umask's: other tools read these files.
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dirfd)
        raise
    fsync_dir(dirfd)


def fsync_dir(dirfd: int) -> None:
    """Make renames in the directory durable (the rename is atomic; this makes it stay)."""
    os.fsync(dirfd)
