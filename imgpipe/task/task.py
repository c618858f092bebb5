"""Running a container: the :class:`Task` (one runc container) and :func:`run`.

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
import errno
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Protocol

from imgpipe.errors import FailedPrecondition, InvalidArgument, NotFound

from . import state
from .runc import CONTROL_TIMEOUT, Runc, become_subreaper, wait_pid
from .spec import ContainerSettings, build_spec
from .user import resolve_user

if TYPE_CHECKING:
    from imgpipe.formats.config import ContainerConfig, ImageConfig
    from imgpipe.formats.descriptor import Descriptor
    from imgpipe.formats.manifest import Manifest
    from imgpipe.formats.platform import Platform
    from imgpipe.pipeline import Observer
    from imgpipe.snapshots import Mount, Snapshotter
    from imgpipe.store import Store
    from imgpipe.transports import TransportOptions

__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "DirectoryRootfs",
    "ImageRootfs",
    "RootfsProvider",
    "Task",
    "remove_container",
    "run",
]

#: Seconds a container gets after a forwarded signal before SIGKILL (Docker's default).
DEFAULT_STOP_TIMEOUT: Final = 10.0
#: The signals imgpipe passes on to the container.
FORWARDED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Copy buffer of the terminal relay.
_TTY_CHUNK: Final = 64 * 1024

Root = str | os.PathLike[str] | None


# --- the task --------------------------------------------------------------------------


class Task:
    """One container in the runtime: created, then started, waited for and deleted.

    The bundle (``config.json`` and a mounted ``rootfs/``) is the caller's. The process
    that calls :meth:`create` becomes a child subreaper (see :mod:`.runc`) so that
    :meth:`wait` can collect the container's exit status; only that process can wait.
    """

    def __init__(
        self,
        container_id: str,
        bundle: Path,
        runtime: Runc,
        *,
        pid: int = 0,
        console: int | None = None,
    ) -> None:
        self.id = container_id
        self.bundle = bundle
        self.runtime = runtime
        self.pid = pid
        #: the pty master when created with ``terminal=True`` (the caller closes it)
        self.console = console
        self.exit_code: int | None = None

    @property
    def log(self) -> Path:
        return self.bundle / "log.json"

    @classmethod
    def create(
        cls,
        container_id: str,
        bundle: str | os.PathLike[str],
        runtime: Runc,
        *,
        terminal: bool = False,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Task:
        """``runc create``: the container exists, its init waits to be started.

        Without ``terminal`` the container's stdio are ``stdin``/``stdout``/``stderr``
        (fds; ours when None) as they are. With ``terminal`` (the spec must say
        ``process.terminal``) the runtime allocates a pty and hands its master over a
        console socket: :attr:`console`. Raises CommandNotFound, RuntimeFailed.
        """
        path = Path(bundle)
        task = cls(container_id, path, runtime)
        become_subreaper()
        pid_file = path / "init.pid"
        offset = runtime._log_offset(task.log)
        if not terminal:
            proc = runtime.create(
                container_id,
                path,
                pid_file=pid_file,
                log=task.log,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
            )
            runtime.check_create(proc, task.log, offset)
        else:
            task.console = _create_with_console(runtime, container_id, path, pid_file, task.log)
        task.pid = int(pid_file.read_text())
        return task

    def start(self) -> None:
        """``runc start``: exec the container's process. Raises CommandNotFound,
        RuntimeFailed."""
        self.runtime.start(self.id, log=self.log)

    def wait(self, timeout: float | None = None) -> int | None:
        """The container's exit status (128+n if killed by signal n), waiting at most
        ``timeout`` seconds (None: until it exits); None if it still runs."""
        if self.exit_code is not None:
            return self.exit_code
        if timeout is None:
            self.exit_code = wait_pid(self.pid)
            if self.exit_code is None:
                raise FailedPrecondition(f"container {self.id}: not a child of this process")
            return self.exit_code
        fd = os.pidfd_open(self.pid)
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if not ready:
            return None
        self.exit_code = wait_pid(self.pid)
        return self.exit_code

    def kill(self, sig: int = signal.SIGTERM, *, all_processes: bool = False) -> bool:
        """Send ``sig`` to the init (or every process, ``all_processes``); False if the
        container is no longer running."""
        return self.runtime.kill(self.id, sig, all_processes=all_processes, log=self.log)

    def delete(self, *, force: bool = False) -> None:
        """``runc delete``: remove the runtime's state and cgroup; ``force`` kills a
        running container first. Idempotent."""
        self.runtime.delete(self.id, force=force, log=self.log)

    def status(self) -> str:
        """``created``, ``running``, ``paused``, ``stopped``, or ``deleted`` when the
        runtime does not know the container (any more)."""
        st = self.runtime.state(self.id)
        return "deleted" if st is None else str(st.get("status", "unknown"))


def _create_with_console(
    runtime: Runc, container_id: str, bundle: Path, pid_file: Path, log: Path
) -> int:
    """runc create with a console socket; the pty master it sends back."""
    import socket  # noqa: PLC0415 (only -t needs them: start-up counts)
    import tempfile  # noqa: PLC0415

    # A short directory of its own: socket paths are limited to 107 bytes, and the
    # bundle may be deep.
    sockdir = tempfile.mkdtemp(prefix="imgpipe-console-")
    path = os.path.join(sockdir, "sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
            srv.bind(path)
            srv.listen(1)
            offset = runtime._log_offset(log)
            proc = runtime.create(
                container_id,
                bundle,
                pid_file=pid_file,
                log=log,
                console_socket=path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            master = -1
            deadline = time.monotonic() + CONTROL_TIMEOUT
            while master < 0 and time.monotonic() < deadline:
                ready, _, _ = select.select([srv], [], [], 0.05)
                if ready:
                    conn, _ = srv.accept()
                    with conn:
                        _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
                    if fds:
                        master = fds[0]
                elif proc.poll() is not None:
                    break  # it failed before connecting
            try:
                runtime.check_create(proc, log, offset)
            except BaseException:
                if master >= 0:
                    os.close(master)
                raise
            if master < 0:
                raise FailedPrecondition(f"{runtime.binary} sent no console for {container_id}")
            return master
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(sockdir)


# --- where the rootfs comes from ----------------------------------------------------


class RootfsProvider(Protocol):
    """Gives a container its root filesystem as mounts, and takes it back."""

    def prepare(self, key: str, *, read_only: bool = False) -> Sequence[Mount]:
        """Mounts showing a fresh root filesystem for the container ``key``."""
        ...

    def release(self, key: str) -> None:
        """Discard what :meth:`prepare` made for ``key`` (idempotent)."""
        ...

    def record(self) -> tuple[str, str]:
        """``(snapshotter, image)`` to write in the container's record."""
        ...


@dataclass
class DirectoryRootfs:
    """An existing directory used as the rootfs (bind-mounted; nothing is removed).

    For tests and for programs that build a rootfs themselves; the container writes into
    the directory itself.
    """

    path: Path
    image_name: str = ""

    def prepare(self, key: str, *, read_only: bool = False) -> Sequence[Mount]:
        from imgpipe.snapshots import Mount  # noqa: PLC0415 (the run path stays lean)

        return [Mount("bind", str(self.path), ("rbind", "ro" if read_only else "rw"))]

    def release(self, key: str) -> None:
        return None

    def record(self) -> tuple[str, str]:
        return "", self.image_name or str(self.path)


class ImageRootfs:
    """An active snapshot on an image's top layer: containerd's ``withNewSnapshot``.

    When the image is already unpacked in the snapshotter the snapshot is prepared
    directly on its committed top chain ID (the fast path of ``imgpipe run``: no pipeline
    to import); otherwise :func:`imgpipe.unpacking.prepare_rootfs` unpacks it first. Either
    way the snapshot is labelled ``containerd.io/gc.root`` while the container exists.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        config: ImageConfig,
        *,
        snapshotter: str | None = None,
        platform: str | Platform | None = None,
        decrypt_keys: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.name = name
        self.config = config
        self.snapshotter_name = snapshotter
        self.platform = platform
        self.decrypt_keys = tuple(decrypt_keys)
        self.snapshotter: Snapshotter | None = None

    def _open(self, name: str | None = None, *, probe: bool = True) -> Snapshotter:
        """The snapshotter ``name`` (default: ours, else the root's default).

        ``probe=False`` skips overlay's test mount: used when the metadata already holds
        a committed overlay snapshot of this image, i.e. overlay worked on this root.
        """
        if self.snapshotter is not None:
            return self.snapshotter
        from imgpipe.snapshots import (  # noqa: PLC0415 (lean run path)
            default_snapshotter_name,
            open_snapshotter,
        )

        base = Path(self.store.root) / "snapshots"
        name = name or self.snapshotter_name or default_snapshotter_name(base)
        if name == "overlay" and not probe:
            from imgpipe.snapshots.overlay import OverlaySnapshotter  # noqa: PLC0415

            self.snapshotter = OverlaySnapshotter(base / name, self.store.db, check=False)
        else:
            self.snapshotter = open_snapshotter(name, base / name, self.store.db)
        return self.snapshotter

    def _authorize(self) -> None:
        layers = _encrypted_layers(self.store, self.name, self.platform)
        if not layers:
            return
        from imgpipe.processors.ocicrypt import (  # noqa: PLC0415 (only for encrypted images)
            NoDecryptionKey,
            check_authorization,
            load_private_key,
        )

        keys = [load_private_key(k) for k in self.decrypt_keys]
        for i, layer in enumerate(layers):
            try:
                check_authorization(layer.annotations, keys=keys)
            except NoDecryptionKey:
                raise NoDecryptionKey(
                    f"image {self.name}: encrypted layer {i + 1}/{len(layers)} "
                    f"({layer.digest}) opens with none of the given keys "
                    "(--decrypt-key FILE[:PASSWORD])"
                ) from None

    def _unpacked_in(self, top: str) -> str | None:
        """The snapshotter holding ``top`` committed, among those a run may use
        (the one asked for; else overlay, the default wherever it works)."""
        for name in (self.snapshotter_name,) if self.snapshotter_name else ("overlay",):
            try:
                if self.store.db.get_snapshot(name, top).kind == "committed":
                    return name
            except NotFound:
                continue
        return None

    def prepare(self, key: str, *, read_only: bool = False) -> Sequence[Mount]:
        from imgpipe.formats.chainid import chain_ids  # noqa: PLC0415
        from imgpipe.metadata.labels import LABEL_GC_ROOT  # noqa: PLC0415

        ids = chain_ids(self.config.diff_ids)
        if ids:
            top = str(ids[-1])
            found = self._unpacked_in(top)
            if found is not None:
                # Unpacked once with a key is not a licence to run without one (imgcrypt's
                # authorization check): every encrypted layer must open with our keys.
                self._authorize()
                sn = self._open(found, probe=False)
                labels = {LABEL_GC_ROOT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                make = sn.view if read_only else sn.prepare
                try:
                    return make(key, top, labels=labels)
                except NotFound:
                    pass  # collected since we looked: unpack again below
        from imgpipe.unpacking import prepare_rootfs  # noqa: PLC0415 (heavy: only to unpack)

        sn = self._open()
        self.snapshotter, mounts = prepare_rootfs(
            self.name,
            key,
            snapshotter=sn.name,
            platform=self.platform,
            read_only=read_only,
            decrypt_keys=self.decrypt_keys,
            store=self.store,
        )
        return mounts

    def release(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            self._open().remove(key)

    def record(self) -> tuple[str, str]:
        return self._open().name, self.name


# --- images --------------------------------------------------------------------------


def _find_image(
    store: Store,
    image: str,
    *,
    platform: str | Platform | None,
    observer: Observer | None,
    options: TransportOptions | None,
) -> tuple[str, ImageConfig]:
    """The stored name of ``image`` and its config for ``platform``; pulled first when
    it is not in the store (or is a transport string such as ``oci:DIR:TAG``)."""
    from imgpipe.formats.reference import parse_transport  # noqa: PLC0415

    ref = parse_transport(image)
    name: str | None = None
    if ref.transport == "docker" and ref.reference is not None:
        # a registry reference: run the stored copy if there is one, as ctr does
        try:
            store.db.get_image(str(ref.reference))
            name = str(ref.reference)
        except NotFound:
            pass
    if name is None:
        from imgpipe.api import pull  # noqa: PLC0415 (only when pulling)

        name = pull(ref, platform=platform, store=store, observer=observer, options=options).name
    return name, _image_config(store, name, platform)


def _encrypted_layers(store: Store, name: str, platform: str | Platform | None) -> list[Descriptor]:
    """The encrypted layer descriptors of the manifest ``run`` will use."""
    return [d for d in _manifest(store, name, platform).layers if d.media_type.is_encrypted()]


def _image_config(store: Store, name: str, platform: str | Platform | None) -> ImageConfig:
    from imgpipe.formats.config import parse_config  # noqa: PLC0415
    from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE  # noqa: PLC0415

    doc = _manifest(store, name, platform)
    config = parse_config(store.content.read_bytes(doc.config.digest, limit=MAX_DOCUMENT_SIZE))
    if platform is not None:
        # a single-manifest image has no index to choose from: its config says what it is
        from imgpipe.formats.platform import Platform, match  # noqa: PLC0415

        want = Platform.parse(platform) if isinstance(platform, str) else platform
        if not match(want, config.platform()):
            raise NotFound(
                f"image {name}: no manifest for platform {want} (has: {config.platform()})"
            )
    return config


def _manifest(store: Store, name: str, platform: str | Platform | None) -> Manifest:
    from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index, parse_document  # noqa: PLC0415
    from imgpipe.formats.platform import Platform, best_match, host_platform  # noqa: PLC0415

    desc = store.db.get_image(name).target
    doc = parse_document(
        store.content.read_bytes(desc.digest, limit=MAX_DOCUMENT_SIZE), desc.media_type
    )
    if isinstance(doc, Index):
        # The same choice as the unpack stage makes (imgpipe.unpacking._select), so the
        # config run uses and the rootfs it mounts come from one manifest: among the
        # manifests in the store, the only one when no platform is asked for, else the
        # best match for the platform (default: this host).
        want = Platform.parse(platform) if isinstance(platform, str) else platform
        candidates = [d for d in doc.manifests if store.content.exists(d.digest)]
        if want is None and len(candidates) == 1:
            pick: int | None = 0
        else:
            typed = [d for d in candidates if d.platform is not None]
            found = best_match(want or host_platform(), [d.platform for d in typed if d.platform])
            pick = None if found is None else candidates.index(typed[found])
        if pick is None:
            raise NotFound(f"image {name}: no manifest for platform {want or host_platform()}")
        desc = candidates[pick]
        doc = parse_document(
            store.content.read_bytes(desc.digest, limit=MAX_DOCUMENT_SIZE), desc.media_type
        )
    if isinstance(doc, Index):
        raise InvalidArgument(f"image {name}: nested index is not runnable")
    return doc


# --- signals and the wait ------------------------------------------------------------


class _Relay:
    """Signal handling for one run: interrupt before start, forward after."""

    def __init__(self, stop_timeout: float) -> None:
        self.stop_timeout = stop_timeout
        self.pid = 0
        self.deadline: float | None = None
        self.received: list[int] = []
        #: set when the container has ended: signals then change nothing
        self.done = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Relay:
        for sig in FORWARDED_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.done:
            return
        if not self.pid:
            raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")
        if len(self.received) == 1:
            self.deadline = time.monotonic() + self.stop_timeout
            _kill_quietly(self.pid, signum)
        else:
            _kill_quietly(self.pid, signal.SIGKILL)
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"x")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 64):
                pass

    def kill_if_overdue(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            _kill_quietly(self.pid, signal.SIGKILL)
            self.deadline = None

    def timeout(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


def _kill_quietly(pid: int, sig: int) -> None:
    # The init's pid stays ours (a zombie child of this subreaper) until we reap it, so
    # it cannot have been reused for another process.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait(task: Task, relay: _Relay) -> int:
    """Wait for the container, killing it when a forwarded signal is overdue."""
    pidfd = os.pidfd_open(task.pid)
    try:
        while True:
            ready, _, _ = select.select([pidfd, relay.wake_r], [], [], relay.timeout())
            relay.drain()
            if pidfd in ready:
                code = task.wait()
                assert code is not None
                return code
            relay.kill_if_overdue()
    finally:
        os.close(pidfd)


def _relay_terminal(
    task: Task, relay: _Relay, *, interactive: bool, stdin: int, stdout: int
) -> int:
    """Copy between our stdio and the container's pty until it exits; its status."""
    assert task.console is not None
    master = task.console
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    saved = None
    if interactive and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin, termios.TCSANOW)  # TCSAFLUSH would drop typed-ahead input
    old_winch = None
    if os.isatty(stdout):

        def resize(*_: object) -> None:
            with contextlib.suppress(OSError):
                termios.tcsetwinsize(master, termios.tcgetwinsize(stdout))

        resize()
        old_winch = signal.signal(signal.SIGWINCH, resize)
    pidfd = os.pidfd_open(task.pid)
    reading_stdin = interactive
    try:
        open_master = True
        while open_master:
            watch = [master, relay.wake_r, *([stdin] if reading_stdin else [])]
            ready, _, _ = select.select(watch, [], [], relay.timeout())
            relay.drain()
            relay.kill_if_overdue()
            if master in ready:
                try:
                    data = os.read(master, _TTY_CHUNK)
                except OSError as e:
                    if e.errno != errno.EIO:  # EIO: every slave closed, the container ended
                        raise
                    data = b""
                if not data:
                    open_master = False
                else:
                    _write_all(stdout, data)
            if reading_stdin and stdin in ready:
                data = os.read(stdin, _TTY_CHUNK)
                if data:
                    _write_all(master, data)
                else:
                    reading_stdin = False
                    _write_all(master, b"\x04")  # EOF: ^D to the line discipline
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
    code = task.wait()
    assert code is not None
    return code


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- run -----------------------------------------------------------------------------


def _open_store(store: Store | None, root: Root) -> contextlib.AbstractContextManager[Store]:
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
    with _open_store(store, root) as st, _Relay(stop_timeout) as relay:
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
            image_name, image_cfg = _find_image(
                st, image, platform=platform, observer=observer, options=options
            )
            provider = ImageRootfs(
                st,
                image_name,
                image_cfg,
                snapshotter=snapshotter,
                platform=platform,
                decrypt_keys=decrypt_keys,
            )
            config = image_cfg.config
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
    relay: _Relay
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
            self.code = _relay_terminal(
                self.task,
                self.relay,
                interactive=self.interactive,
                stdin=stdin if stdin is not None else sys.stdin.fileno(),
                stdout=stdout if stdout is not None else sys.stdout.fileno(),
            )
        else:
            self.code = _wait(self.task, self.relay)
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
    from imgpipe.snapshots import open_snapshotter, unmount  # noqa: PLC0415

    with _open_store(store, root) as st:
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
