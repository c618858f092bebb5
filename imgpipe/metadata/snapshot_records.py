"""Snapshot records: what the metadata knows of each snapshotter's snapshots.

The snapshotters (:mod:`imgpipe.snapshots`) keep their records here through the narrow
protocol they define, ``imgpipe.snapshots.records.SnapshotRecords``, which
:class:`SnapshotTable` satisfies; garbage collection reads the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from imgpipe.formats._record import FrozenValue
from imgpipe.formats.errors import InvalidArgument, NotFound

from .connection import Database
from .labels import validate_labels
from .schema import check_snapshotter, dump_labels, load_labels

#: containerd's snapshot kinds.
SNAPSHOT_KINDS: Final = frozenset({"active", "view", "committed"})


class SnapshotRecord(FrozenValue):
    """A snapshot as the metadata knows it; ``backend_id`` is the snapshotter's own name.

    ``kind`` is ``active``, ``view`` or ``committed``; ``parent`` is the key of the parent
    snapshot in the same snapshotter, or ``""``. (A hand-written value class, not a
    dataclass: every pull and run defines it.)
    """

    __slots__ = (
        "backend_id",
        "created_at",
        "key",
        "kind",
        "labels",
        "parent",
        "snapshotter",
        "updated_at",
    )
    snapshotter: str
    key: str
    kind: str
    parent: str
    backend_id: str
    labels: Mapping[str, str]
    created_at: float
    updated_at: float

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's was)
        self,
        snapshotter: str,
        key: str,
        kind: str,
        parent: str,
        backend_id: str,
        labels: Mapping[str, str],
        created_at: float,
        updated_at: float,
    ) -> None:
        if kind not in SNAPSHOT_KINDS:
            raise InvalidArgument(
                f"snapshot {key!r}: kind {kind!r} is not one of {sorted(SNAPSHOT_KINDS)}"
            )
        check_snapshotter(snapshotter)
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        self._set(
            snapshotter=snapshotter,
            key=key,
            kind=kind,
            parent=parent,
            backend_id=backend_id,
            labels=labels,
            created_at=created_at,
            updated_at=updated_at,
        )


def _snapshot_from_row(row: Any) -> SnapshotRecord:
    # The columns are the record's fields, in order; only the labels are encoded.
    fields = list(row)
    fields[5] = load_labels(fields[5])
    return SnapshotRecord(*fields)


_SELECT: Final = (
    "SELECT snapshotter, key, kind, parent, backend_id, labels, created_at, updated_at "
    "FROM snapshots"
)


class SnapshotTable(Database):
    """The ``snapshots`` table's operations."""

    def put_snapshot(self, rec: SnapshotRecord) -> None:
        """Create or replace the snapshot record ``(rec.snapshotter, rec.key)``."""
        validate_labels(rec.labels)
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (snapshotter, key, kind, parent, backend_id, "
                "labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.snapshotter,
                    rec.key,
                    rec.kind,
                    rec.parent,
                    rec.backend_id,
                    dump_labels(rec.labels),
                    rec.created_at,
                    rec.updated_at,
                ),
            )

    def get_snapshot(self, snapshotter: str, key: str) -> SnapshotRecord:
        """The snapshot record; NotFound if there is none."""
        rows = self._read(_SELECT + " WHERE snapshotter = ? AND key = ?", (snapshotter, key))
        if not rows:
            raise NotFound(f"snapshot {key!r} of {snapshotter} not found")
        return _snapshot_from_row(rows[0])

    def delete_snapshot(self, snapshotter: str, key: str) -> None:
        """Delete the snapshot record; NotFound if there is none."""
        with self.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM snapshots WHERE snapshotter = ? AND key = ?", (snapshotter, key)
            )
            if cur.rowcount == 0:
                raise NotFound(f"snapshot {key!r} of {snapshotter} not found")

    def list_snapshots(self, snapshotter: str | None = None) -> list[SnapshotRecord]:
        """Snapshot records, of one snapshotter or all, sorted by (snapshotter, key)."""
        if snapshotter is None:
            rows = self._read(_SELECT + " ORDER BY snapshotter, key")
        else:
            rows = self._read(_SELECT + " WHERE snapshotter = ? ORDER BY key", (snapshotter,))
        return [_snapshot_from_row(r) for r in rows]

    def snapshot_children(self, snapshotter: str, key: str) -> list[str]:
        """The keys of ``snapshotter``'s records whose parent is ``key``, sorted."""
        rows = self._read(
            "SELECT key FROM snapshots WHERE snapshotter = ? AND parent = ? ORDER BY key",
            (snapshotter, key),
        )
        return [r[0] for r in rows]

    def highest_snapshot_id(self, snapshotter: str) -> int:
        """The largest all-digit ``backend_id`` of ``snapshotter``'s records; 0 if none."""
        rows = self._read(
            "SELECT MAX(CAST(backend_id AS INTEGER)) FROM snapshots WHERE snapshotter = ? "
            "AND backend_id GLOB '[0-9]*' AND backend_id NOT GLOB '*[^0-9]*'",
            (snapshotter,),
        )
        return int(rows[0][0] or 0)

    def save_snapshot(
        self,
        snapshotter: str,
        key: str,
        *,
        kind: str,
        parent: str,
        backend_id: str,
        labels: Mapping[str, str],
    ) -> SnapshotRecord:
        """Create or update the record ``(snapshotter, key)`` from its fields and return
        it: :meth:`put_snapshot` for callers that do not build records themselves.

        ``updated_at`` is now; ``created_at`` too for a new record, and kept on update.
        InvalidArgument for a bad kind, key, snapshotter name or label; then nothing is
        written.
        """
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT created_at FROM snapshots WHERE snapshotter = ? AND key = ?",
                (snapshotter, key),
            ).fetchone()
            created = now if row is None else row[0]
            rec = SnapshotRecord(
                snapshotter, key, kind, parent, backend_id, dict(labels), created, now
            )
            self.put_snapshot(rec)
        return rec
