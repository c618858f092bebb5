"""The snapshotter protocol and its vocabulary (containerd's).

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

How the directory snapshotters keep records and directories crash-safe is told in
:mod:`imgpipe.snapshots.base`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final, NamedTuple, Protocol, TypeAlias, runtime_checkable

#: A snapshot's labels (containerd's, e.g. ``containerd.io/gc.root``).
Labels: TypeAlias = Mapping[str, str]


class Kind(enum.Enum):
    """containerd's snapshot kinds; the value is the metadata database's spelling."""

    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


# A NamedTuple, not a frozen dataclass: the same equality, hash, repr and immutability, and
# ~0.2 ms to define instead of ~1.2 ms, on the start-up of every verb that imports it.
class Mount(NamedTuple):
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


#: The labels of a SnapshotInfo made without any (read-only: the one default is shared).
_NO_LABELS: Final[Labels] = MappingProxyType({})


class SnapshotInfo(NamedTuple):
    """What :meth:`Snapshotter.stat` says of a snapshot. ``parent`` is ``""`` for none."""

    key: str
    kind: Kind
    parent: str
    labels: Labels = _NO_LABELS
    created_at: float = 0.0
    updated_at: float = 0.0


class Usage(NamedTuple):
    """Disk use of one snapshot, its parents excluded: bytes allocated and inodes."""

    size: int
    inodes: int


@runtime_checkable
class Snapshotter(Protocol):
    """containerd's Snapshotter, minus Close (nothing is held open between calls).

    Every method is safe to call from several threads and several processes on one root.
    Errors are the :mod:`imgpipe.formats.errors` classes: NotFound, AlreadyExists,
    InvalidArgument, FailedPrecondition, Unsupported.
    """

    name: str
    root: Path
    #: Whether :meth:`commit` accepts ``parent`` (rebase).
    supports_rebase: bool

    def stat(self, key: str) -> SnapshotInfo:
        """The snapshot ``key``. NotFound if there is none."""
        ...

    def prepare(self, key: str, parent: str = "", *, labels: Labels | None = None) -> list[Mount]:
        """Create the active snapshot ``key`` on the committed ``parent`` (or empty) and
        return the mounts that show it read-write.

        AlreadyExists if ``key`` is taken; NotFound if ``parent`` does not exist;
        InvalidArgument if ``parent`` is not committed or a label is invalid.
        """
        ...

    def view(self, key: str, parent: str = "", *, labels: Labels | None = None) -> list[Mount]:
        """Create the read-only view ``key`` of ``parent``; errors as :meth:`prepare`."""
        ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of the active snapshot or view ``key`` (same as prepare/view
        returned). NotFound; FailedPrecondition for a committed snapshot."""
        ...

    def commit(
        self, name: str, key: str, *, labels: Labels | None = None, parent: str | None = None
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
