"""The snapshot administration verbs: list, remove, and clean up the directories no
record names any more.

A verb of its own, above unpacking and task: removing a snapshot asks both whether
something still uses it (a mount made by :func:`imgpipe.mount`, a container's rootfs).
"""

from __future__ import annotations

from collections.abc import Sequence

from imgpipe.errors import FailedPrecondition, InvalidArgument, NotFound, Unsupported
from imgpipe.pipeline.context import Root, opened_store
from imgpipe.snapshots import SNAPSHOTTER_NAMES, Kind, SnapshotInfo, open_snapshotter
from imgpipe.store import Store
from imgpipe.unpacking.mounts import mounted
from imgpipe.unpacking.snapshotters import open_store_snapshotter, snapshots_base


def snapshots_list(
    *, snapshotter: str | None = None, store: Store | None = None, root: Root = None
) -> list[tuple[str, SnapshotInfo]]:
    """Every snapshot record (of one snapshotter, or all): ``(snapshotter, info)``
    sorted by snapshotter and key. Reads the database only (works without root)."""
    if snapshotter is not None and snapshotter not in SNAPSHOTTER_NAMES:
        raise NotFound(
            f"unknown snapshotter {snapshotter!r} (known: {', '.join(SNAPSHOTTER_NAMES)})"
        )
    with opened_store(store, root) as s:
        return [
            (
                r.snapshotter,
                SnapshotInfo(
                    r.key, Kind(r.kind), r.parent, dict(r.labels), r.created_at, r.updated_at
                ),
            )
            for r in s.db.list_snapshots(snapshotter)
        ]


def snapshot_remove(
    keys: Sequence[str],
    *,
    snapshotter: str | None = None,
    store: Store | None = None,
    root: Root = None,
) -> list[tuple[str, str]]:
    """Remove snapshots by key, in the order given, with their directories; returns
    ``(snapshotter, key)`` removed. Without ``snapshotter`` the key is looked up in all.

    NotFound (no such key), InvalidArgument (the key exists in several snapshotters:
    say which), FailedPrecondition (it is the parent of another snapshot, or mounted by
    :func:`mount`: umount it instead).
    """
    from imgpipe.task.state import list_records  # noqa: PLC0415

    removed: list[tuple[str, str]] = []
    with opened_store(store, root) as s:
        in_use = {
            (sn_name, key): f"the mount on {tgt} (imgpipe umount)"
            for tgt, sn_name, key in mounted(store=s)
        }
        # a container's rootfs is in use too, running or not, until `imgpipe rm`
        for rec in list_records(s.root):
            if rec.snapshotter and rec.snapshot_key:
                in_use.setdefault(
                    (rec.snapshotter, rec.snapshot_key), f"container {rec.id} (imgpipe rm)"
                )
        for key in keys:
            owners = [r.snapshotter for r in s.db.list_snapshots(snapshotter) if r.key == key]
            if not owners:
                raise NotFound(
                    f"no snapshot {key!r}" + (f" in {snapshotter}" if snapshotter else "")
                )
            if len(owners) > 1:
                raise InvalidArgument(
                    f"snapshot {key!r} exists in {', '.join(owners)}: give --snapshotter"
                )
            if (owners[0], key) in in_use:
                raise FailedPrecondition(
                    f"snapshot {key!r} is in use by {in_use[(owners[0], key)]}: release it first"
                )
            open_store_snapshotter(s, owners[0]).remove(key)
            removed.append((owners[0], key))
    return removed


def cleanup_snapshotters(store: Store) -> dict[str, list[str]]:
    """Delete the directories of every snapshotter under the root that no record names
    any more (after garbage collection swept records, or after a crash). Snapshotters
    that cannot be opened here (overlay without root) are skipped. Returns the
    directory names deleted, per snapshotter."""
    out: dict[str, list[str]] = {}
    base = snapshots_base(store)
    for name in SNAPSHOTTER_NAMES:
        if not (base / name).is_dir():
            continue
        try:
            sn = open_snapshotter(name, base / name, store.db)
        except (Unsupported, OSError):
            continue
        gone = sn.cleanup()
        if gone:
            out[name] = gone
    return out
