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
* :mod:`.runner` — :func:`run`, the pipeline of those stages;
* :mod:`.remove` — :func:`remove_container` (``imgpipe rm``);
* :mod:`.state` — containers on disk under ``<root>/tasks/<id>/`` for ``ps``/``rm``.

The names are re-exported lazily (PEP 562), and the modules import the snapshotters,
the store and the pipeline in the calls that need them: start-up time is part of every
``imgpipe run``, ``ps`` and ``rm``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from .runner import run
    from .spec import ContainerSettings, Volume, build_spec, default_spec, parse_volume
    from .state import TaskRecord, list_records
    from .task import Task
    from .user import ResolvedUser, UserNotFound, resolve_user

#: Public name -> the module of this package that defines it.
_WHERE = {
    "DEFAULT_STOP_TIMEOUT": "relay",
    "remove_container": "remove",
    **dict.fromkeys(("DirectoryRootfs", "ImageRootfs", "RootfsProvider"), "rootfs"),
    **dict.fromkeys(
        ("DEFAULT_RUNTIME", "CommandNotExecutable", "CommandNotFound", "Runc", "RuntimeFailed"),
        "runc",
    ),
    "run": "runner",
    **dict.fromkeys(
        ("ContainerSettings", "Volume", "build_spec", "default_spec", "parse_volume"), "spec"
    ),
    **dict.fromkeys(("TaskRecord", "list_records"), "state"),
    "Task": "task",
    **dict.fromkeys(("ResolvedUser", "UserNotFound", "resolve_user"), "user"),
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
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
    "default_spec",
    "list_records",
    "parse_volume",
    "remove_container",
    "resolve_user",
    "run",
]
