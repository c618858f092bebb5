"""The stages of ``run``, each with one typed input and output::

    FindOrPull        str         -> ImageRecord   the stored image, else pulled (the pull's
                                                   stages, in this run's context)
    ChooseImage       ImageRecord -> RunImage      the one manifest (unpack's rule), its config
    PrepareContainer  RunImage    -> Rootfs        claim <root>/tasks/<id>/; the rootfs as mounts
                                                   (for an image: Unpack if not yet unpacked,
                                                   then the active snapshot on its top layer)
    MountRootfs       Rootfs      -> Rootfs        mounted on <id>/rootfs
    RunContainer      Rootfs      -> int           user, spec, runc create/start, wait
    DetachContainer   Rootfs      -> str           (run -d) user, spec, then a monitor
                                                   process creates, starts and owns it

From :class:`PrepareContainer` on, the :class:`Container` (what has been made so far) is
closed with the run's context: whatever happens after the claim, its cleanup runs (runc
delete, unmount, and with ``--rm`` or when nothing was prepared, the snapshot and the
directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from imgpipe.errors import NotFound
from imgpipe.pipeline.context import Context, Stage

from . import state
from .owner import Owner
from .relay import Pump, Relay, relay_terminal, wait_task, write_quietly
from .rootfs import ImageRootfs, RootfsProvider
from .spec import ContainerSettings, build_spec
from .task import Task
from .user import resolve_user

if TYPE_CHECKING:
    from imgpipe.formats.config import ContainerConfig
    from imgpipe.formats.platform import Platform
    from imgpipe.metadata import ImageRecord
    from imgpipe.snapshots import Mount
    from imgpipe.transports import TransportOptions

    from .runc import Runc

__all__ = [
    "ChooseImage",
    "Container",
    "DetachContainer",
    "FindOrPull",
    "MountRootfs",
    "PrepareContainer",
    "Rootfs",
    "RunContainer",
    "RunImage",
]


# Plain classes, not dataclasses: each dataclass costs ~0.4 ms to define, and this
# module is imported by every `imgpipe run`.


class RunImage:
    """What a container runs: where its root filesystem comes from, and the config
    (Entrypoint, Cmd, Env, User, WorkingDir) it starts with."""

    __slots__ = ("config", "rootfs")

    def __init__(self, rootfs: RootfsProvider, config: ContainerConfig) -> None:
        self.rootfs, self.config = rootfs, config


class Rootfs:
    """A claimed container with its root filesystem prepared: ``mounts`` show it."""

    __slots__ = ("config", "container", "mounts")

    def __init__(
        self, container: Container, mounts: Sequence[Mount], config: ContainerConfig
    ) -> None:
        self.container, self.mounts, self.config = container, mounts, config


class FindOrPull(Stage[str, "ImageRecord"]):
    """The stored image ``item``, else pulled first (a name not in the store, or a
    transport string such as ``oci:DIR:TAG``), as ``ctr run`` runs the stored copy of a
    registry reference. The pull is :meth:`Pipeline.pull` run in this run's context
    (:meth:`~imgpipe.pipeline.Pipeline.run_in`): one lease, one cancel."""

    name = "find-or-pull"

    def __init__(
        self, *, platform: str | Platform | None = None, options: TransportOptions | None = None
    ) -> None:
        self.platform, self.options = platform, options

    def run(self, item: str, ctx: Context) -> ImageRecord:
        from imgpipe.formats.reference import parse_transport  # noqa: PLC0415

        ref = parse_transport(item)
        if ref.transport == "docker" and ref.reference is not None:
            try:
                found = ctx.store.db.get_image(str(ref.reference))
            except NotFound:
                pass
            else:
                if "org.imgpipe.lazy.source" not in found.labels:
                    return found
                from imgpipe.lazy.pulling import complete_lazy  # noqa: PLC0415 (lazily pulled)
                from imgpipe.unpacking.target import as_platform  # noqa: PLC0415

                plat = as_platform(self.platform)
                return complete_lazy(found, ctx, platform=plat, options=self.options)
        # only when pulling: the transports and the scheduler cost start-up
        from imgpipe.pipeline.pipeline import Pipeline  # noqa: PLC0415
        from imgpipe.unpacking.target import as_platform  # noqa: PLC0415

        pull = Pipeline.pull(platform=as_platform(self.platform), options=self.options)
        rec: ImageRecord = pull.run_in(ref, ctx)
        return rec


class ChooseImage(Stage["ImageRecord", RunImage]):
    """The manifest of the stored image a container of it runs, by unpack's rule
    (:func:`imgpipe.unpacking.target.choose`), so the config and the rootfs come from
    one manifest; its rootfs an :class:`ImageRootfs` in ``snapshotter``."""

    name = "choose-image"

    def __init__(
        self,
        *,
        snapshotter: str | None = None,
        platform: str | Platform | None = None,
        decrypt_keys: Sequence[str] = (),
    ) -> None:
        self.snapshotter, self.platform, self.decrypt_keys = snapshotter, platform, decrypt_keys

    def run(self, item: ImageRecord, ctx: Context) -> RunImage:
        from imgpipe.unpacking.target import as_platform, stored_target  # noqa: PLC0415

        target = stored_target(ctx.store, item, as_platform(self.platform))
        rootfs = ImageRootfs(
            ctx.store,
            target,
            snapshotter=self.snapshotter,
            platform=self.platform,
            decrypt_keys=self.decrypt_keys,
            context=ctx,
        )
        return RunImage(rootfs, target.model.config().config)


class PrepareContainer(Stage[RunImage, Rootfs]):
    """Claim the container ``id`` (its directory; AlreadyExists if taken), then the
    rootfs's mounts. The :class:`Container` is closed with the run's context from the
    claim on, so its cleanup runs whatever happens next."""

    name = "prepare-container"

    def __init__(self, container_id: str, runtime: Runc, relay: Relay, *, remove: bool) -> None:
        self.id, self.runtime, self.relay, self.remove = container_id, runtime, relay, remove

    def run(self, item: RunImage, ctx: Context) -> Rootfs:
        imgroot = Path(ctx.store.root)
        bundle = state.claim_task_dir(imgroot, self.id)
        container = Container(
            self.id,
            imgroot,
            bundle,
            runtime=self.runtime,
            provider=item.rootfs,
            relay=self.relay,
            remove=self.remove,
        )
        ctx.resources.push(container.close)
        container.owner = Owner.acquire(bundle)  # let go by close, after the cleanup
        mounts = item.rootfs.prepare(self.id)
        container.prepared = True
        rec = container.record
        snapshotter, rec.image = item.rootfs.record()
        rec.snapshotter, rec.snapshot_key = snapshotter, self.id if snapshotter else ""
        return Rootfs(container, mounts, item.config)


class MountRootfs(Stage[Rootfs, Rootfs]):
    """Mount the container's rootfs on ``<bundle>/rootfs``."""

    name = "mount-rootfs"

    def run(self, item: Rootfs, ctx: Context) -> Rootfs:
        from imgpipe.snapshots import mount_all  # noqa: PLC0415 (lean run path)

        mount_all(item.mounts, item.container.bundle / "rootfs")
        item.container.mounted = True
        return item


class RunContainer(Stage[Rootfs, int]):
    """The task: USER from the mounted rootfs, the runtime spec, ``runc create`` and
    ``start``, then the wait (signals forwarded by ``relay``) -> the exit status
    (128+n if a signal n killed it).

    ``interactive`` connects ``stdio[0]`` (else the container reads /dev/null); fds
    None are ours. ``on_started`` is called with the running task.
    """

    name = "run-container"

    def __init__(
        self,
        *,
        settings: ContainerSettings,
        relay: Relay,
        interactive: bool = False,
        stdio: tuple[int | None, int | None, int | None] = (None, None, None),
        on_started: Callable[[Task], None] | None = None,
    ) -> None:
        self.settings, self.relay, self.interactive = settings, relay, interactive
        self.stdio, self.on_started = stdio, on_started

    def run(self, item: Rootfs, ctx: Context) -> int:
        c = item.container
        write_bundle(item, self.settings)
        stdin, stdout, stderr = self.stdio
        devnull = -1
        if not self.interactive:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            stdin = devnull
        pump = Pump()
        ctx.resources.callback(pump.close_all)  # whatever fails from here on
        err_w = -1
        if not self.settings.terminal:
            # The container's stderr is runc create's own, where runc also prints the
            # error it logs: through a pipe of ours that line is dropped when create
            # fails (the error is read from runc's log instead, and said once).
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pump.add(err_r, write_quietly(stderr if stderr is not None else 2))
        try:
            c.task = Task.create(
                c.id,
                c.bundle,
                c.runtime,
                terminal=self.settings.terminal,
                stdin=stdin,
                stdout=stdout,
                stderr=err_w if err_w >= 0 else stderr,
            )
        finally:
            for fd in (devnull, err_w):
                if fd >= 0:
                    os.close(fd)
        self.relay.pid = c.record.pid = c.task.pid
        c.task.start()
        if self.on_started is not None:
            self.on_started(c.task)
        if self.settings.terminal:
            c.code = relay_terminal(
                c.task,
                self.relay,
                interactive=self.interactive,
                stdin=stdin if stdin is not None else sys.stdin.fileno(),
                stdout=stdout if stdout is not None else sys.stdout.fileno(),
            )
        else:
            c.code = wait_task(c.task, self.relay, pump)
        return c.code


def write_bundle(item: Rootfs, settings: ContainerSettings, *, detached: bool = False) -> None:
    """USER resolved in the mounted rootfs, the runtime spec in ``config.json``, the
    record (with the command the spec runs)."""
    c = item.container
    user = resolve_user(c.bundle / "rootfs", settings.user or item.config.user)
    spec = build_spec(c.id, item.config, settings, user)
    c.record.args = list(spec["process"]["args"])
    c.record.detached = detached
    c.record.stop_timeout = c.relay.stop_timeout
    state.write_record(c.bundle, c.record)
    (c.bundle / "config.json").write_text(json.dumps(spec))


class DetachContainer(Stage[Rootfs, str]):
    """``run -d``: the bundle as :class:`RunContainer` writes it, then the container
    handed to a monitor process of its own (:mod:`.monitor`) that creates, starts,
    logs, reaps and tears it down -> the container's id once it runs. If the monitor
    could not start it, the run's cleanup is a foreground run's."""

    name = "detach-container"

    def __init__(self, *, settings: ContainerSettings, interactive: bool = False) -> None:
        self.settings, self.interactive = settings, interactive

    def run(self, item: Rootfs, ctx: Context) -> str:
        from .monitor import spawn_monitor  # noqa: PLC0415 (only -d)

        c = item.container
        write_bundle(item, self.settings, detached=True)
        assert c.owner is not None
        fuse_fd = -1
        if (c.bundle / "lazy").is_dir():  # run -d --lazy: the monitor owns the mount
            from .lazyroot import lazy_fd  # noqa: PLC0415

            fuse_fd = lazy_fd(c.bundle)
        c.record.pid = spawn_monitor(
            c.bundle,
            c.runtime,
            c.owner,
            remove=c.remove,
            terminal=self.settings.terminal,
            interactive=self.interactive,
            stop_timeout=c.relay.stop_timeout,
            lazy_fd=fuse_fd,
        )
        c.handed_off = True  # the monitor owns it now: our cleanup must not touch it
        return c.id


class Container:
    """What a run has made of the container ``id`` (in ``bundle``, under the store's
    ``imgroot``) so far, and :meth:`close` to undo it."""

    def __init__(
        self,
        container_id: str,
        imgroot: Path,
        bundle: Path,
        *,
        runtime: Runc,
        provider: RootfsProvider,
        relay: Relay,
        remove: bool,
    ) -> None:
        self.id, self.imgroot, self.bundle, self.runtime = container_id, imgroot, bundle, runtime
        self.provider, self.relay, self.remove = provider, relay, remove
        self.task: Task | None = None
        self.owner: Owner | None = None
        #: a monitor took the container over (run -d): nothing to clean up here
        self.handed_off = False
        self.prepared = self.mounted = False
        self.code: int | None = None
        self.record = state.TaskRecord(id=container_id, image="", args=[], remove=remove)

    def close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """The exit of the run's context: :meth:`cleanup`, then the owner lock let go
        (waiters wake to a finished container); never swallows an error."""
        try:
            self.cleanup(failing=exc_type is not None)
        finally:
            if self.owner is not None:
                self.owner.close()
        return False

    def cleanup(self, *, failing: bool) -> None:
        """Undo everything, each step even if an earlier one failed; the first error is
        raised at the end unless another one is already on its way (``failing``)."""
        from imgpipe.snapshots import unmount  # noqa: PLC0415

        self.relay.done = True  # a signal now must not cut the cleanup short
        if self.handed_off:
            return
        if self.code is not None and self.owner is not None:
            self.owner.set_exit(self.code)  # read by waiters once the owner lets go
        steps: list[Callable[[], object]] = [
            lambda: self.runtime.delete(self.id, force=True, log=self.bundle / "log.json"),
        ]
        console = self.task.console if self.task is not None else None
        if console is not None:
            steps.append(lambda: os.close(console))
        # Judged from the system, not only from our flags: a signal between a step and its
        # flag must not leave a mount or a snapshot behind.
        if self.mounted or os.path.ismount(self.bundle / "rootfs"):
            steps.append(lambda: unmount(self.bundle / "rootfs"))
        if (self.bundle / "lazy").is_dir():  # run --lazy: its FUSE server, once unmounted
            from .lazyroot import stop_lazy  # noqa: PLC0415

            steps.append(lambda: stop_lazy(self.bundle))
        if self.remove or not self.prepared:
            # No rootfs means no container to keep (as docker and ctr leave nothing when
            # image setup fails); release is idempotent when nothing was prepared.
            steps.append(lambda: self.provider.release(self.id))
            steps.append(lambda: state.remove_task_dir(self.imgroot, self.id))
        else:
            steps.append(self._finish_record)
        errors: list[Exception] = []
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        if errors and not failing:
            raise errors[0]

    def _finish_record(self) -> None:
        if not self.bundle.exists():
            return  # `imgpipe rm -f` removed the container while it ran
        self.record.exit_code = self.code
        self.record.finished_at = time.time()
        with contextlib.suppress(FileNotFoundError):  # the same, a moment later
            state.write_record(self.bundle, self.record)
