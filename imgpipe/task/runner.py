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

    from .lazyroot import LazyRun


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
    lazy: LazyRun | None = None,
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
    looked up). ``on_started`` is called with the running task. ``lazy`` (``run
    --lazy``): the image is pulled lazily and its layers mounted over FUSE
    (:mod:`.lazyroot`).

    Raises NotFound (image), AlreadyExists (name taken), InvalidArgument (settings, no
    command), UserNotFound, CommandNotFound (executable missing in the image),
    RuntimeFailed, Unsupported (no runtime, cannot mount), KeyboardInterrupt when
    interrupted before the container started. Cleanup (runtime state, mounts, and with
    ``remove`` the snapshot) is done in every case.
    """
    base = settings or ContainerSettings()
    if args:
        base = base.replace(args=tuple(args))
    from .stage import RunContainer  # noqa: PLC0415 (ps and rm import the package)

    code: int = _run_pipeline(
        image,
        lambda relay: RunContainer(
            settings=base,
            relay=relay,
            interactive=interactive,
            stdio=(stdin, stdout, stderr),
            on_started=on_started,
        ),
        name=name,
        remove=remove,
        runtime=runtime,
        stop_timeout=stop_timeout,
        store=store,
        root=root,
        observer=observer,
        rootfs=rootfs,
        image_config=image_config,
        platform=platform,
        options=options,
        snapshotter=snapshotter,
        decrypt_keys=decrypt_keys,
        lazy=lazy,
    )
    return code


def run_detached(
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
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
    options: TransportOptions | None = None,
    lazy: LazyRun | None = None,
) -> str:
    """``run -d``: prepare the container as :func:`run` does (same arguments, same
    errors), start it under a monitor process of its own (:mod:`.monitor`) and return
    its id as soon as it runs. The monitor keeps its output in the container's log
    (``imgpipe logs``), records its exit status (``imgpipe wait``, ``ps``) and tears it
    down when it ends (with ``remove``, its snapshot and directory too); it outlives
    the caller. ``interactive`` keeps the container's stdin open (nothing writes to
    it); ``settings.terminal`` gives it a pty whose output is logged."""
    base = settings or ContainerSettings()
    if args:
        base = base.replace(args=tuple(args))
    from .stage import DetachContainer  # noqa: PLC0415

    container_id: str = _run_pipeline(
        image,
        lambda relay: DetachContainer(settings=base, interactive=interactive),
        name=name,
        remove=remove,
        runtime=runtime,
        stop_timeout=stop_timeout,
        store=store,
        root=root,
        observer=observer,
        rootfs=rootfs,
        image_config=image_config,
        platform=platform,
        options=options,
        snapshotter=snapshotter,
        decrypt_keys=decrypt_keys,
        lazy=lazy,
    )
    return container_id


def _run_pipeline(
    ref: str,
    last: Callable[[Relay], Stage[Any, Any]],
    *,
    name: str | None,
    remove: bool,
    runtime: str | None,
    stop_timeout: float,
    store: Store | None,
    root: Root,
    observer: Observer | None,
    **image: Any,
) -> Any:
    """The one pipeline of run and run -d: the stages of the image ``ref``
    (:func:`_image_stages`, given the ``image`` keywords), the container's claim and
    mount, then ``last(relay)``; its result."""
    # the pipeline only when running (``imgpipe ps``/``rm`` import the package)
    from imgpipe.pipeline.context import opened_store  # noqa: PLC0415
    from imgpipe.pipeline.pipeline import Pipeline  # noqa: PLC0415

    with opened_store(store, root) as st, Relay(stop_timeout) as relay:
        rt = Runc(Path(st.root) / state.RUNC_DIR, binary=runtime)
        item, stages = _image_stages(ref, **image)
        stages += _container_stages(name, rt, relay, remove)
        stages.append(last(relay))
        return Pipeline(stages).run(item, store=st, observer=observer)


def _image_stages(
    image: str,
    *,
    rootfs: RootfsProvider | None,
    image_config: ContainerConfig | None,
    platform: str | Platform | None,
    options: TransportOptions | None,
    snapshotter: str | None,
    decrypt_keys: Sequence[str],
    lazy: LazyRun | None = None,
) -> tuple[Any, list[Stage[Any, Any]]]:
    """The first item and the stages up to the rootfs: the image's (FindOrPull,
    ChooseImage), or none for a given ``rootfs``."""
    from .stage import ChooseImage, FindOrPull, RunImage  # noqa: PLC0415

    if rootfs is not None:
        if image_config is None:
            from imgpipe.formats.config import ContainerConfig  # noqa: PLC0415

            image_config = ContainerConfig()
        return RunImage(rootfs, image_config), []
    if lazy is not None:
        from .lazyroot import ChooseLazy, FindOrPullLazy  # noqa: PLC0415

        return image, [
            FindOrPullLazy(lazy, platform=platform, options=options),
            ChooseLazy(
                lazy,
                snapshotter=snapshotter,
                platform=platform,
                decrypt_keys=decrypt_keys,
                options=options,
            ),
        ]
    return image, [
        FindOrPull(platform=platform, options=options),
        ChooseImage(snapshotter=snapshotter, platform=platform, decrypt_keys=decrypt_keys),
    ]


def _container_stages(
    name: str | None, rt: Runc, relay: Relay, remove: bool
) -> list[Stage[Any, Any]]:
    from .stage import MountRootfs, PrepareContainer  # noqa: PLC0415

    container_id = state.validate_id(name) if name else state.new_id()
    return [PrepareContainer(container_id, rt, relay, remove=remove), MountRootfs()]
