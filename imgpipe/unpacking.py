"""The unpack verbs and stages: moved to the package :mod:`imgpipe.unpack`."""

# shim for the spine merge: remove (the CLI, imgpipe/__init__.py, api.py and benchmarks
# import this module; they switch to imgpipe.unpack)

from __future__ import annotations

from imgpipe.unpack.admin import cleanup_snapshotters, snapshot_remove, snapshots_list
from imgpipe.unpack.export import export_rootfs
from imgpipe.unpack.mounts import mount, mounted, umount
from imgpipe.unpack.result import (
    DEFAULT_SNAPSHOTTER,
    EVENT_LAYER_FAILED,
    EVENT_LAYER_UNPACKED,
    LABEL_SNAPSHOT_REF,
    LayerUnpack,
    UnpackResult,
)
from imgpipe.unpack.snapshotters import open_store_snapshotter
from imgpipe.unpack.stages import FetchUnpack, Unpack
from imgpipe.unpack.verbs import prepare_rootfs, pull_unpack, unpack

__all__ = [
    "DEFAULT_SNAPSHOTTER",
    "EVENT_LAYER_FAILED",
    "EVENT_LAYER_UNPACKED",
    "LABEL_SNAPSHOT_REF",
    "FetchUnpack",
    "LayerUnpack",
    "Unpack",
    "UnpackResult",
    "cleanup_snapshotters",
    "export_rootfs",
    "mount",
    "mounted",
    "open_store_snapshotter",
    "prepare_rootfs",
    "pull_unpack",
    "snapshot_remove",
    "snapshots_list",
    "umount",
    "unpack",
]
