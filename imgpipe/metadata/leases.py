"""Leases: what a running operation holds against garbage collection, and until when."""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import AlreadyExists, InvalidArgument, NotFound

from .connection import Database
from .labels import LABEL_GC_EXPIRE, parse_expire, validate_labels
from .schema import check_snapshotter, digest_key, dump_labels, load_labels

#: Lifetime of a lease unless told otherwise: containerd's client leases last 24 h, long
#: enough for any pull, short enough that a crashed process does not pin blobs forever.
DEFAULT_LEASE_EXPIRY: Final = 24 * 3600.0

#: What a lease can hold. Snapshot keys are ``<snapshotter>/<key>``.
LEASE_KINDS: Final = frozenset({"content", "ingest", "snapshot", "image"})


#: The labels of a record made without any (read-only, so the one default is safe to share).
_NO_LABELS: Final[Mapping[str, str]] = MappingProxyType({})


# A NamedTuple, not a frozen dataclass: ~1 ms less to define (see images.py).
class LeaseRecord(NamedTuple):
    """A lease: while it lives (``expires_at`` is None or in the future), what it lists is
    kept by garbage collection."""

    id: str
    created_at: float
    expires_at: float | None
    labels: Mapping[str, str] = _NO_LABELS


class Lease:
    """A handle on one lease: adds resources to it. Each call is its own transaction and
    is idempotent (adding twice holds once)."""

    __slots__ = ("_db", "id")

    def __init__(self, db: LeaseTable, lease_id: str) -> None:
        self._db = db
        self.id = lease_id

    def add_content(self, digest: Digest) -> None:
        """Hold the blob ``digest`` (and, unless the lease is flat, what its labels name)."""
        self._db.lease_add(self.id, "content", str(digest))

    def add_ingest(self, ref: str) -> None:
        """Hold the ingest ``ref`` so a partial download survives collection."""
        self._db.lease_add(self.id, "ingest", ref)

    def add_snapshot(self, snapshotter: str, key: str) -> None:
        """Hold the snapshot ``key`` of ``snapshotter`` (and its parents)."""
        check_snapshotter(snapshotter)
        self._db.lease_add(self.id, "snapshot", f"{snapshotter}/{key}")

    def add_image(self, name: str) -> None:
        """Hold the image record ``name`` (even an expired one) and its graph."""
        self._db.lease_add(self.id, "image", name)

    def __repr__(self) -> str:
        return f"Lease({self.id!r})"


def _lease_from_row(row: Any) -> LeaseRecord:
    lease_id, created_at, expires_at, labels = row
    return LeaseRecord(
        id=lease_id, created_at=created_at, expires_at=expires_at, labels=load_labels(labels)
    )


class LeaseTable(Database):
    """The ``leases`` and ``lease_resources`` tables' operations."""

    def create_lease(
        self,
        *,
        expires_in: float | None = DEFAULT_LEASE_EXPIRY,
        labels: Mapping[str, str] | None = None,
        lease_id: str | None = None,
    ) -> str:
        """Create a lease and return its id.

        It expires ``expires_in`` seconds from now (None: never), or at the
        ``containerd.io/gc.expire`` label's time if that is earlier. A random id is made
        unless ``lease_id`` is given. InvalidArgument for a non-positive or non-finite
        ``expires_in`` or a bad label; AlreadyExists if ``lease_id`` is taken.
        """
        labels = dict(labels or {})
        validate_labels(labels)
        if expires_in is not None and (not math.isfinite(expires_in) or expires_in <= 0):
            raise InvalidArgument(f"lease expiry must be a positive number, not {expires_in!r}")
        if lease_id is None:
            # Time first so ids sort roughly by creation, random part so they never clash.
            lease_id = f"{time.time_ns():x}-{os.urandom(6).hex()}"
        elif not isinstance(lease_id, str) or not lease_id:
            raise InvalidArgument("lease id must be a non-empty string")
        now = time.time()
        expires_at = None if expires_in is None else now + expires_in
        label_expiry = parse_expire(labels[LABEL_GC_EXPIRE]) if LABEL_GC_EXPIRE in labels else None
        if label_expiry is not None:
            expires_at = label_expiry if expires_at is None else min(expires_at, label_expiry)
        with self.transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO leases (id, created_at, expires_at, labels) VALUES (?, ?, ?, ?)",
                    (lease_id, now, expires_at, dump_labels(labels)),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"lease {lease_id!r} already exists") from None
        return lease_id

    def lease_add(self, lease_id: str, kind: str, key: str) -> None:
        """Add a resource to a lease. Idempotent.

        ``kind`` is one of :data:`LEASE_KINDS`; ``key`` is a digest (content), an ingest
        ref, ``<snapshotter>/<key>`` (snapshot) or an image name. NotFound for an unknown
        lease, InvalidArgument for a bad kind or key.

        Callers add a resource *before* writing or checking it: this call waits for a
        running garbage collection, so afterwards the resource is either gone or held.
        """
        if kind not in LEASE_KINDS:
            raise InvalidArgument(
                f"lease resource kind {kind!r} is not one of {sorted(LEASE_KINDS)}"
            )
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"lease {kind} key must be a non-empty string")
        if kind == "content":
            key = digest_key(key)
        elif kind == "snapshot":
            snapshotter, sep, name = key.partition("/")
            if not sep or not name:
                raise InvalidArgument(f"lease snapshot key {key!r} is not <snapshotter>/<key>")
            check_snapshotter(snapshotter)
        self._change_lease(
            lease_id,
            "INSERT OR IGNORE INTO lease_resources (lease_id, kind, key) VALUES (?, ?, ?)",
            kind,
            key,
        )

    def lease_remove(self, lease_id: str, kind: str, key: str) -> None:
        """Remove a resource from a lease. Idempotent; NotFound for an unknown lease."""
        if kind == "content":
            key = digest_key(key)
        self._change_lease(
            lease_id,
            "DELETE FROM lease_resources WHERE lease_id = ? AND kind = ? AND key = ?",
            kind,
            key,
        )

    def _change_lease(self, lease_id: str, sql: str, kind: str, key: str) -> None:
        # The lease must exist for the whole change: checked inside the same transaction.
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone() is None:
                raise NotFound(f"lease {lease_id!r} not found")
            conn.execute(sql, (lease_id, kind, key))

    def lease_resources(self, lease_id: str) -> list[tuple[str, str]]:
        """The ``(kind, key)`` resources of a lease, sorted. NotFound for an unknown lease."""
        if not self._read("SELECT 1 FROM leases WHERE id = ?", (lease_id,)):
            raise NotFound(f"lease {lease_id!r} not found")
        rows = self._read(
            "SELECT kind, key FROM lease_resources WHERE lease_id = ? ORDER BY kind, key",
            (lease_id,),
        )
        return [(k, v) for k, v in rows]

    def set_lease_labels(self, lease_id: str, labels: Mapping[str, str]) -> None:
        """Merge ``labels`` into the lease's labels (the expiry stays as it was).
        NotFound for an unknown lease, InvalidArgument for a bad label."""
        validate_labels(labels)
        with self.transaction() as conn:
            row = conn.execute("SELECT labels FROM leases WHERE id = ?", (lease_id,)).fetchone()
            if row is None:
                raise NotFound(f"lease {lease_id!r} not found")
            merged = {**load_labels(row[0]), **labels}
            conn.execute(
                "UPDATE leases SET labels = ? WHERE id = ?", (dump_labels(merged), lease_id)
            )

    def delete_lease(self, lease_id: str) -> None:
        """Delete a lease; what it held goes at the next collection unless held otherwise.
        NotFound for an unknown lease."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM lease_resources WHERE lease_id = ?", (lease_id,))
            if conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,)).rowcount == 0:
                raise NotFound(f"lease {lease_id!r} not found")

    def leases(self) -> list[LeaseRecord]:
        """Every lease, expired ones included (collection deletes those), oldest first."""
        rows = self._read(
            "SELECT id, created_at, expires_at, labels FROM leases ORDER BY created_at, id"
        )
        return [_lease_from_row(r) for r in rows]

    @contextmanager
    def lease(
        self,
        *,
        expires_in: float | None = DEFAULT_LEASE_EXPIRY,
        labels: Mapping[str, str] | None = None,
    ) -> Iterator[Lease]:
        """A lease for the length of a ``with`` block: created on entry, deleted on exit
        (even when the block raises; already gone is fine)."""
        lease = Lease(self, self.create_lease(expires_in=expires_in, labels=labels))
        try:
            yield lease
        finally:
            with suppress(NotFound):  # collected already (expired): nothing left to do
                self.delete_lease(lease.id)
