"""``imgpipe rm``: a container's runtime state, rootfs mount, snapshot and directory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from imgpipe.errors import FailedPrecondition, NotFound

from . import state
from .runc import Runc

if TYPE_CHECKING:
    from imgpipe.pipeline import Root
    from imgpipe.store import Store


def remove_container(
    container_id: str,
    *,
    force: bool = False,
    runtime: str | None = None,
    store: Store | None = None,
    root: Root = None,
) -> None:
    """``imgpipe rm``: delete a container that is not running (``force``: kill it
    first), unmount its rootfs, remove its snapshot and directory.

    NotFound if there is no such container; FailedPrecondition if it runs and not
    ``force``.
    """
    from imgpipe.pipeline.context import opened_store  # noqa: PLC0415
    from imgpipe.snapshots import open_snapshotter, unmount  # noqa: PLC0415

    with opened_store(store, root) as st:
        imgroot = Path(st.root)
        rec = state.read_record(imgroot, container_id)
        rt = Runc(imgroot / state.RUNC_DIR, binary=runtime)
        bundle = state.task_dir(imgroot, container_id)
        status = str((rt.state(container_id) or {}).get("status", ""))
        if status in ("running", "paused") and not force:
            raise FailedPrecondition(f"container {container_id} is {status} (rm -f kills it)")
        rt.delete(container_id, force=True, log=bundle / "log.json")
        unmount(bundle / "rootfs")
        if rec.snapshotter:
            sn = open_snapshotter(rec.snapshotter, imgroot / "snapshots" / rec.snapshotter, st.db)
            with contextlib.suppress(NotFound):
                sn.remove(rec.snapshot_key or container_id)
        state.remove_task_dir(imgroot, container_id)
