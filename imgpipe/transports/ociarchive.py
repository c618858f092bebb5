"""The oci-archive transport: ``oci-archive:FILE[:TAG]``, an OCI image layout in a tar.

Reading never extracts: blobs are served out of the tar in place (``tarindex``). Only an
uncompressed tar can be read that way, which is what skopeo and containerd write. Besides
the member checks of ``tarindex``, any link makes the archive MalformedDocument (a layout
has no reason to hold one). Only ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``
are used; other members (a Docker ``manifest.json``, say) are ignored, as the layout spec
asks.

Writing goes through a temporary layout directory next to FILE; on success it is packed
into a temporary tar that replaces FILE by a rename, so FILE is either the old archive or
the new one, never half of one. The tar is reproducible: sorted names, mtime 0, owner 0.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from typing import BinaryIO

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import MalformedDocument, NotFound
from imgpipe.formats.layout import INDEX_FILE, LAYOUT_FILE
from imgpipe.formats.manifest import Index

from .base import CommitOnExit
from .layoutfs import TEMP_PREFIX, atomic_write
from .layoutindex import blob_digest_of, check_layout_file, load_index, select_root
from .ocilayout import OCILayoutSink
from .tarindex import MAX_ARCHIVE_MEMBERS, MemberSource

__all__ = ["MAX_ARCHIVE_MEMBERS", "OCIArchiveSink", "OCIArchiveSource"]


class OCIArchiveSource(MemberSource):
    """Read one image out of an oci-archive (a tar of an OCI image layout).

    Opening reads the tar headers, ``oci-layout`` and ``index.json``: NotFound if FILE is
    missing; MalformedDocument if it is not a tar, holds a hostile or duplicate member or a
    link, or lacks the layout files; Unsupported for an unknown layout version. Streams
    from ``open_blob`` stay valid after ``close``.
    """

    def __init__(self, path: str, *, tag: str = "") -> None:
        super().__init__("oci-archive", path)
        self.tag = tag
        try:
            table = self._table
            if table.links:
                name = sorted(table.links)[0]
                raise MalformedDocument(f"{path}: member {name!r} is a link; refused")
            for required in (LAYOUT_FILE, INDEX_FILE):
                if required not in table.files:
                    raise MalformedDocument(f"{path}: no {required} member: not an OCI archive")
            check_layout_file(self._read_capped(table.files[LAYOUT_FILE]), path)
            self.index: Index = load_index(self._read_capped(table.files[INDEX_FILE]), path)
            for name, member in table.files.items():
                dg = blob_digest_of(name)
                if dg is not None:
                    self._blobs[dg] = member
        except BaseException:
            self.close()
            raise

    def resolve(self) -> Descriptor:
        """As for an OCI layout: the entry tagged TAG, or the only entry.

        NotFound (naming the tags present) or InvalidArgument (several, no tag).
        """
        return select_root(self.index, self.tag, f"oci-archive:{self.path}")


class OCIArchiveSink(CommitOnExit):
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
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            atomic_write(
                dfd, os.path.basename(self.path), lambda out: write_layout_tar(self._tmpdir, out)
            )
        finally:
            os.close(dfd)

    def close(self) -> None:
        """Drop the temporary layout without writing FILE. Idempotent."""
        if not self._closed:
            self._closed = True
            self._layout.close()
            shutil.rmtree(self._tmpdir, ignore_errors=True)


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
