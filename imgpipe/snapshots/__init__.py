"""Snapshotters: overlay, btrfs and native (copying), with containerd's vocabulary.

:func:`open_snapshotter` opens one by name on ``<imgpipe root>/snapshots/<name>``;
:func:`default_snapshotter_name` picks overlay where it works and native elsewhere.
:mod:`.protocol` defines the protocol and types (its docstring walks through the
workflow), :mod:`.base` the bookkeeping the three share (and the crash-safety rules),
:mod:`.records` the narrow metadata protocol they keep their records through,
:mod:`.registry` opens them by name, and :mod:`.mount` mounts what they return.

=========  ===========================================  ==============================
name       a snapshot is                                 mounts as
=========  ===========================================  ==============================
overlay    ``snapshots/<id>/fs`` (+ ``work``)            bind, or overlay of the chain
btrfs      subvolume ``snapshots/<id>/fs``               bind of the subvolume
native     full copy ``snapshots/<id>/fs``               bind
=========  ===========================================  ==============================
"""

from .base import DirSnapshotter
from .mount import direct_path, mount_all, unmount
from .protocol import Kind, Mount, SnapshotInfo, Snapshotter, Usage
from .records import SnapshotRecords
from .registry import SNAPSHOTTER_NAMES, default_snapshotter_name, open_snapshotter

__all__ = [
    "SNAPSHOTTER_NAMES",
    "DirSnapshotter",
    "Kind",
    "Mount",
    "SnapshotInfo",
    "SnapshotRecords",
    "Snapshotter",
    "Usage",
    "default_snapshotter_name",
    "direct_path",
    "mount_all",
    "open_snapshotter",
    "unmount",
]
