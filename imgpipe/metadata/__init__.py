"""Metadata: images, content labels, leases and snapshot records in SQLite; garbage
collection by mark and sweep over containerd's GC labels.

``MetadataDB`` is the database (:mod:`.db`: one module per table, on :mod:`.connection`
and :mod:`.schema`), the ``LABEL_*`` constants and child-label helpers are containerd's
vocabulary (:mod:`.labels`), and ``collect`` runs a collection against a content store
(:mod:`.gc`).
"""

from typing import TYPE_CHECKING

from imgpipe.formats._lazy import lazy_exports

if TYPE_CHECKING:
    from .connection import DEFAULT_BUSY_TIMEOUT
    from .db import MetadataDB
    from .gc import INGEST_EXPIRY, GCContent, GCResult, collect
    from .images import ImageRecord
    from .labels import (
        LABEL_DISTRIBUTION_SOURCE,
        LABEL_GC_EXPIRE,
        LABEL_GC_FLAT,
        LABEL_GC_REF_CONTENT,
        LABEL_GC_REF_SNAPSHOT,
        LABEL_GC_ROOT,
        LABEL_UNCOMPRESSED,
        MAX_LABEL_SIZE,
        index_child_labels,
        manifest_child_labels,
        validate_labels,
    )
    from .leases import DEFAULT_LEASE_EXPIRY, LEASE_KINDS, Lease, LeaseRecord
    from .schema import SCHEMA_VERSION
    from .snapshot_records import SNAPSHOT_KINDS, SnapshotRecord

#: Public name -> its submodule, imported on first use: a verb that opens the database
#: (run, images, ps) does not load the collector (:mod:`.gc`).
_WHERE = {
    "DEFAULT_BUSY_TIMEOUT": "connection",
    "MetadataDB": "db",
    **dict.fromkeys(("INGEST_EXPIRY", "GCContent", "GCResult", "collect"), "gc"),
    "ImageRecord": "images",
    **dict.fromkeys(
        (
            "LABEL_DISTRIBUTION_SOURCE",
            "LABEL_GC_EXPIRE",
            "LABEL_GC_FLAT",
            "LABEL_GC_REF_CONTENT",
            "LABEL_GC_REF_SNAPSHOT",
            "LABEL_GC_ROOT",
            "LABEL_UNCOMPRESSED",
            "MAX_LABEL_SIZE",
            "index_child_labels",
            "manifest_child_labels",
            "validate_labels",
        ),
        "labels",
    ),
    **dict.fromkeys(("DEFAULT_LEASE_EXPIRY", "LEASE_KINDS", "Lease", "LeaseRecord"), "leases"),
    "SCHEMA_VERSION": "schema",
    **dict.fromkeys(("SNAPSHOT_KINDS", "SnapshotRecord"), "snapshot_records"),
}

__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_LEASE_EXPIRY",
    "INGEST_EXPIRY",
    "LABEL_DISTRIBUTION_SOURCE",
    "LABEL_GC_EXPIRE",
    "LABEL_GC_FLAT",
    "LABEL_GC_REF_CONTENT",
    "LABEL_GC_REF_SNAPSHOT",
    "LABEL_GC_ROOT",
    "LABEL_UNCOMPRESSED",
    "LEASE_KINDS",
    "MAX_LABEL_SIZE",
    "SCHEMA_VERSION",
    "SNAPSHOT_KINDS",
    "GCContent",
    "GCResult",
    "ImageRecord",
    "Lease",
    "LeaseRecord",
    "MetadataDB",
    "SnapshotRecord",
    "collect",
    "index_child_labels",
    "manifest_child_labels",
    "validate_labels",
]
