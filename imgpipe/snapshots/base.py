"""The bookkeeping the overlay, native and btrfs snapshotters share.

Records and directories
    Every snapshot is a record in a metadata store (:class:`~.records.SnapshotRecords`:
    the metadata database's ``snapshots`` table), so garbage collection reaches it through
    ``containerd.io/gc.ref.snapshot.<name>`` labels, and a directory
    ``<root>/snapshots/<id>`` named by a short decimal id (the record's ``backend_id``).
    A crash must never leave a record whose directory is missing, so:

    * creating: the directory is built under ``<root>/snapshots/new-*`` and renamed to its
      id inside the database transaction that inserts the record (dir first, record last);
    * removing: the record is deleted and committed first, then the directory is renamed
      to ``rm-*`` and deleted;
    * :meth:`DirSnapshotter.cleanup` deletes directories that no record names (what a crash
      leaves behind, and what garbage collection's record sweep leaves to the backend).

    The store's write transaction (``BEGIN IMMEDIATE``) is the lock that serialises id
    allocation and record changes across processes. Long work (copying a parent for the
    native snapshotter, btrfs snapshots) happens before it, and what it relied on is
    checked again inside it. :mod:`.cleanup` holds the directory side of these rules.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from imgpipe.formats.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unsupported,
)

from .cleanup import NEW, build_lock, claim_leftovers, discard, highest_id, rmtree
from .protocol import Kind, Labels, Mount, SnapshotInfo, Usage
from .records import Record, SnapshotRecords


def disk_usage(path: Path) -> Usage:
    """Bytes allocated (``st_blocks``) and inodes under ``path``, hardlinks counted once,
    symlinks not followed. A missing path is empty."""
    seen: set[int] = set()
    size = 0
    stack = [path]
    while stack:
        p = stack.pop()
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if st.st_ino in seen:
            continue
        seen.add(st.st_ino)
        size += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(p) as it:
                stack.extend(Path(e.path) for e in it)
    return Usage(size=size, inodes=len(seen))


class DirSnapshotter:
    """Records in a metadata store, one directory per snapshot: the part of the overlay,
    native and btrfs snapshotters that is the same. Subclasses fill a new snapshot's
    directory (:meth:`_build`), say how it mounts (:meth:`_mounts_for`), and may replace
    commit's and delete's handling of the directory."""

    name: str = ""
    #: Whether :meth:`commit` accepts ``parent`` (overlay: layers are independent dirs).
    supports_rebase: bool = False

    def __init__(self, root: Path, db: SnapshotRecords) -> None:
        self.root = Path(root)
        self._db = db
        self._snapshots = self.root / "snapshots"
        # 0700 like containerd: snapshot contents include setuid binaries and secrets of
        # images; other users must not traverse into them.
        self._snapshots.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._build_lock = self.root / "build.lock"

    # -- backend hooks -----------------------------------------------------------------

    def _build(self, tmp: Path, kind: Kind, parent: Record | None) -> None:
        """Fill the new snapshot's directory ``tmp`` (exists, empty)."""
        raise NotImplementedError

    def _mounts_for(self, rec: Record, chain: list[Record]) -> list[Mount]:
        """Mounts of ``rec``; ``chain`` is its parents, nearest first."""
        raise NotImplementedError

    def _commit_build(self, rec: Record, tmp: Path) -> bool:
        """Make the committed form of ``rec`` in ``tmp`` if the backend needs a new
        directory for it (btrfs: a read-only snapshot); False to keep ``rec``'s."""
        return False

    def _delete(self, path: Path) -> None:
        """Delete a snapshot directory (btrfs deletes its subvolume)."""
        rmtree(path)

    def _usage(self, rec: Record, chain: list[Record]) -> Usage:
        return disk_usage(self.fs_dir(rec.backend_id))

    # -- paths -------------------------------------------------------------------------

    def dir_of(self, backend_id: str) -> Path:
        """The directory of the snapshot with that id."""
        return self._snapshots / backend_id

    def fs_dir(self, backend_id: str) -> Path:
        """The snapshot's file tree (``<id>/fs``)."""
        return self._snapshots / backend_id / "fs"

    # -- records -----------------------------------------------------------------------

    def _get(self, key: str) -> Record:
        _check_key(key)
        return self._db.get_snapshot(self.name, key)

    def _exists(self, key: str) -> bool:
        try:
            self._db.get_snapshot(self.name, key)
        except NotFound:
            return False
        return True

    def _chain(self, rec: Record) -> list[Record]:
        chain: list[Record] = []
        seen = {rec.key}
        parent = rec.parent
        while parent:
            if parent in seen:
                raise FailedPrecondition(f"snapshot {rec.key!r}: parent chain has a cycle")
            seen.add(parent)
            try:
                p = self._db.get_snapshot(self.name, parent)
            except NotFound:
                raise FailedPrecondition(
                    f"snapshot {rec.key!r}: ancestor {parent!r} has no record"
                ) from None
            chain.append(p)
            parent = p.parent
        return chain

    def _save(self, key: str, kind: Kind, parent: str, sid: str, labels: Labels) -> Record:
        return self._db.save_snapshot(
            self.name, key, kind=kind.value, parent=parent, backend_id=sid, labels=labels
        )

    @contextmanager
    def _tempdir(self) -> Iterator[Path]:
        """A fresh ``new-*`` directory, deleted on the way out unless renamed away.

        A shared lock on ``build.lock`` is held meanwhile: :meth:`cleanup` deletes
        ``new-*`` directories only when it can take that lock exclusively, i.e. when no
        build is running anywhere.
        """
        with build_lock(self._build_lock):
            tmp = self._snapshots / f"{NEW}{os.urandom(6).hex()}"
            tmp.mkdir(mode=0o700)
            try:
                yield tmp
            finally:
                if os.path.lexists(tmp):
                    self._delete(tmp)

    def _place(self, tmp: Path) -> str:
        """Rename ``tmp`` to a new id (inside the caller's transaction); returns the id."""
        # No other process allocates meanwhile. Directories count too, so an id whose
        # record is gone but whose directory is still being deleted is never reused.
        top = max(highest_id(self._snapshots), self._db.highest_snapshot_id(self.name))
        sid = str(top + 1)
        os.rename(tmp, self.dir_of(sid))
        return sid

    def _discard(self, backend_id: str) -> None:
        """Delete a directory whose record is gone (or never committed)."""
        discard(self._snapshots, backend_id, self._delete)

    # -- the protocol --------------------------------------------------------------------

    def stat(self, key: str) -> SnapshotInfo:
        return _info(self._get(key))

    def walk(self) -> Iterator[SnapshotInfo]:
        for rec in self._db.list_snapshots(self.name):
            yield _info(rec)

    def prepare(self, key: str, parent: str = "", *, labels: Labels | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", *, labels: Labels | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent: str, labels: Labels | None) -> list[Mount]:
        # Labels are checked by the store when the record is written (its rules).
        _check_key(key)
        parent_rec = self._committed_parent(parent) if parent else None
        if self._exists(key):
            raise AlreadyExists(f"snapshot {key!r} already exists")
        with self._tempdir() as tmp:
            self._build(tmp, kind, parent_rec)
            sid = ""
            try:
                with self._db.transaction():
                    if self._exists(key):
                        raise AlreadyExists(f"snapshot {key!r} already exists")
                    if parent_rec is not None:
                        self._recheck(parent_rec)
                    sid = self._place(tmp)
                    rec = self._save(key, kind, parent, sid, labels or {})
            except BaseException:
                if sid:  # renamed, but the record did not commit
                    self._discard(sid)
                raise
        return self._mounts_for(rec, self._chain(rec))

    def _committed_parent(self, parent: str) -> Record:
        try:
            rec = self._get(parent)
        except NotFound:
            raise NotFound(f"parent snapshot {parent!r} not found") from None
        if rec.kind != Kind.COMMITTED.value:
            raise InvalidArgument(f"parent snapshot {parent!r} is {rec.kind}, not committed")
        return rec

    def _recheck(self, parent_rec: Record) -> None:
        # Between the first look and the transaction the parent may have been removed
        # (and even re-created under the same key): what was built from it is stale.
        try:
            cur = self._db.get_snapshot(self.name, parent_rec.key)
        except NotFound:
            raise NotFound(f"parent snapshot {parent_rec.key!r} was removed meanwhile") from None
        if cur.backend_id != parent_rec.backend_id or cur.kind != Kind.COMMITTED.value:
            raise NotFound(f"parent snapshot {parent_rec.key!r} was replaced meanwhile")

    def mounts(self, key: str) -> list[Mount]:
        rec = self._get(key)
        if rec.kind == Kind.COMMITTED.value:
            raise FailedPrecondition(
                f"snapshot {key!r} is committed: only active snapshots and views mount"
            )
        if not self.dir_of(rec.backend_id).is_dir():
            raise FailedPrecondition(
                f"snapshot {key!r}: its directory {self.dir_of(rec.backend_id)} is missing"
            )
        return self._mounts_for(rec, self._chain(rec))

    def commit(
        self, name: str, key: str, *, labels: Labels | None = None, parent: str | None = None
    ) -> None:
        _check_key(name)
        rec = self._get(key)
        if rec.kind != Kind.ACTIVE.value:
            raise FailedPrecondition(f"snapshot {key!r} is {rec.kind}, not active")
        new_parent = rec.parent
        if parent is not None and parent != rec.parent:
            if not self.supports_rebase:
                raise Unsupported(f"{self.name} snapshotter cannot rebase on commit")
            if rec.parent:
                raise FailedPrecondition(
                    f"snapshot {key!r} already has parent {rec.parent!r}: only a parentless "
                    "snapshot can be rebased"
                )
            new_parent = parent
        if self._exists(name):
            raise AlreadyExists(f"snapshot {name!r} already exists")
        with self._tempdir() as tmp:
            rebuilt = self._commit_build(rec, tmp)
            sid = ""
            try:
                with self._db.transaction():
                    cur = self._get(key)
                    if cur.backend_id != rec.backend_id or cur.kind != Kind.ACTIVE.value:
                        raise NotFound(f"snapshot {key!r} was removed meanwhile")
                    if self._exists(name):
                        raise AlreadyExists(f"snapshot {name!r} already exists")
                    if new_parent and new_parent != rec.parent:
                        self._recheck(self._committed_parent(new_parent))
                    sid = self._place(tmp) if rebuilt else rec.backend_id
                    self._db.delete_snapshot(self.name, key)
                    self._save(name, Kind.COMMITTED, new_parent, sid, labels or {})
            except BaseException:
                if rebuilt and sid:
                    self._discard(sid)
                raise
        if rebuilt:
            self._discard(rec.backend_id)

    def remove(self, key: str) -> None:
        with self._db.transaction():
            rec = self._get(key)
            children = self._db.snapshot_children(self.name, key)
            if children:
                shown = ", ".join(repr(c) for c in children[:3])
                more = f" and {len(children) - 3} more" if len(children) > 3 else ""
                raise FailedPrecondition(
                    f"cannot remove snapshot {key!r}: it is the parent of {shown}{more}"
                )
            self._db.delete_snapshot(self.name, key)
        # Record gone and committed first: a crash from here on leaves only a directory
        # without a record, which cleanup() deletes.
        self._discard(rec.backend_id)

    def usage(self, key: str) -> Usage:
        rec = self._get(key)
        return self._usage(rec, self._chain(rec))

    def upperdir(self, key: str) -> Path | None:
        self._get(key)
        return None

    def parent_dirs(self, key: str) -> list[Path]:
        self._get(key)
        return []

    def set_labels(self, key: str, labels: Mapping[str, str | None]) -> SnapshotInfo:
        with self._db.transaction():
            rec = self._get(key)
            merged = dict(rec.labels)
            for k, v in labels.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            new = self._save(key, Kind(rec.kind), rec.parent, rec.backend_id, merged)
        return _info(new)

    def cleanup(self) -> list[str]:
        with build_lock(self._build_lock, exclusive=True) as no_builds, self._db.transaction():
            live = {r.backend_id for r in self._db.list_snapshots(self.name)}
            doomed = claim_leftovers(self._snapshots, live, take_new=no_builds)
        for _, d in doomed:
            self._delete(d)
        return [name for name, _ in doomed]


def _info(rec: Record) -> SnapshotInfo:
    return SnapshotInfo(
        key=rec.key,
        kind=Kind(rec.kind),
        parent=rec.parent,
        labels=dict(rec.labels),
        created_at=rec.created_at,
        updated_at=rec.updated_at,
    )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidArgument("snapshot key must be a non-empty string")
    if "\x00" in key:
        raise InvalidArgument(f"snapshot key {key!r} contains a NUL byte")
