"""The overlay snapshotter: one directory per layer, stacked by overlayfs at mount time.

Layout (containerd's)::

    <root>/snapshots/<id>/fs     the snapshot's own files (the upper dir while active)
    <root>/snapshots/<id>/work   overlayfs's work dir (active snapshots only, 0711)

Mounts, as containerd builds them:

* no parent: a bind of the snapshot's own ``fs`` (``rw``; ``ro`` for a view);
* a view with exactly one parent: a read-only bind of the parent's ``fs``;
* an active snapshot with parents: ``overlay`` with ``index=off`` (when the kernel has the
  index feature), ``workdir``, ``upperdir`` and ``lowerdir`` nearest parent first;
* a view with two or more parents: ``overlay`` with ``lowerdir`` only (read-only).

Because each layer's ``fs`` is independent, layers can be extracted in parallel into
parentless active snapshots and committed in order with ``commit(..., parent=...)``
(:attr:`OverlaySnapshotter.supports_rebase`), containerd 2.2's "rebase".

Deep images: see :mod:`imgpipe.snapshots.mount` for how more lower dirs than fit one
mount-option page are mounted.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgpipe.formats.errors import FailedPrecondition, InvalidArgument

from .base import DirSnapshotter
from .mount import check_overlay, overlay_index_off
from .protocol import Kind, Mount
from .records import Record, SnapshotRecords

__all__ = ["OverlaySnapshotter"]


class OverlaySnapshotter(DirSnapshotter):
    """overlayfs snapshots under ``root``. Needs root and a file system that overlayfs
    accepts as upper dir; the constructor probes with a real mount (Unsupported if not).
    InvalidArgument if ``root`` contains ``,`` or ``:``, which mount options cannot
    carry."""

    name = "overlay"
    supports_rebase = True

    def __init__(self, root: Path, db: SnapshotRecords, *, check: bool = True) -> None:
        root = Path(os.path.abspath(root))
        if "," in str(root) or ":" in str(root):
            raise InvalidArgument(
                f"overlay snapshotter root {root} contains ',' or ':', "
                "which overlay mount options cannot carry"
            )
        if check:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            check_overlay(root)
        super().__init__(root, db)
        self._index = overlay_index_off()

    def _build(self, tmp: Path, kind: Kind, parent: Record | None) -> None:
        fs = tmp / "fs"
        fs.mkdir()
        # A rootfs is world-readable (containerd's RootPermission test wants 0755).
        os.chmod(fs, 0o755)  # noqa: S103
        if kind is Kind.ACTIVE:
            (tmp / "work").mkdir()
            os.chmod(tmp / "work", 0o711)  # noqa: S103 (containerd's mode)
            if parent is not None:
                # A new layer starts owned like its parent's root, so a non-root image's
                # "/" does not turn into root's on the first write (containerd does this).
                st = os.stat(self.fs_dir(parent.backend_id))
                os.chown(fs, st.st_uid, st.st_gid)

    def _mounts_for(self, rec: Record, chain: list[Record]) -> list[Mount]:
        own = str(self.fs_dir(rec.backend_id))
        active = rec.kind == Kind.ACTIVE.value
        if not chain:
            return [Mount("bind", own, ("rw" if active else "ro", "rbind"))]
        lowers = ":".join(str(self.fs_dir(p.backend_id)) for p in chain)
        if active:
            work = str(self.dir_of(rec.backend_id) / "work")
            opts = (*self._index, f"workdir={work}", f"upperdir={own}", f"lowerdir={lowers}")
            return [Mount("overlay", "overlay", opts)]
        if len(chain) == 1:
            return [Mount("bind", str(self.fs_dir(chain[0].backend_id)), ("ro", "rbind"))]
        return [Mount("overlay", "overlay", (*self._index, f"lowerdir={lowers}"))]

    def upperdir(self, key: str) -> Path | None:
        rec = self._get(key)
        if rec.kind != Kind.ACTIVE.value:
            raise FailedPrecondition(f"snapshot {key!r} is {rec.kind}: it has no upper dir")
        return self.fs_dir(rec.backend_id)

    def parent_dirs(self, key: str) -> list[Path]:
        rec = self._get(key)
        return [self.fs_dir(p.backend_id) for p in self._chain(rec)]
