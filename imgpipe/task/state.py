"""Containers on disk: one directory per container under the imgpipe root.

::

    <root>/tasks/<id>/config.json     the OCI runtime spec (the bundle)
    <root>/tasks/<id>/rootfs/         where the rootfs is mounted while it runs
    <root>/tasks/<id>/imgpipe.json    our record: image, snapshot, command, exit code
    <root>/tasks/<id>/log.json        the runtime's log (its errors, JSON lines)
    <root>/tasks/<id>/owner           locked by the process that owns it (see .owner)
    <root>/tasks/<id>/container.log   a detached container's output (see .logfile)
    <root>/tasks/<id>/monitor.err     what a detached container's monitor itself printed
    <root>/runc/                      the runtime's own state (``runc --root``)

The directory is the container's existence: ``mkdir`` claims an id atomically, so two
``imgpipe run --name x`` cannot both win; ``imgpipe rm`` deletes it last. No database
row: a container is a process-and-mount thing, not content, and ``ps`` must work while
another process holds the database's write lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Final

from imgpipe.errors import AlreadyExists, InvalidArgument, MalformedDocument, NotFound

from .relay import DEFAULT_STOP_TIMEOUT

__all__ = [
    "RECORD_FILE",
    "RUNC_DIR",
    "TASKS_DIR",
    "TaskRecord",
    "claim_task_dir",
    "list_records",
    "new_id",
    "read_record",
    "remove_task_dir",
    "task_dir",
    "validate_id",
    "write_record",
]

TASKS_DIR: Final = "tasks"
RUNC_DIR: Final = "runc"
RECORD_FILE: Final = "imgpipe.json"
#: Docker's container-name grammar; also a valid runc id, hostname and snapshot key.
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class TaskRecord:
    """What ``imgpipe ps`` shows of a container and ``imgpipe rm`` needs to remove it.

    A plain class, not a dataclass (~1 ms less on the start-up of run and ps): the fields
    are :data:`_FIELDS`, the record file holds them by name (:meth:`to_json`), and two
    records are equal when their fields are. ``created_at`` defaults to now.
    """

    __slots__ = _FIELDS = (
        "id",
        "image",
        "args",
        "created_at",
        "snapshotter",
        "snapshot_key",
        "remove",
        "pid",
        "exit_code",
        "finished_at",
        "detached",
        "monitor_pid",
        "stop_timeout",
    )

    def __init__(
        self,
        id: str,
        image: str,
        args: list[str],
        *,
        created_at: float | None = None,
        snapshotter: str = "",
        snapshot_key: str = "",
        remove: bool = False,
        pid: int = 0,
        exit_code: int | None = None,
        finished_at: float | None = None,
        detached: bool = False,
        monitor_pid: int = 0,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        self.id, self.image, self.args = id, image, args
        self.created_at: float = time.time() if created_at is None else created_at
        self.snapshotter, self.snapshot_key = snapshotter, snapshot_key
        self.remove, self.pid = remove, pid
        self.exit_code, self.finished_at = exit_code, finished_at
        #: run with ``-d``: a monitor process owns it, its output is in container.log
        self.detached, self.monitor_pid = detached, monitor_pid
        #: ``run --stop-timeout``: what ``imgpipe stop`` waits by default, as docker's
        self.stop_timeout = stop_timeout

    @classmethod
    def from_json(cls, obj: Any) -> TaskRecord:
        try:
            return cls(**obj)
        except TypeError as e:
            raise MalformedDocument(f"container record: {e}") from None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskRecord):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment] # mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"TaskRecord({', '.join(f'{k}={v!r}' for k, v in self.to_json().items())})"


def validate_id(container_id: str) -> str:
    """``container_id`` if it is a valid name (``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most
    128 characters); InvalidArgument otherwise."""
    if not _ID_RE.fullmatch(container_id):
        raise InvalidArgument(
            f"invalid container name {container_id!r}: want [A-Za-z0-9][A-Za-z0-9_.-]*, "
            "at most 128 characters"
        )
    return container_id


def new_id() -> str:
    """A fresh random id (12 hex digits, as Docker shows ids)."""
    return os.urandom(6).hex()  # not secrets: importing it costs start-up time


def task_dir(root: str | os.PathLike[str], container_id: str) -> Path:
    return Path(root) / TASKS_DIR / validate_id(container_id)


def claim_task_dir(root: str | os.PathLike[str], container_id: str) -> Path:
    """Create the container's directory (and ``rootfs/`` in it); AlreadyExists if a
    container of that name exists."""
    path = task_dir(root, container_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise AlreadyExists(
            f"container {container_id!r} exists (imgpipe rm {container_id} removes it)"
        ) from None
    # 0711 as containerd's: the container's non-root user must traverse it.
    (path / "rootfs").mkdir(mode=0o711)
    return path


def write_record(path: Path, rec: TaskRecord) -> None:
    """Write ``rec`` into the container directory ``path`` atomically (rename)."""
    tmp = path / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(rec.to_json(), separators=(",", ":")))
    os.replace(tmp, path / RECORD_FILE)


def read_record(root: str | os.PathLike[str], container_id: str) -> TaskRecord:
    """The record of ``container_id``; NotFound if there is no such container."""
    path = task_dir(root, container_id) / RECORD_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"no container {container_id!r}") from None
    try:
        return TaskRecord.from_json(json.loads(text))
    except ValueError as e:
        raise MalformedDocument(f"container record {path}: {e}") from None


def list_records(root: str | os.PathLike[str]) -> list[TaskRecord]:
    """Every container's record, oldest first. Directories without a (readable) record
    (a run that was claiming its name at that instant) are skipped."""
    base = Path(root) / TASKS_DIR
    out = []
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    for name in names:
        if not _ID_RE.fullmatch(name):
            continue
        try:
            out.append(read_record(root, name))
        except (NotFound, MalformedDocument):
            continue
    return sorted(out, key=lambda r: (r.created_at, r.id))


def remove_task_dir(root: str | os.PathLike[str], container_id: str) -> None:
    """Delete the container directory. The rootfs must be unmounted (it is checked: a
    mounted rootfs is never recursed into). Idempotent."""
    path = task_dir(root, container_id)
    rootfs = path / "rootfs"
    # rmdir first: it fails on a mount point or a non-empty dir instead of deleting
    # through it into the snapshot (or a bind-mounted volume).
    with contextlib.suppress(FileNotFoundError):
        rootfs.rmdir()
    if path.exists():
        shutil.rmtree(path)
