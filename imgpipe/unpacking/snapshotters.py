"""Opening a store and its snapshotters."""

from __future__ import annotations

from pathlib import Path

from imgpipe.snapshots import (
    Snapshotter,
    default_snapshotter_name,
    open_snapshotter,
)
from imgpipe.store import Store

from .result import DEFAULT_SNAPSHOTTER


def snapshots_base(store: Store) -> Path:
    return Path(store.root) / "snapshots"


def open_store_snapshotter(store: Store, name: str | None = DEFAULT_SNAPSHOTTER) -> Snapshotter:
    """The snapshotter ``name`` (None: the default for this root) of ``store``, rooted at
    ``<root>/snapshots/<name>``. NotFound for an unknown name, Unsupported when it cannot
    work here (see :func:`imgpipe.snapshots.open_snapshotter`)."""
    base = snapshots_base(store)
    chosen = name if name else default_snapshotter_name(base)
    return open_snapshotter(chosen, base / chosen, store.db)
