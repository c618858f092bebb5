"""The metadata database: images, content labels, leases and snapshot records in SQLite.

Blobs themselves live in the content store; this database says which of them matter
(images point at them, labels link them, leases hold them) so that garbage collection
(:mod:`imgpipe.metadata.gc`) can tell live from dead. :mod:`.connection` describes the
file, its connections and its concurrency model; each table's operations are a module.
"""

from __future__ import annotations

from .content import ContentLabelTable
from .images import ImageTable
from .leases import LeaseTable
from .snapshot_records import SnapshotTable


class MetadataDB(ImageTable, ContentLabelTable, LeaseTable, SnapshotTable):
    """The SQLite metadata database at ``path`` (created, with its directory, if missing).

    Safe to use from several threads and several processes at once. Close it when done,
    or use it as a context manager. Raises Unsupported if the file was written by a newer
    schema, Unavailable if the write lock cannot be had within ``busy_timeout`` seconds.
    """
