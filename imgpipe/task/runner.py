"""Running a container: :func:`run`.

``run`` is ``ctr run`` without a daemon::

    image in the store? else pull  ->  container dir <root>/tasks/<id>/ (claims the name)
    -> rootfs: active snapshot on the image's top layer (unpacked first if needed)
    -> mount it on <id>/rootfs  ->  user from the rootfs's /etc/passwd, /etc/group
    -> config.json  ->  runc create / start  ->  wait (signals forwarded)
    finally: runc delete --force, unmount, and with --rm: remove snapshot and dir

The cleanup runs whatever happened before it: a runtime that failed, a command missing
from the image, an exception, SIGINT/SIGTERM/SIGHUP to imgpipe. Only a SIGKILL of imgpipe
skips it; ``imgpipe ps`` then shows the container and ``imgpipe rm -f`` removes it.

Signals: the first SIGINT, SIGTERM or SIGHUP imgpipe receives while the container runs
is sent on to the container's init; if it is still alive ``stop_timeout`` seconds later
(an init that ignores the signal, as a shell or ``sleep`` running as PID 1 does), or
when a second signal comes, it gets SIGKILL. Before the container starts, a signal
interrupts the preparation (cleanup included).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import state
from .images import find_image, run_target
from .relay import DEFAULT_STOP_TIMEOUT, Relay, relay_terminal, wait_task
from .rootfs import ImageRootfs, RootfsProvider
from .runc import Runc
from .spec import ContainerSettings, build_spec
from .task import Task
from .user import resolve_user

if TYPE_CHECKING:
    from imgpipe.formats.config import ContainerConfig
    from imgpipe.formats.platform import Platform
    from imgpipe.pipeline import Observer
    from imgpipe.store import Store
    from imgpipe.transports import TransportOptions

Root = str | os.PathLike[str] | None


def open_store(store: Store | None, root: Root) -> contextlib.AbstractContextManager[Store]:
    if store is not None:
        return contextlib.nullcontext(store)
    from imgpipe.store import Store  # noqa: PLC0415

    return Store(root)


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
    base = settings or ContainerSettings()
    if args:
        base = replace(base, args=tuple(args))
    container_id = state.validate_id(name) if name else state.new_id()
    with open_store(store, root) as st, Relay(stop_timeout) as relay:
        imgroot = Path(st.root)
        rt = Runc(imgroot / state.RUNC_DIR, binary=runtime)
        provider: RootfsProvider
        if rootfs is not None:
            provider = rootfs
            config = image_config
            if config is None:
                from imgpipe.formats.config import ContainerConfig  # noqa: PLC0415

                config = ContainerConfig()
        else:
            record = find_image(st, image, platform=platform, observer=observer, options=options)
            target = run_target(st, record, platform)
            provider = ImageRootfs(
                st, target, snapshotter=snapshotter, platform=platform, decrypt_keys=decrypt_keys
            )
            config = target.model.config().config
        bundle = state.claim_task_dir(imgroot, container_id)
        job = _Run(
            id=container_id,
            bundle=bundle,
            imgroot=imgroot,
            runtime=rt,
            provider=provider,
            config=config,
            settings=base,
            relay=relay,
            remove=remove,
            interactive=interactive,
            stdio=(stdin, stdout, stderr),
        )
        try:
            return job.execute(on_started)
        except BaseException:
            job.cleanup(failing=True)
            raise
        finally:
            if not job.cleaned:
                job.cleanup(failing=False)


@dataclass
class _Run:
    """One container's life inside :func:`run`: :meth:`execute`, then :meth:`cleanup`."""

    id: str
    bundle: Path
    imgroot: Path
    runtime: Runc
    provider: RootfsProvider
    config: ContainerConfig
    settings: ContainerSettings
    relay: Relay
    remove: bool
    interactive: bool
    stdio: tuple[int | None, int | None, int | None]
    task: Task | None = None
    prepared: bool = False
    mounted: bool = False
    code: int | None = None
    cleaned: bool = False

    def __post_init__(self) -> None:
        self.record = state.TaskRecord(id=self.id, image="", args=[], remove=self.remove)

    def execute(self, on_started: Callable[[Task], None] | None) -> int:
        from imgpipe.snapshots import mount_all  # noqa: PLC0415 (lean run path)

        rootfs_dir = self.bundle / "rootfs"
        mounts = self.provider.prepare(self.id)
        self.prepared = True
        rec = self.record
        snapshotter, rec.image = self.provider.record()
        rec.snapshotter, rec.snapshot_key = snapshotter, self.id if snapshotter else ""
        mount_all(mounts, rootfs_dir)
        self.mounted = True
        user = resolve_user(rootfs_dir, self.settings.user or self.config.user)
        spec = build_spec(self.id, self.config, self.settings, user)
        rec.args = list(spec["process"]["args"])
        state.write_record(self.bundle, rec)
        import json  # noqa: PLC0415

        (self.bundle / "config.json").write_text(json.dumps(spec))
        stdin, stdout, stderr = self.stdio
        devnull = -1
        if not self.interactive:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            stdin = devnull
        try:
            self.task = Task.create(
                self.id,
                self.bundle,
                self.runtime,
                terminal=self.settings.terminal,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
            )
        finally:
            if devnull >= 0:
                os.close(devnull)
        self.relay.pid = rec.pid = self.task.pid
        self.task.start()
        if on_started is not None:
            on_started(self.task)
        if self.settings.terminal:
            self.code = relay_terminal(
                self.task,
                self.relay,
                interactive=self.interactive,
                stdin=stdin if stdin is not None else sys.stdin.fileno(),
                stdout=stdout if stdout is not None else sys.stdout.fileno(),
            )
        else:
            self.code = wait_task(self.task, self.relay)
        return self.code

    def cleanup(self, *, failing: bool) -> None:
        """Undo everything, each step even if an earlier one failed; the first error is
        raised at the end unless another one is already on its way (``failing``)."""
        from imgpipe.snapshots import unmount  # noqa: PLC0415

        self.cleaned = True
        self.relay.done = True  # a signal now must not cut the cleanup short
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
