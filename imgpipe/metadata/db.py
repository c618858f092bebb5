"""The metadata database: images, content labels, leases and snapshot records in SQLite.

One file, ``<root>/metadata.db``, in WAL mode, shared by every imgpipe process working on
that root. Blobs themselves live in the content store; this database says which of them
matter (images point at them, labels link them, leases hold them) so that garbage
collection (:mod:`imgpipe.metadata.gc`) can tell live from dead.

Concurrency model:

* Each thread gets its own SQLite connection (a connection must not be shared by threads
  that run transactions), all opened on the same file.
* Every write runs in ``BEGIN IMMEDIATE``: it takes the database's write lock at the
  start, so a read-modify-write cannot interleave with another writer and lose an update.
  A writer that finds the lock taken waits up to the busy timeout (60 s by default; a
  garbage collection holds the lock for its whole run) before failing with Unavailable.
* Readers never wait for writers (WAL) and see the last committed state.
* :meth:`MetadataDB.transaction` groups several calls into one atomic unit; the methods
  called inside it join that transaction (nested use becomes a savepoint).

The schema version lives in ``PRAGMA user_version``; opening a database migrates it
forward under the write lock, and refuses (Unsupported) a database from a newer imgpipe.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
)

from .labels import LABEL_GC_EXPIRE, parse_expire, validate_labels

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_LEASE_EXPIRY",
    "LEASE_KINDS",
    "SCHEMA_VERSION",
    "SNAPSHOT_KINDS",
    "ImageRecord",
    "Lease",
    "LeaseRecord",
    "MetadataDB",
    "SnapshotRecord",
]

#: Lifetime of a lease unless told otherwise: containerd's client leases last 24 h, long
#: enough for any pull, short enough that a crashed process does not pin blobs forever.
DEFAULT_LEASE_EXPIRY: Final = 24 * 3600.0

#: How long a writer waits for the database's write lock, in seconds. Generous because a
#: garbage collection holds the lock for its whole mark-and-sweep, including unlinks.
DEFAULT_BUSY_TIMEOUT: Final = 60.0

#: What a lease can hold. Snapshot keys are ``<snapshotter>/<key>``.
LEASE_KINDS: Final = frozenset({"content", "ingest", "snapshot", "image"})

#: containerd's snapshot kinds.
SNAPSHOT_KINDS: Final = frozenset({"active", "view", "committed"})

# Schema migrations: _MIGRATIONS[v] takes user_version v to v + 1. Append, never edit.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE images (
            name TEXT PRIMARY KEY,
            target TEXT NOT NULL,          -- descriptor JSON
            labels TEXT NOT NULL,          -- JSON object of strings
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        # One row per label so merges touch only the changed keys and GC can scan the
        # whole graph's edges in one query.
        """CREATE TABLE content_labels (
            digest TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (digest, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE leases (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            expires_at REAL,               -- NULL: never expires
            labels TEXT NOT NULL
        )""",
        """CREATE TABLE lease_resources (
            lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            PRIMARY KEY (lease_id, kind, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE snapshots (
            snapshotter TEXT NOT NULL,
            key TEXT NOT NULL,
            kind TEXT NOT NULL,
            parent TEXT NOT NULL,          -- '' for none
            backend_id TEXT NOT NULL,
            labels TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (snapshotter, key)
        )""",
    ),
)

#: The version this code writes; ``PRAGMA user_version`` of an up-to-date database.
SCHEMA_VERSION: Final = len(_MIGRATIONS)


@dataclass(frozen=True)
class ImageRecord:
    """A named image: the descriptor of its root (index or manifest) and its labels."""

    name: str
    target: Descriptor
    created_at: float
    updated_at: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaseRecord:
    """A lease: while it lives (``expires_at`` is None or in the future), what it lists is
    kept by garbage collection."""

    id: str
    created_at: float
    expires_at: float | None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SnapshotRecord:
    """A snapshot as the metadata knows it; ``backend_id`` is the snapshotter's own name.

    ``kind`` is ``active``, ``view`` or ``committed``; ``parent`` is the key of the parent
    snapshot in the same snapshotter, or ``""``.
    """

    snapshotter: str
    key: str
    kind: str
    parent: str
    backend_id: str
    labels: Mapping[str, str]
    created_at: float
    updated_at: float

    def __post_init__(self) -> None:
        if self.kind not in SNAPSHOT_KINDS:
            raise InvalidArgument(
                f"snapshot {self.key!r}: kind {self.kind!r} is not one of {sorted(SNAPSHOT_KINDS)}"
            )
        _check_snapshotter(self.snapshotter)
        if not self.key:
            raise InvalidArgument("snapshot key must not be empty")


class Lease:
    """A handle on one lease: adds resources to it. Each call is its own transaction and
    is idempotent (adding twice holds once)."""

    __slots__ = ("_db", "id")

    def __init__(self, db: MetadataDB, lease_id: str) -> None:
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
        _check_snapshotter(snapshotter)
        self._db.lease_add(self.id, "snapshot", f"{snapshotter}/{key}")

    def add_image(self, name: str) -> None:
        """Hold the image record ``name`` (even an expired one) and its graph."""
        self._db.lease_add(self.id, "image", name)

    def __repr__(self) -> str:
        return f"Lease({self.id!r})"


def _check_snapshotter(name: str) -> None:
    # Lease keys and GC nodes are "<snapshotter>/<key>": the name must not contain '/'.
    if not name or "/" in name:
        raise InvalidArgument(f"invalid snapshotter name {name!r}")


def _digest_key(digest: Digest | str) -> str:
    if isinstance(digest, Digest):
        return str(digest)
    return str(Digest.parse(digest))


def _dump_labels(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def _load_labels(text: str) -> dict[str, str]:
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise FailedPrecondition("metadata database: labels column is not a JSON object")
    return {str(k): str(v) for k, v in obj.items()}


def _image_from_row(row: Any) -> ImageRecord:
    name, target, labels, created_at, updated_at = row
    return ImageRecord(
        name=name,
        target=Descriptor.from_json(json.loads(target)),
        created_at=created_at,
        updated_at=updated_at,
        labels=_load_labels(labels),
    )


def _snapshot_from_row(row: Any) -> SnapshotRecord:
    snapshotter, key, kind, parent, backend_id, labels, created_at, updated_at = row
    return SnapshotRecord(
        snapshotter=snapshotter,
        key=key,
        kind=kind,
        parent=parent,
        backend_id=backend_id,
        labels=_load_labels(labels),
        created_at=created_at,
        updated_at=updated_at,
    )


def _lease_from_row(row: Any) -> LeaseRecord:
    lease_id, created_at, expires_at, labels = row
    return LeaseRecord(
        id=lease_id, created_at=created_at, expires_at=expires_at, labels=_load_labels(labels)
    )


def _enable_wal(conn: sqlite3.Connection, *, deadline: float) -> None:
    """Put the database in WAL mode (persistent in the file; a no-op once set).

    Switching modes needs an exclusive lock and SQLite does not apply the busy timeout to
    it, so two processes opening a fresh root at once can see "database is locked": retry
    with back-off until ``deadline``.
    """
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


class MetadataDB:
    """The SQLite metadata database at ``path`` (created, with its directory, if missing).

    Safe to use from several threads and several processes at once. Close it when done,
    or use it as a context manager. Raises Unsupported if the file was written by a newer
    schema, Unavailable if the write lock cannot be had within ``busy_timeout`` seconds.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> None:
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    @property
    def path(self) -> Path:
        return self._path

    # -- connections and transactions ------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise FailedPrecondition(f"metadata database {self._path} is closed")
        if os.getpid() != self._pid:
            # A connection must not cross fork(): the child starts afresh and leaves the
            # parent's connections alone (closing them here could release the parent's
            # POSIX locks).
            self._pid = os.getpid()
            self._local = threading.local()
            with self._conns_lock:
                self._conns = []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE ourselves
                check_same_thread=False,  # so close() may close every thread's connection
            )
            _enable_wal(conn, deadline=time.monotonic() + self._busy_timeout)
            # In WAL mode NORMAL keeps the database consistent after any crash; only a
            # power loss can roll back the last commits, which a re-run pull redoes.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.OperationalError as e:
            raise Unavailable(f"metadata database {self._path}: {e}") from e
        self._local.conn = conn
        self._local.depth = 0
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed when the block ends,
        rolled back if it raises. Nested use in one thread becomes a savepoint.

        The write lock is taken at the start, so everything read inside is current until
        the commit. Raises Unavailable if the lock is not had within the busy timeout.
        """
        conn = self._conn()
        depth: int = self._local.depth
        savepoint = f"imgpipe_sp{depth}"
        try:
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
        except sqlite3.OperationalError as e:
            raise Unavailable(f"metadata database {self._path}: {e}") from e
        self._local.depth = depth + 1
        try:
            yield conn
        except BaseException as e:
            self._local.depth = depth
            if depth == 0:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO {savepoint}")
                conn.execute(f"RELEASE {savepoint}")
            if isinstance(e, sqlite3.OperationalError):
                # Locked, disk full, I/O error: callers branch on our classes, not sqlite's.
                raise Unavailable(f"metadata database {self._path}: {e}") from e
            raise
        self._local.depth = depth
        if depth > 0:
            conn.execute(f"RELEASE {savepoint}")
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise Unavailable(f"metadata database {self._path}: commit failed: {e}") from e

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            raise Unavailable(f"metadata database {self._path}: {e}") from e

    def _migrate(self) -> None:
        conn = self._conn()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise Unsupported(
                f"metadata database {self._path} has schema version {version}; "
                f"this imgpipe knows up to {SCHEMA_VERSION}"
            )
        with self.transaction():
            # Read again under the write lock: another process may have migrated first.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise Unsupported(
                    f"metadata database {self._path} has schema version {version}; "
                    f"this imgpipe knows up to {SCHEMA_VERSION}"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer constant.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    def close(self) -> None:
        """Close every connection this object opened. Idempotent. Other threads must be
        done with the database first."""
        if self._closed:
            return
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        if os.getpid() == self._pid:
            for conn in conns:
                conn.close()

    def __enter__(self) -> MetadataDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- images ----------------------------------------------------------------------

    def put_image(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> ImageRecord:
        """Create the image ``name`` or point it at a new target.

        On update ``created_at`` is kept; ``labels`` replaces the image's labels when
        given, and leaves them as they are when None. InvalidArgument for an empty name
        or an oversized label.
        """
        if not isinstance(name, str) or not name:
            raise InvalidArgument("image name must be a non-empty string")
        if labels is not None:
            validate_labels(labels)
        target_json = json.dumps(target.to_json(), sort_keys=True, separators=(",", ":"))
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT created_at, labels FROM images WHERE name = ?", (name,)
            ).fetchone()
            created_at = now if row is None else row[0]
            final = (
                dict(labels)
                if labels is not None
                else ({} if row is None else _load_labels(row[1]))
            )
            conn.execute(
                "INSERT INTO images (name, target, labels, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "target = excluded.target, labels = excluded.labels, "
                "updated_at = excluded.updated_at",
                (name, target_json, _dump_labels(final), created_at, now),
            )
        return ImageRecord(name, target, created_at, now, final)

    def get_image(self, name: str) -> ImageRecord:
        """The image ``name``; NotFound if there is none."""
        rows = self._read(
            "SELECT name, target, labels, created_at, updated_at FROM images WHERE name = ?",
            (name,),
        )
        if not rows:
            raise NotFound(f"image {name!r} not found")
        return _image_from_row(rows[0])

    def list_images(self) -> list[ImageRecord]:
        """Every image, sorted by name."""
        rows = self._read(
            "SELECT name, target, labels, created_at, updated_at FROM images ORDER BY name"
        )
        return [_image_from_row(r) for r in rows]

    def delete_image(self, name: str) -> None:
        """Remove the image record (its blobs go at the next garbage collection).
        NotFound if there is none."""
        with self.transaction() as conn:
            if conn.execute("DELETE FROM images WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"image {name!r} not found")

    # -- content labels --------------------------------------------------------------

    def set_content_labels(self, digest: Digest, labels: Mapping[str, str | None]) -> None:
        """Merge ``labels`` into the blob's labels; a None value deletes that key.

        The blob need not exist yet (a pull may label a parent before fetching it).
        InvalidArgument if a label is empty-keyed or key+value exceeds 4096 bytes; then
        nothing is changed.
        """
        key = _digest_key(digest)
        validate_labels({k: v for k, v in labels.items() if v is not None})
        for k in labels:
            if not isinstance(k, str) or not k:
                raise InvalidArgument(f"label key {k!r} must be a non-empty string")
        with self.transaction() as conn:
            for k, v in labels.items():
                if v is None:
                    conn.execute(
                        "DELETE FROM content_labels WHERE digest = ? AND key = ?", (key, k)
                    )
                else:
                    conn.execute(
                        "INSERT INTO content_labels (digest, key, value) VALUES (?, ?, ?) "
                        "ON CONFLICT (digest, key) DO UPDATE SET value = excluded.value",
                        (key, k, v),
                    )

    def content_labels(self, digest: Digest) -> dict[str, str]:
        """The blob's labels (empty if it has none)."""
        rows = self._read(
            "SELECT key, value FROM content_labels WHERE digest = ? ORDER BY key",
            (_digest_key(digest),),
        )
        return dict(rows)

    def labelled_content(self) -> dict[Digest, dict[str, str]]:
        """Every blob that has labels, with its labels (garbage collection's edge list)."""
        out: dict[Digest, dict[str, str]] = {}
        for digest, k, v in self._read(
            "SELECT digest, key, value FROM content_labels ORDER BY digest, key"
        ):
            out.setdefault(Digest.parse(digest), {})[k] = v
        return out

    def delete_content_labels(self, digest: Digest) -> None:
        """Drop every label of the blob. Idempotent."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM content_labels WHERE digest = ?", (_digest_key(digest),))

    # -- leases ----------------------------------------------------------------------

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
            lease_id = f"{time.time_ns():x}-{secrets.token_hex(6)}"
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
                    (lease_id, now, expires_at, _dump_labels(labels)),
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
            key = _digest_key(key)
        elif kind == "snapshot":
            snapshotter, sep, name = key.partition("/")
            if not sep or not name:
                raise InvalidArgument(f"lease snapshot key {key!r} is not <snapshotter>/<key>")
            _check_snapshotter(snapshotter)
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone() is None:
                raise NotFound(f"lease {lease_id!r} not found")
            conn.execute(
                "INSERT OR IGNORE INTO lease_resources (lease_id, kind, key) VALUES (?, ?, ?)",
                (lease_id, kind, key),
            )

    def lease_remove(self, lease_id: str, kind: str, key: str) -> None:
        """Remove a resource from a lease. Idempotent; NotFound for an unknown lease."""
        if kind == "content":
            key = _digest_key(key)
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone() is None:
                raise NotFound(f"lease {lease_id!r} not found")
            conn.execute(
                "DELETE FROM lease_resources WHERE lease_id = ? AND kind = ? AND key = ?",
                (lease_id, kind, key),
            )

    def lease_resources(self, lease_id: str) -> list[tuple[str, str]]:
        """The ``(kind, key)`` resources of a lease, sorted. NotFound for an unknown lease."""
        if not self._read("SELECT 1 FROM leases WHERE id = ?", (lease_id,)):
            raise NotFound(f"lease {lease_id!r} not found")
        rows = self._read(
            "SELECT kind, key FROM lease_resources WHERE lease_id = ? ORDER BY kind, key",
            (lease_id,),
        )
        return [(k, v) for k, v in rows]

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

    # -- snapshots -------------------------------------------------------------------

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
                    _dump_labels(rec.labels),
                    rec.created_at,
                    rec.updated_at,
                ),
            )

    def get_snapshot(self, snapshotter: str, key: str) -> SnapshotRecord:
        """The snapshot record; NotFound if there is none."""
        rows = self._read(
            "SELECT snapshotter, key, kind, parent, backend_id, labels, created_at, updated_at "
            "FROM snapshots WHERE snapshotter = ? AND key = ?",
            (snapshotter, key),
        )
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
        sql = (
            "SELECT snapshotter, key, kind, parent, backend_id, labels, created_at, updated_at "
            "FROM snapshots"
        )
        if snapshotter is None:
            rows = self._read(sql + " ORDER BY snapshotter, key")
        else:
            rows = self._read(sql + " WHERE snapshotter = ? ORDER BY key", (snapshotter,))
        return [_snapshot_from_row(r) for r in rows]
