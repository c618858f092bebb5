"""The SQLite file under the metadata: per-thread connections, write transactions, the
schema migration. The tables' operations build on it (:mod:`.images`, :mod:`.content`,
:mod:`.leases`, :mod:`.snapshot_records`); :class:`~imgpipe.metadata.MetadataDB` joins them.

One file, ``<root>/metadata.db``, in WAL mode, shared by every imgpipe process working on
that root. Concurrency model:

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

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Self

from imgpipe.formats.errors import FailedPrecondition, Unavailable, Unsupported

from .schema import MIGRATIONS, SCHEMA_VERSION

#: How long a writer waits for the database's write lock, in seconds. Generous because a
#: garbage collection holds the lock for its whole mark-and-sweep, including unlinks.
DEFAULT_BUSY_TIMEOUT: Final = 60.0


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


class Database:
    """The SQLite file at ``path``: one connection per thread (opened on first use, in
    WAL mode), :meth:`transaction` for writes, migrated to the current schema on opening.
    The base of every table's operations; see the module docstring for concurrency."""

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
        """Bring the schema up to :data:`SCHEMA_VERSION` (done on opening).

        Under the write lock, so two processes opening an old database at once migrate it
        once. Unsupported for a database written by a newer imgpipe.
        """
        conn = self._conn()
        if self._check_version(conn) == SCHEMA_VERSION:
            return
        with self.transaction():
            # Read again under the write lock: another process may have migrated first.
            for step in MIGRATIONS[self._check_version(conn) :]:
                for statement in step:
                    conn.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer constant.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    def _check_version(self, conn: sqlite3.Connection) -> int:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise Unsupported(
                f"metadata database {self._path} has schema version {version}; "
                f"this imgpipe knows up to {SCHEMA_VERSION}"
            )
        return version

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
