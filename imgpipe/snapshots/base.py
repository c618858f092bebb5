"""The snapshotter vocabulary (containerd's) and the bookkeeping all backends share.

Vocabulary
    A snapshot is a directory tree a layer is applied into or a container runs on. An
    *active* snapshot (made by :meth:`Snapshotter.prepare`, addressed by its *key*) is
    writable; :meth:`Snapshotter.commit` turns it into a *committed* snapshot (addressed by
    its *name*), which is read-only and may be the *parent* of new snapshots. A *view* is a
    read-only snapshot on a committed parent that cannot be committed. Keys and names share
    one namespace per snapshotter.

Importing a layer::

    mounts = sn.prepare("extract-<unique> <chainID>", parent_chain_id)
    mount_all(mounts, tmp) ; apply the layer into tmp ; unmount(tmp)
    sn.commit(chain_id, "extract-<unique> <chainID>")

Running a container::

    mounts = sn.prepare("ctr-1", top_chain_id)   # mount, run, unmount
    sn.remove("ctr-1")

Records and directories
    Every snapshot is a row in the metadata database (``snapshots`` table, via
    :class:`~imgpipe.metadata.MetadataDB`), so garbage collection reaches it through
    ``containerd.io/gc.ref.snapshot.<name>`` labels, and a directory
    ``<root>/snapshots/<id>`` named by a short decimal id (the record's ``backend_id``).
    A crash must never leave a record whose directory is missing, so:

    * creating: the directory is built under ``<root>/snapshots/new-*`` and renamed to its
      id inside the database transaction that inserts the record (dir first, record last);
    * removing: the record is deleted and committed first, then the directory is renamed
      to ``rm-*`` and deleted;
    * :meth:`DirSnapshotter.cleanup` deletes directories that no record names (what a crash
      leaves behind, and what garbage collection's record sweep leaves to the backend).

    The database's write transaction (``BEGIN IMMEDIATE``) is the lock that serialises
    id allocation and record changes across processes. Long work (copying a parent for
    the native snapshotter, btrfs snapshots) happens before it, and what it relied on is
    checked again inside it.
"""

from __future__ import annotations

import enum
import fcntl
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from imgpipe.formats.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from imgpipe.metadata import MetadataDB, SnapshotRecord, validate_labels

__all__ = [
    "DirSnapshotter",
    "Kind",
    "Mount",
    "SnapshotInfo",
    "Snapshotter",
    "Usage",
    "disk_usage",
]


class Kind(enum.Enum):
    """containerd's snapshot kinds; the value is the metadata database's spelling."""

    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@dataclass(frozen=True)
class Mount:
    """One mount, as containerd's ``mount.Mount``: ``mount -t type -o options source``.

    ``target_cwd`` is for callers that build mounts with relative paths (overlay lower
    dirs): the mount is made with that directory as working directory. Snapshotters return
    absolute paths and leave it None; :func:`imgpipe.snapshots.mount.mount` compacts long
    lower-dir lists itself.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()
    target_cwd: str | None = None


@dataclass(frozen=True)
class SnapshotInfo:
    """What :meth:`Snapshotter.stat` says of a snapshot. ``parent`` is ``""`` for none."""

    key: str
    kind: Kind
    parent: str
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Usage:
    """Disk use of one snapshot, its parents excluded: bytes allocated and inodes."""

    size: int
    inodes: int


@runtime_checkable
class Snapshotter(Protocol):
    """containerd's Snapshotter, minus Close (nothing is held open between calls).

    Every method is safe to call from several threads and several processes on one root.
    Errors are the :mod:`imgpipe.errors` classes: NotFound, AlreadyExists,
    InvalidArgument, FailedPrecondition, Unsupported.
    """

    name: str
    root: Path
    #: Whether :meth:`commit` accepts ``parent`` (rebase).
    supports_rebase: bool

    def stat(self, key: str) -> SnapshotInfo:
        """The snapshot ``key``. NotFound if there is none."""
        ...

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create the active snapshot ``key`` on the committed ``parent`` (or empty) and
        return the mounts that show it read-write.

        AlreadyExists if ``key`` is taken; NotFound if ``parent`` does not exist;
        InvalidArgument if ``parent`` is not committed or a label is invalid.
        """
        ...

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create the read-only view ``key`` of ``parent``; errors as :meth:`prepare`."""
        ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of the active snapshot or view ``key`` (same as prepare/view
        returned). NotFound; FailedPrecondition for a committed snapshot."""
        ...

    def commit(
        self,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        parent: str | None = None,
    ) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``; ``key``
        is gone afterwards. The caller must have unmounted it.

        ``parent`` rebases the result onto another committed snapshot (only where
        :attr:`supports_rebase`; Unsupported elsewhere): layers extracted in parallel into
        parentless snapshots are committed in order onto each other.
        AlreadyExists if ``name`` exists (another unpack won: success for callers, who
        then remove ``key``); NotFound if ``key`` does not; FailedPrecondition if ``key``
        is not active.
        """
        ...

    def remove(self, key: str) -> None:
        """Remove the snapshot ``key`` (any kind) and its directory.

        NotFound; FailedPrecondition if other snapshots have it as parent.
        """
        ...

    def walk(self) -> Iterator[SnapshotInfo]:
        """Every snapshot of this snapshotter, sorted by key."""
        ...

    def usage(self, key: str) -> Usage:
        """Disk use of ``key`` alone (parents excluded). Walks the tree: as slow as
        ``du``. NotFound."""
        ...

    def upperdir(self, key: str) -> Path | None:
        """overlay: the directory that holds the active snapshot's own changes (the unpack
        stage applies a layer straight into it, with overlay whiteouts). None for
        snapshotters without one. NotFound; FailedPrecondition if ``key`` is not active."""
        ...

    def parent_dirs(self, key: str) -> list[Path]:
        """overlay: the parents' layer directories, nearest first (where an applier finds
        what a layer hardlinks to or copies up). ``[]`` for other snapshotters."""
        ...

    def cleanup(self) -> list[str]:
        """Delete directories no record names (crash leftovers, garbage collection's
        swept records); returns the directory names deleted. Idempotent."""
        ...

    def set_labels(self, key: str, labels: Mapping[str, str | None]) -> SnapshotInfo:
        """Merge ``labels`` into the snapshot's labels (None deletes a key) and return the
        new info. NotFound; InvalidArgument for a bad label."""
        ...


def _info(rec: SnapshotRecord) -> SnapshotInfo:
    return SnapshotInfo(
        key=rec.key,
        kind=Kind(rec.kind),
        parent=rec.parent,
        labels=dict(rec.labels),
        created_at=rec.created_at,
        updated_at=rec.updated_at,
    )


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


def _rmtree_once(path: Path) -> None:
    def ignore_missing(func: object, p: str, exc: BaseException) -> None:
        # Another process may be deleting the same leftover: gone is what we want.
        if not isinstance(exc, FileNotFoundError):
            raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=ignore_missing)
    else:
        shutil.rmtree(path, onerror=lambda f, p, e: ignore_missing(f, p, e[1]))


def rmtree(path: Path) -> None:
    """Delete ``path`` and everything under it; a missing path is fine. Directories
    without write or search permission (a layer's 0555 dirs, when not root) are opened up
    and the deletion retried."""
    if not os.path.lexists(path):
        return
    try:
        _rmtree_once(path)
    except PermissionError:
        with suppress(OSError):
            os.chmod(path, 0o700)
        for top, dirs, _ in os.walk(path, followlinks=False):
            for d in dirs:
                sub = os.path.join(top, d)
                if not os.path.islink(sub):  # never chmod what a symlink points at
                    with suppress(OSError):
                        os.chmod(sub, 0o700)
        _rmtree_once(path)


#: Name prefixes of directories under ``<root>/snapshots`` that are not snapshots yet
#: (being built) or any more (being deleted).
_NEW: Final = "new-"
_RM: Final = "rm-"


class DirSnapshotter:
    """Records in the metadata database, one directory per snapshot: the part of the
    overlay, native and btrfs snapshotters that is the same. Subclasses fill a new
    snapshot's directory (:meth:`_build`), say how it mounts (:meth:`_mounts_for`), and
    may replace commit's and delete's handling of the directory."""

    name: str = ""
    #: Whether :meth:`commit` accepts ``parent`` (overlay: layers are independent dirs).
    supports_rebase: bool = False

    def __init__(self, root: Path, db: MetadataDB) -> None:
        self.root = Path(root)
        self._db = db
        self._snapshots = self.root / "snapshots"
        # 0700 like containerd: snapshot contents include setuid binaries and secrets of
        # images; other users must not traverse into them.
        self._snapshots.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._build_lock = self.root / "build.lock"

    # -- backend hooks -----------------------------------------------------------------

    def _build(self, tmp: Path, kind: Kind, parent: SnapshotRecord | None) -> None:
        """Fill the new snapshot's directory ``tmp`` (exists, empty)."""
        raise NotImplementedError

    def _mounts_for(self, rec: SnapshotRecord, chain: list[SnapshotRecord]) -> list[Mount]:
        """Mounts of ``rec``; ``chain`` is its parents, nearest first."""
        raise NotImplementedError

    def _commit_build(self, rec: SnapshotRecord, tmp: Path) -> bool:
        """Make the committed form of ``rec`` in ``tmp`` if the backend needs a new
        directory for it (btrfs: a read-only snapshot); False to keep ``rec``'s."""
        return False

    def _delete(self, path: Path) -> None:
        """Delete a snapshot directory (btrfs deletes its subvolume)."""
        rmtree(path)

    def _usage(self, rec: SnapshotRecord, chain: list[SnapshotRecord]) -> Usage:
        return disk_usage(self.fs_dir(rec.backend_id))

    # -- paths -------------------------------------------------------------------------

    def dir_of(self, backend_id: str) -> Path:
        """The directory of the snapshot with that id."""
        return self._snapshots / backend_id

    def fs_dir(self, backend_id: str) -> Path:
        """The snapshot's file tree (``<id>/fs``)."""
        return self._snapshots / backend_id / "fs"

    # -- records -----------------------------------------------------------------------

    def _get(self, key: str) -> SnapshotRecord:
        _check_key(key)
        return self._db.get_snapshot(self.name, key)

    def _exists(self, key: str) -> bool:
        try:
            self._db.get_snapshot(self.name, key)
        except NotFound:
            return False
        return True

    def _chain(self, rec: SnapshotRecord) -> list[SnapshotRecord]:
        chain: list[SnapshotRecord] = []
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

    def _next_id(self) -> str:
        # Called inside the write transaction: no other process allocates meanwhile.
        # Directories count too, so an id whose record is gone but whose directory is
        # still being deleted is never reused.
        top = 0
        for rec in self._db.list_snapshots(self.name):
            if rec.backend_id.isdigit():
                top = max(top, int(rec.backend_id))
        with os.scandir(self._snapshots) as it:
            for e in it:
                if e.name.isdigit():
                    top = max(top, int(e.name))
                elif e.name.startswith(_RM):
                    num = e.name[len(_RM) :].split("-", 1)[0]
                    if num.isdigit():
                        top = max(top, int(num))
        return str(top + 1)

    @contextmanager
    def _tempdir(self) -> Iterator[Path]:
        """A fresh ``new-*`` directory, deleted on the way out unless renamed away.

        A shared lock on ``build.lock`` is held meanwhile: :meth:`cleanup` deletes
        ``new-*`` directories only when it can take that lock exclusively, i.e. when no
        build is running anywhere.
        """
        fd = os.open(self._build_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            tmp = self._snapshots / f"{_NEW}{secrets.token_hex(6)}"
            tmp.mkdir(mode=0o700)
            try:
                yield tmp
            finally:
                if os.path.lexists(tmp):
                    self._delete(tmp)
        finally:
            os.close(fd)

    def _place(self, tmp: Path) -> str:
        """Rename ``tmp`` to a new id (inside the caller's transaction); returns the id."""
        sid = self._next_id()
        os.rename(tmp, self.dir_of(sid))
        return sid

    def _discard(self, backend_id: str) -> None:
        """Delete a directory whose record is gone (or never committed)."""
        src = self.dir_of(backend_id)
        dst = self._snapshots / f"{_RM}{backend_id}-{secrets.token_hex(4)}"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return  # cleanup() of another process got there first
        self._delete(dst)

    # -- the protocol --------------------------------------------------------------------

    def stat(self, key: str) -> SnapshotInfo:
        return _info(self._get(key))

    def walk(self) -> Iterator[SnapshotInfo]:
        for rec in self._db.list_snapshots(self.name):
            yield _info(rec)

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        _check_key(key)
        lab = dict(labels or {})
        validate_labels(lab)
        parent_rec = self._committed_parent(parent) if parent else None
        if self._exists(key):
            raise AlreadyExists(f"snapshot {key!r} already exists")
        with self._tempdir() as tmp:
            self._build(tmp, kind, parent_rec)
            now = time.time()
            rec: SnapshotRecord | None = None
            sid = ""
            try:
                with self._db.transaction():
                    if self._exists(key):
                        raise AlreadyExists(f"snapshot {key!r} already exists")
                    if parent_rec is not None:
                        self._recheck(parent_rec)
                    sid = self._place(tmp)
                    rec = SnapshotRecord(
                        snapshotter=self.name,
                        key=key,
                        kind=kind.value,
                        parent=parent,
                        backend_id=sid,
                        labels=lab,
                        created_at=now,
                        updated_at=now,
                    )
                    self._db.put_snapshot(rec)
            except BaseException:
                if sid:  # renamed, but the record did not commit
                    self._discard(sid)
                raise
        assert rec is not None
        return self._mounts_for(rec, self._chain(rec))

    def _committed_parent(self, parent: str) -> SnapshotRecord:
        try:
            rec = self._get(parent)
        except NotFound:
            raise NotFound(f"parent snapshot {parent!r} not found") from None
        if rec.kind != Kind.COMMITTED.value:
            raise InvalidArgument(f"parent snapshot {parent!r} is {rec.kind}, not committed")
        return rec

    def _recheck(self, parent_rec: SnapshotRecord) -> None:
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
        self,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        parent: str | None = None,
    ) -> None:
        _check_key(name)
        lab = dict(labels or {})
        validate_labels(lab)
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
                    now = time.time()
                    self._db.delete_snapshot(self.name, key)
                    self._db.put_snapshot(
                        SnapshotRecord(
                            snapshotter=self.name,
                            key=name,
                            kind=Kind.COMMITTED.value,
                            parent=new_parent,
                            backend_id=sid,
                            labels=lab,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except BaseException:
                if rebuilt and sid:
                    self._discard(sid)
                raise
        if rebuilt:
            self._discard(rec.backend_id)

    def remove(self, key: str) -> None:
        with self._db.transaction():
            rec = self._get(key)
            children = [r.key for r in self._db.list_snapshots(self.name) if r.parent == key]
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
            validate_labels(merged)
            new = SnapshotRecord(
                snapshotter=rec.snapshotter,
                key=rec.key,
                kind=rec.kind,
                parent=rec.parent,
                backend_id=rec.backend_id,
                labels=merged,
                created_at=rec.created_at,
                updated_at=time.time(),
            )
            self._db.put_snapshot(new)
        return _info(new)

    def cleanup(self) -> list[str]:
        doomed: list[tuple[str, Path]] = []
        fd = os.open(self._build_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                no_builds = True
            except BlockingIOError:
                no_builds = False  # a build is running: its new-* dir is not ours to take
            with self._db.transaction():
                live = {r.backend_id for r in self._db.list_snapshots(self.name)}
                with os.scandir(self._snapshots) as it:
                    names = [e.name for e in it]
                for n in names:
                    orphan = (n.isdigit() and n not in live) or (n.startswith(_NEW) and no_builds)
                    if orphan:
                        dst = self._snapshots / f"{_RM}{n}-{secrets.token_hex(4)}"
                        with suppress(FileNotFoundError):
                            os.rename(self._snapshots / n, dst)
                            doomed.append((n, dst))
                    elif n.startswith(_RM):
                        doomed.append((n, self._snapshots / n))
        finally:
            os.close(fd)
        for _, d in doomed:
            self._delete(d)
        return [name for name, _ in doomed]


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidArgument("snapshot key must be a non-empty string")
    if "\x00" in key:
        raise InvalidArgument(f"snapshot key {key!r} contains a NUL byte")
