"""The task stage: run a container from an image with runc, as ``ctr run`` does.

* :mod:`.spec` — the OCI runtime spec: containerd's defaults, the image config's
  Entrypoint/Cmd/Env/WorkingDir/User, the command line's options;
* :mod:`.user` — USER resolved from the rootfs's /etc/passwd and /etc/group, read
  inside the root with size and id-range limits (CVE-2024-40635);
* :mod:`.runc` — the runtime binary: create/start/kill/delete/state, ``run``;
* :mod:`.task` — :class:`Task` (one container: create, start, wait, kill, delete);
* :mod:`.rootfs` — where the rootfs comes from (:class:`ImageRootfs`, :class:`DirectoryRootfs`);
* :mod:`.relay` — signals forwarded to the container, the terminal relay;
* :mod:`.stage` — the stages of ``run`` (FindOrPull, ChooseImage, PrepareContainer,
  MountRootfs, RunContainer) and the :class:`~.stage.Container` they clean up;
* :mod:`.runner` — :func:`run` and :func:`run_detached` (``-d``), pipelines of those
  stages;
* :mod:`.monitor` — the process that owns a detached container (imgpipe's shim);
* :mod:`.owner` — the lock its owner holds, which ``wait``/``stop``/``rm -f`` wait on;
* :mod:`.logfile` — a detached container's output (``imgpipe logs``);
* :mod:`.control` — :func:`wait_container`, :func:`stop_container`,
  :func:`container_logs`;
* :mod:`.remove` — :func:`remove_container` (``imgpipe rm``);
* :mod:`.state` — containers on disk under ``<root>/tasks/<id>/`` for ``ps``/``rm``.

Importing this package imports nothing: its names load their modules on first use, and
the snapshotters, the store and the pipeline are imported by the calls that need them,
because start-up time is part of every ``imgpipe run``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .control import container_logs, stop_container, wait_container
    from .relay import DEFAULT_STOP_TIMEOUT
    from .remove import remove_container
    from .rootfs import DirectoryRootfs, ImageRootfs, RootfsProvider
    from .runc import (
        DEFAULT_RUNTIME,
        CommandNotExecutable,
        CommandNotFound,
        Runc,
        RuntimeFailed,
    )
    from .runner import run, run_detached
    from .spec import ContainerSettings, Volume, build_spec, default_spec, parse_volume
    from .state import TaskRecord, list_records
    from .task import Task
    from .user import ResolvedUser, UserNotFound, resolve_user

# Public name -> its module, imported on first use (PEP 562): `imgpipe run` loads the
# run's modules, not wait/stop/logs/rm's (and `ps` not the runner's).
_WHERE = {
    "container_logs": "control",
    "stop_container": "control",
    "wait_container": "control",
    "DEFAULT_STOP_TIMEOUT": "relay",
    "remove_container": "remove",
    "DirectoryRootfs": "rootfs",
    "ImageRootfs": "rootfs",
    "RootfsProvider": "rootfs",
    "DEFAULT_RUNTIME": "runc",
    "CommandNotExecutable": "runc",
    "CommandNotFound": "runc",
    "Runc": "runc",
    "RuntimeFailed": "runc",
    "run": "runner",
    "run_detached": "runner",
    "ContainerSettings": "spec",
    "Volume": "spec",
    "build_spec": "spec",
    "default_spec": "spec",
    "parse_volume": "spec",
    "TaskRecord": "state",
    "list_records": "state",
    "Task": "task",
    "ResolvedUser": "user",
    "UserNotFound": "user",
    "resolve_user": "user",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_RUNTIME",
    "DEFAULT_STOP_TIMEOUT",
    "CommandNotExecutable",
    "CommandNotFound",
    "ContainerSettings",
    "DirectoryRootfs",
    "ImageRootfs",
    "ResolvedUser",
    "RootfsProvider",
    "Runc",
    "RuntimeFailed",
    "Task",
    "TaskRecord",
    "UserNotFound",
    "Volume",
    "build_spec",
    "container_logs",
    "default_spec",
    "list_records",
    "parse_volume",
    "remove_container",
    "resolve_user",
    "run",
    "run_detached",
    "stop_container",
    "wait_container",
]
