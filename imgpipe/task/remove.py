"""``imgpipe rm``: a container's runtime state, rootfs mount, snapshot and directory;
and :func:`teardown`, the same steps for the monitor of a detached container."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from imgpipe.errors import FailedPrecondition, NotFound

from . import state
from .owner import owner_busy, wait_owner
from .runc import Runc

if TYPE_CHECKING:
    from imgpipe.pipeline import Root
    from imgpipe.store import Store

_LIVE: tuple[str, ...] = ("running", "paused")


def remove_container(
    container_id: str,
    *,
    force: bool = False,
    runtime: str | None = None,
    store: Store | None = None,
    root: Root = None,
) -> None:
    """``imgpipe rm``: delete a container that is not running (``force``: kill it
    first, and wait for its owner, the ``run`` or monitor waiting for it, to finish),
    unmount its rootfs, remove its snapshot and directory.

    NotFound if there is no such container; FailedPrecondition if it runs and not
    ``force``, or if another imgpipe is still setting it up or tearing it down.
    """
    from imgpipe.pipeline.context import opened_store  # noqa: PLC0415

    with opened_store(store, root) as st:
        imgroot = Path(st.root)
        rec = state.read_record(imgroot, container_id)
        rt = Runc(imgroot / state.RUNC_DIR, binary=runtime)
        bundle = state.task_dir(imgroot, container_id)
        status = str((rt.state(container_id) or {}).get("status", ""))
        if status in _LIVE and not force:
            raise FailedPrecondition(f"container {container_id} is {status} (rm -f kills it)")
        if owner_busy(bundle):
            if not force:
                raise FailedPrecondition(
                    f"container {container_id} is being set up or torn down by another "
                    "imgpipe (imgpipe wait it, or rm -f)"
                )
            # Killed, then left to its owner to reap and record before we remove it,
            # so the two never tear the same mounts and files down at once.
            rt.kill(container_id, signal.SIGKILL, all_processes=True, log=bundle / "log.json")
            with contextlib.suppress(FailedPrecondition):
                wait_owner(bundle)
            if not bundle.exists():
                return  # its owner removed it (--rm)
        teardown(imgroot, rec, rt, remove=True, store=st)


def teardown(
    imgroot: Path, rec: state.TaskRecord, rt: Runc, *, remove: bool, store: Store | None = None
) -> None:
    """Delete the runtime state (killing what runs), unmount the rootfs and, with
    ``remove``, remove the snapshot and the directory. Idempotent; the store is opened
    only when a snapshot is to be removed."""
    from imgpipe.snapshots import unmount  # noqa: PLC0415

    bundle = state.task_dir(imgroot, rec.id)
    rt.delete(rec.id, force=True, log=bundle / "log.json")
    unmount(bundle / "rootfs")
    if (bundle / "lazy").is_dir():  # run --lazy: its FUSE server and mount
        from .lazyroot import stop_lazy  # noqa: PLC0415

        stop_lazy(bundle)
    if not remove:
        return
    if rec.snapshotter:
        from imgpipe.pipeline.context import opened_store  # noqa: PLC0415
        from imgpipe.snapshots import open_snapshotter  # noqa: PLC0415

        with opened_store(store, imgroot) as st:
            base = imgroot / "snapshots" / rec.snapshotter
            sn = open_snapshotter(rec.snapshotter, base, st.db)
            with contextlib.suppress(NotFound):
                sn.remove(rec.snapshot_key or rec.id)
    state.remove_task_dir(imgroot, rec.id)
