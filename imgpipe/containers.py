"""The containers ``imgpipe run`` left (not removed), with what the runtime says of each:
what ``imgpipe ps`` lists.

The records on disk (:mod:`imgpipe.task.state`) say what was run; the runtime's own
state says whether it still runs. Without a runtime on this machine the records alone are
listed (then nothing is running).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from imgpipe.task.state import TaskRecord

__all__ = ["ContainerStatus", "list_containers"]

_LIVE_STATES = ("running", "created", "paused")


# A NamedTuple, not a frozen dataclass: ~1 ms less on the start-up of `imgpipe ps`, with
# the same equality, hash, repr and immutability.
class ContainerStatus(NamedTuple):
    """One container: its record, its status as ``ps`` shows it, its pid (0: none)."""

    record: TaskRecord
    status: str
    pid: int
    #: run --lazy: why its FUSE server is gone (its reads fail with EIO), else None
    lazy_failure: str | None = None

    @property
    def running(self) -> bool:
        """Running, created or paused in the runtime: what ``ps`` lists without ``-a``
        (a record saying "created" with no runtime state is a run that never started)."""
        return self.pid > 0 and self.status in _LIVE_STATES


def _status(rec: TaskRecord, live: dict[str, Any] | None) -> str:
    if live is not None and live.get("status") in _LIVE_STATES:
        return str(live["status"])
    if rec.exit_code is not None:
        return f"exited ({rec.exit_code})"
    return "stopped" if rec.pid else "created"


def list_containers(
    *, runtime: str | None = None, root: str | os.PathLike[str] | None = None
) -> list[ContainerStatus]:
    """Every container not removed, oldest first, with its status: ``running``,
    ``created`` or ``paused`` as the runtime (``runtime``, default runc on PATH) says,
    else ``exited (N)``, ``stopped`` or ``created`` from the record."""
    from imgpipe.errors import ImgpipeError  # noqa: PLC0415 (start-up: imported on use)
    from imgpipe.store import default_root  # noqa: PLC0415
    from imgpipe.task import Runc, list_records  # noqa: PLC0415
    from imgpipe.task.state import RUNC_DIR  # noqa: PLC0415

    base = root or default_root()
    records = list_records(base)
    try:
        live = {c["id"]: c for c in Runc(Path(base) / RUNC_DIR, binary=runtime).list()}
    except ImgpipeError:
        live = {}  # no runtime here: list what the records say (nothing is running)
    return [
        ContainerStatus(
            r,
            _status(r, live.get(r.id)),
            int(live.get(r.id, {}).get("pid", 0)),
            _lazy_failure(Path(base), r.id),
        )
        for r in records
    ]


def _lazy_failure(base: Path, container_id: str) -> str | None:
    bundle = base / "tasks" / container_id
    if not (bundle / "lazy").is_dir():
        return None  # not lazy: nothing more to import
    from imgpipe.task.lazyroot import lazy_failure  # noqa: PLC0415

    return lazy_failure(bundle)
