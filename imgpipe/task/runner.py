"""Running a container: :func:`run`, ``ctr run`` without a daemon, as a
:class:`~imgpipe.pipeline.Pipeline` of the stages in :mod:`.stage` (FindOrPull ->
ChooseImage -> PrepareContainer -> MountRootfs -> RunContainer; a given ``rootfs``
starts at PrepareContainer).

The container's cleanup (:class:`~.stage.Container`: runc delete --force, unmount, and
with ``--rm`` the snapshot and the directory) runs whatever happened after the claim: a
runtime that failed, a command missing from the image, an exception, SIGINT/SIGTERM/SIGHUP
to imgpipe. Only a SIGKILL of imgpipe skips it; ``imgpipe ps`` then shows the container
and ``imgpipe rm -f`` removes it.

Signals: the first SIGINT, SIGTERM or SIGHUP imgpipe receives while the container runs
is sent on to the container's init; if it is still alive ``stop_timeout`` seconds later
(an init that ignores the signal, as a shell or ``sleep`` running as PID 1 does), or
when a second signal comes, it gets SIGKILL. Before the container starts, a signal
interrupts the preparation (cleanup included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import state
from .relay import DEFAULT_STOP_TIMEOUT, Relay
from .rootfs import RootfsProvider
from .runc import Runc
from .spec import ContainerSettings
from .task import Task

if TYPE_CHECKING:
    from imgpipe.formats.config import ContainerConfig
    from imgpipe.formats.platform import Platform
    from imgpipe.pipeline import Observer, Root, Stage
    from imgpipe.store import Store
    from imgpipe.transports import TransportOptions


def run(
    image: str,
    args: Sequence[str] = (),
    *,
    settings: ContainerSettings | None = None,
    name: str | None = None,
    remove: bool = False,
    interactive: bool = False,
    snapshotter: str | None = None,
    platform: str | Platform | None = None,
    decrypt_keys: Sequence[str] = (),
    runtime: str | None = None,
    rootfs: RootfsProvider | None = None,
    image_config: ContainerConfig | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
    options: TransportOptions | None = None,
    on_started: Callable[[Task], None] | None = None,
) -> int:
    """Run ``args`` (or the image's command) in a new container of ``image``; return its
    exit status (128+n if a signal n killed it).

    ``image`` is a stored name or anything :func:`imgpipe.pull` takes; it is pulled if
    absent and unpacked into ``snapshotter`` if needed. ``settings`` holds the
    command-line options (env, user, volumes, limits...; its ``args`` are replaced by
    ``args`` when given). ``name`` is the container id (random if None); ``remove``
    (``--rm``) deletes the container and its snapshot afterwards, else ``imgpipe ps``
    keeps listing it. ``interactive`` (``-i``) connects ``stdin`` (else the container
    reads /dev/null). ``stdin``/``stdout``/``stderr`` are fds (ours when None).
    ``rootfs`` replaces the image's snapshot as the root filesystem (with
    ``image_config`` for its Entrypoint/Cmd/Env/User/WorkingDir; the image is then not
    looked up). ``on_started`` is called with the running task.

    Raises NotFound (image), AlreadyExists (name taken), InvalidArgument (settings, no
    command), UserNotFound, CommandNotFound (executable missing in the image),
    RuntimeFailed, Unsupported (no runtime, cannot mount), KeyboardInterrupt when
    interrupted before the container started. Cleanup (runtime state, mounts, and with
    ``remove`` the snapshot) is done in every case.
    """
    # the pipeline and the stages only when running (``imgpipe ps``/``rm`` import the package)
    from imgpipe.pipeline.context import opened_store  # noqa: PLC0415
    from imgpipe.pipeline.pipeline import Pipeline  # noqa: PLC0415

    from .stage import (  # noqa: PLC0415
        ChooseImage,
        FindOrPull,
        MountRootfs,
        PrepareContainer,
        RunContainer,
        RunImage,
    )

    base = settings or ContainerSettings()
    if args:
        base = replace(base, args=tuple(args))
    container_id = state.validate_id(name) if name else state.new_id()
    with opened_store(store, root) as st, Relay(stop_timeout) as relay:
        rt = Runc(Path(st.root) / state.RUNC_DIR, binary=runtime)
        item: Any
        stages: list[Stage[Any, Any]]
        if rootfs is not None:
            if image_config is None:
                from imgpipe.formats.config import ContainerConfig  # noqa: PLC0415

                image_config = ContainerConfig()
            item, stages = RunImage(rootfs, image_config), []
        else:
            item = image
            stages = [
                FindOrPull(platform=platform, options=options),
                ChooseImage(snapshotter=snapshotter, platform=platform, decrypt_keys=decrypt_keys),
            ]
        stages += [
            PrepareContainer(container_id, rt, relay, remove=remove),
            MountRootfs(),
            RunContainer(
                settings=base,
                relay=relay,
                interactive=interactive,
                stdio=(stdin, stdout, stderr),
                on_started=on_started,
            ),
        ]
        code: int = Pipeline(stages).run(item, store=st, observer=observer)
        return code
