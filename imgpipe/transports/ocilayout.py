"""The OCI image layout transport: ``oci:DIR[:TAG]``, read and written in place.

A layout is a directory holding ``oci-layout`` (``{"imageLayoutVersion": "1.0.0"}``),
``index.json`` (an image index, the entry point) and ``blobs/<alg>/<hex>``. A tag is the
``org.opencontainers.image.ref.name`` annotation of an ``index.json`` entry, as skopeo
and containerd use it.

Paths inside the layout are opened component by component from a directory file
descriptor with ``O_NOFOLLOW``: a symlink anywhere below DIR (``blobs``, ``blobs/sha256``
or a blob) is refused, so a layout cannot make us read or write outside itself. DIR
itself may be a symlink: the caller named it.

The source and sink share the small helpers at the bottom of this module with the
oci-archive transport, which reads the same files out of a tar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO, Final

from imgpipe.content.verify import VerifyingReader
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    ImgpipeError,
    InvalidArgument,
    MalformedDocument,
    NotFound,
    ResourceLimit,
)
from imgpipe.formats.layout import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    INDEX_FILE,
    LAYOUT_FILE,
    blob_path,
    find_refs,
    layout_file_bytes,
    parse_layout_file,
)
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index, parse_index
from imgpipe.formats.mediatype import OCI_INDEX

__all__ = ["COPY_CHUNK_SIZE", "OCILayoutSink", "OCILayoutSource"]

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


class OCILayoutSource:
    """Read one image out of an OCI image layout directory.

    Opening checks ``oci-layout`` and parses ``index.json``, so a damaged layout fails at
    once: NotFound if DIR is missing, MalformedDocument if it is not a layout or its
    ``index.json`` is not an index, Unsupported for an unknown layout version,
    ResourceLimit if ``index.json`` is over ``MAX_DOCUMENT_SIZE``. Close it (or use it as
    a context manager) to release the directory descriptor; streams returned by
    ``open_blob`` stay valid after that.
    """

    def __init__(self, path: str, *, tag: str = "") -> None:
        self.path = path
        self.tag = tag
        self._dirfd = open_layout_dir(path)
        try:
            check_layout_file(read_layout_document(self._dirfd, LAYOUT_FILE, path), path)
            self.index = load_index(read_layout_document(self._dirfd, INDEX_FILE, path), path)
        except BaseException:
            os.close(self._dirfd)
            raise

    def resolve(self) -> Descriptor:
        """The ``index.json`` entry named by the tag, or the only entry if no tag was given.

        NotFound (naming the tags present) if no entry has the tag; InvalidArgument
        (listing the entries) when no tag was given and the index holds several images.
        """
        return select_root(self.index, self.tag, f"oci:{self.path}")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of ``blobs/<alg>/<hex>``, unverified; the caller closes it.

        NotFound if the blob is missing; MalformedDocument if the path holds a symlink
        or anything but a regular file.
        """
        self._check_open()
        fd = open_beneath(self._dirfd, blob_path(desc.digest), where=self.path)
        return os.fdopen(fd, "rb")

    def close(self) -> None:
        """Release the directory descriptor. Idempotent."""
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1

    def _check_open(self) -> None:
        if self._dirfd < 0:
            raise ValueError(f"oci:{self.path}: source is closed")

    def __enter__(self) -> OCILayoutSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class OCILayoutSink:
    """Write an image into an OCI image layout directory, creating it if needed.

    An existing layout is added to: its other images stay. On normal exit from the
    ``with`` block the root given to ``write_root`` gets an ``index.json`` entry
    annotated ``org.opencontainers.image.ref.name = tag`` (replacing any entry with the
    same tag, as skopeo does; without a tag, an untagged entry of the same digest) and,
    if ``image_name`` is given, ``io.containerd.image.name = image_name``. ``index.json``
    is rewritten atomically under an exclusive ``flock`` of DIR, re-read at that moment,
    so two writers adding different tags both keep theirs.

    On exit with an exception ``index.json`` is left as it was. Blobs already written
    stay: they are complete and verified, merely unreferenced, which the layout spec
    allows. A DIR this sink created itself is removed again.

    Opening raises MalformedDocument if DIR exists, is not empty and is not a layout,
    Unsupported for an unknown layout version.
    """

    def __init__(self, path: str, *, tag: str = "", image_name: str = "") -> None:
        self.path = path
        self.tag = tag
        self.image_name = image_name
        self._root: Descriptor | None = None
        self._created = False
        self._dirfd = self._open_or_create()

    def _open_or_create(self) -> int:
        try:
            os.mkdir(self.path, 0o755)
            self._created = True
        except FileExistsError:
            pass
        except FileNotFoundError:
            # As skopeo does, create missing parents; only DIR itself is ours to remove.
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            os.mkdir(self.path, 0o755)
            self._created = True
        dirfd = open_layout_dir(self.path)
        try:
            with locked(dirfd):
                self._init_layout(dirfd)
        except BaseException:
            os.close(dirfd)
            if self._created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        return dirfd

    def _init_layout(self, dirfd: int) -> None:
        try:
            raw = read_capped(dirfd, LAYOUT_FILE, self.path)
        except NotFound:
            if os.listdir(dirfd):
                raise MalformedDocument(
                    f"{self.path}: exists, is not empty and has no {LAYOUT_FILE} file: "
                    "not an OCI image layout; refusing to write into it"
                ) from None
            atomic_write(dirfd, LAYOUT_FILE, layout_file_bytes())
        else:
            check_layout_file(raw, self.path)
        try:
            load_index(read_capped(dirfd, INDEX_FILE, self.path), self.path)
        except NotFound:
            # An index.json from the start keeps DIR a valid (empty) layout while blobs
            # are being written, whatever happens next.
            atomic_write(dirfd, INDEX_FILE, Index.build([], media_type=OCI_INDEX).raw)
        fsync_dir(dirfd)

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether ``blobs/<alg>/<hex>`` exists as a regular file of ``desc.size`` bytes."""
        self._check_open()
        try:
            fd = open_beneath(self._dirfd, blob_path(desc.digest), where=self.path)
        except (NotFound, MalformedDocument):
            return False
        try:
            return os.fstat(fd).st_size == desc.size
        finally:
            os.close(fd)

    def write_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        """Copy ``stream`` to ``blobs/<alg>/<hex>`` through a verifying reader.

        The bytes go to a temporary file in the blob's directory, are fsynced and renamed
        into place only once size and digest checked out; DigestMismatch / SizeMismatch
        otherwise, and the temporary file is removed. A blob already present (same size)
        is success and ``stream`` is not read. Idempotent.
        """
        self._check_open()
        if self.has_blob(desc):
            return
        rel = blob_path(desc.digest)
        parent, name = rel.rsplit("/", 1)
        pfd = makedirs_beneath(self._dirfd, parent, where=self.path)
        try:
            tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644, dir_fd=pfd,
            )  # fmt: skip
            try:
                with os.fdopen(fd, "wb") as out:
                    reader = VerifyingReader(stream, digest=desc.digest, size=desc.size)
                    shutil.copyfileobj(reader, out, COPY_CHUNK_SIZE)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=pfd)
                raise
            fsync_dir(pfd)
        finally:
            os.close(pfd)

    def write_root(self, desc: Descriptor) -> None:
        """Remember ``desc`` as the image to record; ``index.json`` changes on commit.

        A second call replaces the first.
        """
        self._check_open()
        self._root = desc

    def commit(self) -> None:
        """Add the root's entry to ``index.json`` now (``__exit__`` calls this)."""
        self._check_open()
        if self._root is None:
            return
        with locked(self._dirfd):
            index = load_index(read_capped(self._dirfd, INDEX_FILE, self.path), self.path)
            entries = merge_entry(
                index.manifests, self._root, tag=self.tag, image_name=self.image_name
            )
            new = Index.build(entries, media_type=OCI_INDEX, annotations=index.annotations)
            atomic_write(self._dirfd, INDEX_FILE, new.raw)
            fsync_dir(self._dirfd)

    def close(self) -> None:
        """Release the directory descriptor without committing. Idempotent."""
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1

    def _check_open(self) -> None:
        if self._dirfd < 0:
            raise ValueError(f"oci:{self.path}: sink is closed")

    def __enter__(self) -> OCILayoutSink:
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
            if exc_type is not None and self._created:
                shutil.rmtree(self.path, ignore_errors=True)


# --- helpers shared with the oci-archive transport -------------------------------------


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


def with_context(err: ImgpipeError, where: str) -> ImgpipeError:
    """The same kind of error with ``where`` in front of its message."""
    return type(err)(f"{where}: {err}")


def check_layout_file(raw: bytes, where: str) -> None:
    """Validate an ``oci-layout`` file; MalformedDocument or Unsupported, with context."""
    try:
        parse_layout_file(raw)
    except ImgpipeError as e:
        raise with_context(e, f"{where}/{LAYOUT_FILE}") from None


def load_index(raw: bytes, where: str) -> Index:
    """Parse ``index.json``; MalformedDocument (or Unsupported, ResourceLimit), with context."""
    try:
        return parse_index(raw, OCI_INDEX)
    except ImgpipeError as e:
        raise with_context(e, f"{where}/{INDEX_FILE}") from None


def select_root(index: Index, tag: str, where: str) -> Descriptor:
    """Pick the image a layout reference names, as ``resolve`` documents it."""
    if tag:
        found = find_refs(index, tag)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            digests = ", ".join(str(d.digest) for d in found)
            raise MalformedDocument(
                f"{where}: several index.json entries are tagged {tag!r}: {digests}"
            )
        present = sorted(ref_names(index))
        raise NotFound(
            f"{where}: no image tagged {tag!r}; tags present: "
            + (", ".join(present) if present else "none")
        )
    if len(index.manifests) == 1:
        return index.manifests[0]
    if not index.manifests:
        raise NotFound(f"{where}: the layout holds no image")
    listed = ", ".join(
        d.annotations.get(ANNOTATION_REF_NAME) or str(d.digest) for d in index.manifests
    )
    raise InvalidArgument(f"{where}: the layout holds several images, name one by tag: {listed}")


def ref_names(index: Index) -> Iterator[str]:
    """The ``ref.name`` annotations of an index's entries, in order."""
    for d in index.manifests:
        name = d.annotations.get(ANNOTATION_REF_NAME)
        if name:
            yield name


def merge_entry(
    entries: tuple[Descriptor, ...] | list[Descriptor],
    root: Descriptor,
    *,
    tag: str,
    image_name: str,
) -> list[Descriptor]:
    """``entries`` with ``root`` added, replacing the entry it supersedes in place.

    With a tag, every entry carrying that ``ref.name`` is superseded (a tag names one
    image). Without one, an untagged entry of the same digest is, so that writing the
    same untagged image twice does not list it twice.
    """
    annotations = {
        k: v
        for k, v in root.annotations.items()
        # Names the root carried from wherever it was read are not names here.
        if k not in (ANNOTATION_REF_NAME, ANNOTATION_IMAGE_NAME)
    }
    if tag:
        annotations[ANNOTATION_REF_NAME] = tag
    if image_name:
        annotations[ANNOTATION_IMAGE_NAME] = image_name
    new = dataclasses.replace(root, annotations=annotations)

    def superseded(d: Descriptor) -> bool:
        name = d.annotations.get(ANNOTATION_REF_NAME, "")
        if tag:
            return name == tag
        return not name and d.digest == root.digest

    out: list[Descriptor] = []
    placed = False
    for d in entries:
        if superseded(d):
            if not placed:
                out.append(new)
                placed = True
            continue
        out.append(d)
    if not placed:
        out.append(new)
    return out


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


def open_beneath(dirfd: int, rel: str, *, where: str) -> int:
    """Open the regular file ``rel`` below ``dirfd`` without following any symlink.

    NotFound if a component is missing; MalformedDocument if one is a symlink, or the
    file is not a regular file.
    """
    parts = rel.split("/")
    fd = dirfd
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nfd = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(f"{where}: {rel}: no such file") from None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(
                        fd, part, where=where, rel="/".join(parts[: i + 1]),
                        want="file" if last else "directory",
                    ) from None  # fmt: skip
                raise
            if fd != dirfd:
                os.close(fd)
            fd = nfd
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MalformedDocument(f"{where}: {rel}: not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        if fd != dirfd:
            os.close(fd)
        raise
    return fd


def makedirs_beneath(dirfd: int, rel: str, *, where: str) -> int:
    """Open (creating as needed) the directory ``rel`` below ``dirfd``, never via a symlink."""
    fd = dirfd
    done: list[str] = []
    try:
        for part in rel.split("/"):
            done.append(part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(
                        fd, part, where=where, rel="/".join(done), want="directory"
                    ) from None
                raise
            if fd != dirfd:
                os.close(fd)
            fd = nfd
    except BaseException:
        if fd != dirfd:
            os.close(fd)
        raise
    return fd


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


def atomic_write(dirfd: int, name: str, data: bytes) -> None:
    """Replace ``name`` below ``dirfd`` with ``data``: temp file, fsync, rename."""
    tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
        dir_fd=dirfd,
    )  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dirfd)
        raise


def fsync_dir(dirfd: int) -> None:
    """Make renames in the directory durable (the rename is atomic; this makes it stay)."""
    os.fsync(dirfd)


def blob_digest_of(rel: str) -> Digest | None:
    """The digest a ``blobs/<alg>/<hex>`` path names, or None if it names none."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return None
    try:
        return Digest(parts[1], parts[2])
    except InvalidArgument:
        return None
