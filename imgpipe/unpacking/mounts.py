"""Mounting an image's rootfs on a directory, and taking it down again; the records in
``<root>/mounts/`` say what imgpipe mounted where."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from imgpipe.errors import AlreadyExists, NotFound, Unsupported
from imgpipe.formats.platform import Platform
from imgpipe.pipeline import Context, Pipeline
from imgpipe.pipeline.context import Root, opened_store
from imgpipe.snapshots import Mount, Snapshotter, mount_all, unmount
from imgpipe.store import Store

from .apply import remove_quietly
from .result import DEFAULT_SNAPSHOTTER
from .snapshotters import open_store_snapshotter
from .stages import rootfs_stages

#: ``<root>/mounts/<hash of target>.json``: what :func:`mount` mounted where.
MOUNTS_DIR: Final = "mounts"


def _mount_record(store: Store, target: Path) -> Path:
    h = hashlib.sha256(os.fsencode(target)).hexdigest()[:32]
    return Path(store.root) / MOUNTS_DIR / f"{h}.json"


def _resolve_target(target: str | os.PathLike[str]) -> Path:
    p = Path(os.path.realpath(target))
    if not p.is_dir():
        raise NotFound(f"mount point {target} is not an existing directory")
    return p


@dataclass(frozen=True, kw_only=True)
class MountRootfs:
    """After :class:`~imgpipe.unpacking.stages.PrepareRootfs`: write ``target -> snapshot``
    to the open mount ``record`` and mount the rootfs on ``target`` -> the snapshot key.
    On failure the snapshot is removed again."""

    name = "mount"
    snapshotter: Snapshotter
    key: str
    target: Path
    record: int

    def run(self, item: list[Mount], ctx: Context) -> str:
        try:
            entry = {
                "target": str(self.target),
                "snapshotter": self.snapshotter.name,
                "key": self.key,
            }
            os.write(self.record, json.dumps(entry).encode())
            mount_all(item, self.target)
        except BaseException:
            remove_quietly(self.snapshotter, self.key)
            raise
        return self.key


def mount(
    name: str,
    target: str | os.PathLike[str],
    *,
    read_only: bool = False,
    snapshotter: str | None = DEFAULT_SNAPSHOTTER,
    platform: str | Platform | None = None,
    decrypt_keys: Sequence[str] = (),
    store: Store | None = None,
    root: Root = None,
) -> str:
    """Unpack ``name`` if needed and mount its root filesystem on the directory
    ``target``: read-write (an active snapshot; changes go to the snapshot) or
    ``read_only`` (a view). Returns the snapshot key; :func:`umount` undoes it all.

    AlreadyExists if imgpipe already mounted something there; NotFound if ``target`` is
    not a directory; Unsupported without the privilege to mount; the errors of
    :func:`unpack`.
    """
    tgt = _resolve_target(target)
    if os.geteuid() != 0:
        # before any unpack work: it would be thrown away when mount(2) refuses
        raise Unsupported(
            "mounting needs root (CAP_SYS_ADMIN); `imgpipe unpack REF --export DIR` "
            "writes a plain copy without it"
        )
    key = f"mount-{time.time_ns()}-{secrets.token_hex(3)}"
    with opened_store(store, root) as s:
        rec_path = _mount_record(s, tgt)
        rec_path.parent.mkdir(exist_ok=True, mode=0o700)
        try:
            fd = os.open(rec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise AlreadyExists(f"{tgt} already has an imgpipe mount: umount it first") from None
        try:
            sn = open_store_snapshotter(s, snapshotter)
            stages = rootfs_stages(
                sn,
                key,
                platform=platform,
                decrypt_keys=decrypt_keys,
                read_only=read_only,
                labels={"imgpipe.mount.target": str(tgt)},
            )
            Pipeline([*stages, MountRootfs(snapshotter=sn, key=key, target=tgt, record=fd)]).run(
                name, store=s
            )
        except BaseException:
            os.close(fd)
            rec_path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return key


def mounted(*, store: Store | None = None, root: Root = None) -> list[tuple[Path, str, str]]:
    """What :func:`mount` mounted and :func:`umount` has not undone yet:
    ``(target, snapshotter, key)``, sorted by target."""
    with opened_store(store, root) as s:
        d = Path(s.root) / MOUNTS_DIR
        out: list[tuple[Path, str, str]] = []
        if d.is_dir():
            for f in d.glob("*.json"):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    rec = json.loads(f.read_bytes())
                    out.append((Path(rec["target"]), rec["snapshotter"], rec["key"]))
        return sorted(out)


def umount(
    target: str | os.PathLike[str], *, store: Store | None = None, root: Root = None
) -> None:
    """Unmount what :func:`mount` (or :func:`imgpipe.mount_lazy`) put on ``target`` and
    remove its snapshot (the changes made in a read-write mount go with it).

    NotFound if imgpipe mounted nothing there; FailedPrecondition if the mount is busy
    (nothing is removed then); Unsupported without the privilege to unmount.
    """
    from imgpipe.lazy.daemon import umount_lazy  # noqa: PLC0415 (FUSE code: only here)

    tgt = Path(os.path.realpath(target))
    with opened_store(store, root) as s:
        if umount_lazy(tgt, store=s):  # a `mount --lazy`: its owner takes it down
            return
        rec_path = _mount_record(s, tgt)
        try:
            rec = json.loads(rec_path.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"imgpipe mounted nothing on {tgt}") from None
        except ValueError:
            rec = {}  # a crash between create and write: nothing was mounted
        unmount(tgt)
        if rec:
            sn = open_store_snapshotter(s, rec["snapshotter"])
            remove_quietly(sn, rec["key"])
        rec_path.unlink(missing_ok=True)
