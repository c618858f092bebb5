"""The OCI image layout transport: ``oci:DIR[:TAG]``, read and written in place.

A layout is a directory holding ``oci-layout`` (``{"imageLayoutVersion": "1.0.0"}``),
``index.json`` (an image index, the entry point) and ``blobs/<alg>/<hex>``. Every file is
reached through ``layoutfs`` (no symlink below DIR is ever followed); what ``index.json``
says is read and changed through ``layoutindex``, which the oci-archive transport shares.
"""

from __future__ import annotations

import os
import shutil
from typing import BinaryIO

from imgpipe.content.verify import VerifyingReader
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import MalformedDocument, NotFound
from imgpipe.formats.layout import INDEX_FILE, LAYOUT_FILE, blob_path, layout_file_bytes
from imgpipe.formats.manifest import Index
from imgpipe.formats.mediatype import OCI_INDEX

from .base import CommitOnExit, FdHolder
from .layoutfs import (
    COPY_CHUNK_SIZE,
    TEMP_PREFIX,
    atomic_write,
    locked,
    makedirs_beneath,
    open_beneath,
    open_layout_dir,
    read_capped,
    read_layout_document,
)
from .layoutindex import check_layout_file, load_index, merge_entry, select_root

__all__ = ["COPY_CHUNK_SIZE", "TEMP_PREFIX", "OCILayoutSink", "OCILayoutSource"]


class OCILayoutSource(FdHolder):
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
        self._name = f"oci:{path}: source"
        self._fd = open_layout_dir(path)
        try:
            check_layout_file(read_layout_document(self._fd, LAYOUT_FILE, path), path)
            self.index = load_index(read_layout_document(self._fd, INDEX_FILE, path), path)
        except BaseException:
            self.close()
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
        fd = open_beneath(self._check_open(), blob_path(desc.digest), where=self.path)
        return os.fdopen(fd, "rb")


class OCILayoutSink(CommitOnExit, FdHolder):
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
        self._name = f"oci:{path}: sink"
        self._root: Descriptor | None = None
        self._created = False
        self._fd = self._open_or_create()

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
            self._abandon()
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

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether ``blobs/<alg>/<hex>`` exists as a regular file of ``desc.size`` bytes."""
        try:
            fd = open_beneath(self._check_open(), blob_path(desc.digest), where=self.path)
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
        if self.has_blob(desc):
            return
        parent, name = blob_path(desc.digest).rsplit("/", 1)
        pfd = makedirs_beneath(self._check_open(), parent, where=self.path)
        try:
            reader = VerifyingReader(stream, digest=desc.digest, size=desc.size)
            atomic_write(pfd, name, lambda out: shutil.copyfileobj(reader, out, COPY_CHUNK_SIZE))
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
        dirfd = self._check_open()
        if self._root is None:
            return
        with locked(dirfd):
            index = load_index(read_capped(dirfd, INDEX_FILE, self.path), self.path)
            entries = merge_entry(
                index.manifests, self._root, tag=self.tag, image_name=self.image_name
            )
            new = Index.build(entries, media_type=OCI_INDEX, annotations=index.annotations)
            atomic_write(dirfd, INDEX_FILE, new.raw)

    def _abandon(self) -> None:
        if self._created:
            shutil.rmtree(self.path, ignore_errors=True)
