"""Where snapshotters keep their records: the narrow metadata protocol they depend on.

Every snapshot is a record keyed by ``(snapshotter, key)``, so garbage collection reaches
it through ``containerd.io/gc.ref.snapshot.<snapshotter>`` labels. The snapshotters need
five operations of whatever holds those records, and name them here rather than import a
database: :class:`imgpipe.metadata.MetadataDB` satisfies :class:`SnapshotRecords`
structurally (the type check holds it to that), and so would any other store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from .protocol import Labels


class Record(Protocol):
    """One snapshot's record as read back. ``kind`` is a :class:`~.protocol.Kind` value;
    ``parent`` is the key of the parent in the same snapshotter, or ``""``;
    ``backend_id`` is the snapshotter's own name for it (its directory)."""

    @property
    def key(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def parent(self) -> str: ...

    @property
    def backend_id(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def created_at(self) -> float: ...

    @property
    def updated_at(self) -> float: ...


class SnapshotRecords(Protocol):
    """The snapshot-record operations of a metadata store.

    Safe across threads and processes; every call is its own transaction unless made
    inside :meth:`transaction`.
    """

    def transaction(self) -> AbstractContextManager[object]:
        """A write transaction: the calls made inside join it and commit (or roll back)
        together. It is also the lock that serialises snapshotters across processes."""
        ...

    def get_snapshot(self, snapshotter: str, key: str) -> Record:
        """The record; NotFound if there is none."""
        ...

    def list_snapshots(self, snapshotter: str) -> Sequence[Record]:
        """Every record of ``snapshotter``, sorted by key."""
        ...

    def snapshot_children(self, snapshotter: str, key: str) -> Sequence[str]:
        """The keys of the records whose parent is ``key``, sorted."""
        ...

    def highest_snapshot_id(self, snapshotter: str) -> int:
        """The largest all-digit ``backend_id`` of ``snapshotter``'s records; 0 if none."""
        ...

    def save_snapshot(
        self, snapshotter: str, key: str, *, kind: str, parent: str, backend_id: str, labels: Labels
    ) -> Record:
        """Create or update the record and return it; ``updated_at`` is now, and so is
        ``created_at`` unless the record existed. InvalidArgument for a bad key, kind or
        label (the store holds the label rules); then nothing is written."""
        ...

    def delete_snapshot(self, snapshotter: str, key: str) -> None:
        """Delete the record; NotFound if there is none."""
        ...
