"""The snapshotters by name: opening one, and choosing the default for a root.

Each snapshotter's module is imported only when it is opened, so a caller that needs one
does not pay for the others (btrfs and overlay probe the system when constructed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

from imgpipe.formats.errors import NotFound, Unsupported

from .mount import check_overlay
from .protocol import Snapshotter
from .records import SnapshotRecords


def _overlay(root: Path, db: SnapshotRecords) -> Snapshotter:
    from .overlay import OverlaySnapshotter  # noqa: PLC0415 (imported when opened)

    return OverlaySnapshotter(root, db)


def _btrfs(root: Path, db: SnapshotRecords) -> Snapshotter:
    from .btrfs import BtrfsSnapshotter  # noqa: PLC0415 (imported when opened)

    return BtrfsSnapshotter(root, db)


def _native(root: Path, db: SnapshotRecords) -> Snapshotter:
    from .native import NativeSnapshotter  # noqa: PLC0415 (imported when opened)

    return NativeSnapshotter(root, db)


# The registry: one entry per snapshotter, each imported only when opened.
_SNAPSHOTTERS: Final[dict[str, Callable[[Path, SnapshotRecords], Snapshotter]]] = {
    "overlay": _overlay,
    "btrfs": _btrfs,
    "native": _native,
}

#: The names :func:`open_snapshotter` knows.
SNAPSHOTTER_NAMES: Final = tuple(sorted(_SNAPSHOTTERS))


def open_snapshotter(name: str, root: str | os.PathLike[str], db: SnapshotRecords) -> Snapshotter:
    """The snapshotter ``name`` keeping its directories under ``root`` (by convention
    ``<imgpipe root>/snapshots/<name>``) and its records in ``db``.

    NotFound for an unknown name; Unsupported, saying why, when it cannot work here
    (overlay: not root, or overlayfs refuses the file system of ``root``; btrfs: ``root``
    is not on btrfs, or btrfs-progs is missing).
    """
    factory = _SNAPSHOTTERS.get(name)
    if factory is None:
        raise NotFound(f"unknown snapshotter {name!r} (known: {', '.join(SNAPSHOTTER_NAMES)})")
    return factory(Path(root), db)


def default_snapshotter_name(root: str | os.PathLike[str]) -> str:
    """``"overlay"`` if overlayfs works for snapshots under ``root`` (as root, with a
    kernel that has it, on a file system it accepts as upper dir; probed with a real
    mount like containerd's ``overlayutils.Supported``), else ``"native"``."""
    if os.geteuid() != 0:
        return "native"
    try:
        check_overlay(root)
    except (Unsupported, OSError):
        return "native"
    return "overlay"
