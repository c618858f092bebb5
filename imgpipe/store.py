"""The imgpipe root: where the content store and the metadata database live.

::

    <root>/content/blobs/sha256/<hex>     blobs exactly as served
    <root>/content/ingest/<ref-hash>/     partial writes, resumable
    <root>/metadata.db                    SQLite (WAL): images, labels, leases, snapshots

The root is ``--root``, else ``$IMGPIPE_ROOT``, else ``/var/lib/imgpipe`` for root, else
``$XDG_DATA_HOME/imgpipe`` (``~/.local/share/imgpipe``), as DESIGN.md lays down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from imgpipe.content import ContentStore
from imgpipe.content.closing import Closing
from imgpipe.metadata import MetadataDB

__all__ = ["SYSTEM_ROOT", "Store", "default_root"]

#: The root for the superuser, like /var/lib/containerd.
SYSTEM_ROOT: Final = Path("/var/lib/imgpipe")


def default_root() -> Path:
    """The root to use when none is given: $IMGPIPE_ROOT, the system root, or the user's."""
    env = os.environ.get("IMGPIPE_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return SYSTEM_ROOT
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "imgpipe"


class Store(Closing):
    """The content store and metadata database under one root. Use as a context manager.

    Two processes may open the same root at once: blob writes are locked per ref and
    committed by atomic rename, and the database serialises writers.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.content = ContentStore(self.root / "content")
        self.db = MetadataDB(self.root / "metadata.db")

    def close(self) -> None:
        self.db.close()
