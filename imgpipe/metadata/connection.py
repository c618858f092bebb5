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

When the system refuses writing (a read-only mount, a full disk: :mod:`.refusal`), the
database opens read-only instead, so listing and inspecting still work: SQLite's
``mode=ro``, then ``readonly_shm`` (the WAL index in memory, when ``-shm`` cannot be
written), then ``immutable`` (only when the WAL is empty, so nothing committed is
missed). Every write then raises the refusal (ReadOnlyStore or NoSpace) at once.
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

from imgpipe.formats.errors import (
    FailedPrecondition,
    ImgpipeError,
    NoSpace,
    ReadOnlyStore,
    StorageError,
    Unsupported,
)

from .refusal import classify, is_lock, read_only_reason
from .schema import MIGRATIONS, SCHEMA_VERSION

#: How long a writer waits for the database's write lock, in seconds. Generous because a
#: garbage collection holds the lock for its whole mark-and-sweep, including unlinks.
DEFAULT_BUSY_TIMEOUT: Final = 60.0


def _enable_wal(conn: sqlite3.Connection, *, deadline: float) -> None:
    """Put the database in WAL mode (persistent in the file; a no-op once set).

    Switching modes needs an exclusive lock and SQLite does not apply the busy timeout to
    it, so two processes opening a fresh root at once can see "database is locked": retry
    with back-off until ``deadline``. Any other error (a full or read-only disk) is raised
    at once: waiting would not change it.
    """
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if not is_lock(e) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


class Database:
    """The SQLite file at ``path``: one connection per thread (opened on first use, in
    WAL mode), :meth:`transaction` for writes, migrated to the current schema on opening.
    The base of every table's operations; see the module docstring for concurrency.

    ``read_only``: open it read-only from the start (the caller knows the disk refuses
    writes). Without it, a database the system will not let us write is opened
    read-only all the same; :attr:`refusal` then says why, and every write raises it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        read_only: bool = False,
    ) -> None:
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._refusal: StorageError | None = None
        if read_only:
            why = read_only_reason(self._path.parent) or "opened read-only"
            self._refusal = ReadOnlyStore(f"metadata database {self._path} is read-only ({why})")
        else:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"metadata database {self._path}: {e.strerror}") from e
        self._migrate()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def refusal(self) -> StorageError | None:
        """Why this database is open read-only (ReadOnlyStore, NoSpace), or None."""
        return self._refusal

    @property
    def read_only(self) -> bool:
        return self._refusal is not None

    def _refuse(self, doing: str) -> StorageError:
        """The error for a write attempted on a database open read-only."""
        r = self._refusal
        assert r is not None
        if isinstance(r, NoSpace):
            return NoSpace(f"{r}: cannot {doing}", needed=r.needed, free=r.free)
        return type(r)(f"{r}: cannot {doing}")

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
        conn = self._open()
        self._local.conn = conn
        self._local.depth = 0
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _connect(self, target: str | Path, *, uri: bool = False) -> sqlite3.Connection:
        return sqlite3.connect(
            target,
            uri=uri,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE ourselves
            check_same_thread=False,  # so close() may close every thread's connection
        )

    def _open(self) -> sqlite3.Connection:
        """A new connection: read-write unless the system refuses, then read-only."""
        if self._refusal is None:
            conn = None
            try:
                conn = self._connect(self._path)
                _enable_wal(conn, deadline=time.monotonic() + self._busy_timeout)
                # In WAL mode NORMAL keeps the database consistent after any crash; only a
                # power loss can roll back the last commits, which a re-run pull redoes.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                return conn
            except sqlite3.Error as e:
                if conn is not None:
                    conn.close()
                err = classify(e, self._path, "opening it")
                if not isinstance(err, StorageError):
                    raise err from e
                self._refusal = err
        return self._open_read_only()

    def _open_read_only(self) -> sqlite3.Connection:
        """A read-only connection, by the first of SQLite's read-only modes that works
        here (see the module docstring); the refusal if none does."""
        uri = self._path.absolute().as_uri()
        modes = ["mode=ro", "mode=ro&readonly_shm=1"]
        wal = self._path.with_name(self._path.name + "-wal")
        try:
            wal_empty = wal.stat().st_size == 0
        except FileNotFoundError:
            wal_empty = True
        except OSError:
            wal_empty = False
        if wal_empty:
            # Exact only with an empty WAL: immutable reads the main file alone.
            modes.append("mode=ro&immutable=1")
        last: sqlite3.Error | None = None
        for mode in modes:
            conn = self._connect(f"{uri}?{mode}", uri=True)
            try:
                conn.execute("PRAGMA user_version").fetchone()  # reads page 1: opens the WAL
                return conn
            except sqlite3.Error as e:
                conn.close()
                last = e
        assert self._refusal is not None
        raise self._refusal from last

    def _fail(self, e: sqlite3.Error, doing: str) -> ImgpipeError:
        return classify(e, self._path, doing)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed when the block ends,
        rolled back if it raises. Nested use in one thread becomes a savepoint.

        The write lock is taken at the start, so everything read inside is current until
        the commit. Raises Unavailable if the lock is not had within the busy timeout;
        ReadOnlyStore or NoSpace at once if the system refuses the write.
        """
        conn = self._conn()
        if self._refusal is not None:
            raise self._refuse("write")
        depth: int = self._local.depth
        savepoint = f"imgpipe_sp{depth}"
        try:
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
        except sqlite3.OperationalError as e:
            raise self._fail(e, "starting a write") from e
        except BaseException:
            # Ctrl-C lands at the first bytecode after a BEGIN that waited on the lock:
            # the transaction is open but no block owns it; a later write on this thread
            # would fail with "cannot start a transaction within a transaction".
            if depth == 0 and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
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
                raise self._fail(e, "writing") from e
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
            raise self._fail(e, "committing") from e

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            raise self._fail(e, "reading") from e

    def _migrate(self) -> None:
        """Bring the schema up to :data:`SCHEMA_VERSION` (done on opening).

        Under the write lock, so two processes opening an old database at once migrate it
        once. Unsupported for a database written by a newer imgpipe.
        """
        conn = self._conn()
        try:
            version = self._check_version(conn)
        except sqlite3.Error as e:
            raise self._fail(e, "reading its schema version") from e
        if version == SCHEMA_VERSION:
            return
        if self._refusal is not None:
            raise self._refuse(f"migrate it from schema {version} to {SCHEMA_VERSION}")
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
