"""A lazy mount, seen from its owner: :func:`start_lazy`, :class:`LazyMount`.

The owner (the foreground ``run``, the ``run -d`` monitor, the ``mount --lazy``
process) opens /dev/fuse, mounts it on ``<state dir>/lazy`` and forks the server
(:mod:`imgpipe.lazy.server`). It keeps the fd: when the server dies, a watcher thread
records why in the state file and starts the EIO responder (:mod:`imgpipe.lazy.kernel`),
so the container's reads fail instead of hanging. :meth:`LazyMount.stop` takes it all
down: the FUSE mount (lazily detached: the caller unmounted its overlay first), the
server, the fd.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Final

from imgpipe.formats.errors import FailedPrecondition, Unsupported
from imgpipe.image.tocfetch import RangeReader
from imgpipe.snapshots import unmount
from imgpipe.store import Store

from .kernel import Responder, mount_fuse, open_fuse
from .plan import LazyPlan
from .server import Server, build_server, run_child
from .state import (
    LayerState,
    MountState,
    alive,
    read_state,
    settled,
    start_time,
    wait_state,
    write_state,
)
from .tree import build_tree

__all__ = ["LazyMount", "start_lazy"]

MOUNT_DIR: Final = "lazy"
#: How long stop() lets the server end on SIGTERM before SIGKILL.
STOP_TIMEOUT: Final = 10.0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _wait_gone(pid: int, start: str, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process (not our child) to end."""
    if not alive(pid, start):
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _signal(pid: int, start: str, sig: int) -> None:
    """Send ``sig`` to ``pid`` if it is still the process that started at ``start``."""
    if alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class LazyMount:
    """A mounted lazy tree: ``lowers`` (top layer first) for overlay's lowerdir.

    Made by :func:`start_lazy` (this process owns it: it holds the FUSE fd and watches
    the server) or :meth:`attach` (another process: it can read the state and stop it).
    """

    def __init__(self, state_dir: Path, state: MountState) -> None:
        self.state_dir = state_dir
        self.mountpoint = Path(state.mountpoint)
        self._layers = len(state.layers)
        self._initial = state
        self.fd = -1
        self.pid = state.server_pid
        self._pidfd = -1
        self._responder: Responder | None = None
        self._watcher: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._lock = threading.Lock()
        self._stopping = False
        self._stopped = False
        self._exited = threading.Event()

    def __repr__(self) -> str:
        return f"LazyMount({str(self.mountpoint)!r}, pid={self.pid})"

    @property
    def lowers(self) -> list[Path]:
        """The layer directories, top layer first (overlay's lowerdir order)."""
        return [self.mountpoint / str(n) for n in reversed(range(self._layers))]

    def _state(self) -> MountState:
        try:
            return read_state(self.state_dir)
        except (OSError, ValueError):
            return self._initial

    def status(self) -> list[LayerState]:
        """Per layer (bottom first): lazy, prefetched or complete; bytes fetched; error."""
        return list(self._state().layers)

    def failure(self) -> str | None:
        """Why the server is gone, or None while it serves (or after a clean stop)."""
        return self._state().failure or None

    def wait_settled(self, timeout: float) -> list[LayerState] | None:
        """Block until the background work is done (each layer complete, or failed with
        its error; without the background fetch: prefetched) or the server is gone;
        the layers' state then, None after ``timeout`` seconds. Event-driven (inotify
        on the state file), so a caller never polls."""
        state = wait_state(self.state_dir, settled, timeout)
        return None if state is None else list(state.layers)

    # -- owning ----------------------------------------------------------------------------

    def adopt(self, fd: int) -> None:
        """Become this mount's owner in this process, given its FUSE descriptor ``fd``
        (passed on by the process that mounted it, as ``run -d`` hands it to the
        container's monitor): from now on this process watches the server (EIO for
        the mount's reads if it dies, the reason in the state) and :meth:`stop` takes
        the mount down as its owner. (state.json keeps naming the process that mounted
        it: the server rewrites that file from its own copy, so a second writer could
        lose an update; nothing reads the owner of a mount whose ``owner_stops`` is off.)"""
        self._own(fd, self.pid)

    def _own(self, fd: int, pid: int) -> None:
        self.fd = fd
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)
        self._responder = Responder(fd)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._watcher = threading.Thread(target=self._watch, name="imgpipe-lazy-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        ready, _, _ = select.select([self._pidfd, self._wake_r], [], [])
        if self._pidfd not in ready:
            return
        try:
            _, status = os.waitpid(self.pid, 0)
            why = _describe(status)
        except ChildProcessError:
            why = "ended (reaped elsewhere)"
        self._exited.set()
        with self._lock:
            if self._stopping:
                return
        # the failure is on record before the first EIO: whoever sees one can ask why
        message = f"the FUSE server (pid {self.pid}) {why}"
        with contextlib.suppress(OSError, ValueError):
            state = read_state(self.state_dir)
            if not state.failure:
                detail = state.extra.get("error", "")
                failure = message + (f": {detail}" if detail else "")
                write_state(self.state_dir, replace(state, failure=failure))
        with self._lock:
            if not self._stopping:
                assert self._responder is not None
                self._responder.start(str(self.mountpoint))

    def wait_ready(self, ready_r: int) -> None:
        """Block until the server answered the kernel's INIT (or died trying)."""
        try:
            ok = os.read(ready_r, 1)
        finally:
            os.close(ready_r)
        if not ok:
            why = self.failure() or "it exited before serving"
            self.stop()
            raise FailedPrecondition(f"the lazy mount's FUSE server did not start: {why}")

    def stop(self) -> None:
        """Take the mount down: the FUSE mount (detached), the server (SIGTERM, then
        SIGKILL after STOP_TIMEOUT), the fd. Idempotent; from another process
        (:meth:`attach`) it signals the owner of a ``mount --lazy``, or the server."""
        with self._lock:
            if self._stopped:
                return
            self._stopping = True
        if self.fd < 0:
            self._stop_remote()
        else:
            self._stop_owned()
        self._stopped = True

    def _stop_owned(self) -> None:
        unmount(self.mountpoint, detach=True)
        if not self._exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if not self._exited.wait(STOP_TIMEOUT):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self._exited.wait()
        if self._watcher is not None:
            self._watcher.join()
        if self._responder is not None:
            self._responder.stop()
        for fd in (self.fd, self._pidfd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self.fd = self._pidfd = self._wake_r = self._wake_w = -1

    def _stop_remote(self) -> None:
        state = self._state()
        if state.owner_stops and alive(state.owner_pid, state.owner_start):
            _signal(state.owner_pid, state.owner_start, signal.SIGTERM)
            if _wait_gone(state.owner_pid, state.owner_start, STOP_TIMEOUT * 2):
                return
        unmount(self.mountpoint, detach=True)
        _signal(state.server_pid, state.server_start, signal.SIGTERM)
        if not _wait_gone(state.server_pid, state.server_start, STOP_TIMEOUT):
            _signal(state.server_pid, state.server_start, signal.SIGKILL)
            _wait_gone(state.server_pid, state.server_start, STOP_TIMEOUT)

    @classmethod
    def attach(cls, state_dir: str | os.PathLike[str]) -> LazyMount:
        """The mount whose state is in ``state_dir``, to read or stop from another
        process. FileNotFoundError if there is none."""
        sd = Path(state_dir)
        return cls(sd, read_state(sd))


def start_lazy(
    store: Store,
    plan: LazyPlan,
    state_dir: str | os.PathLike[str],
    *,
    background: bool = True,
    reopen: Callable[[], RangeReader] | None = None,
    target: str = "",
    owner_stops: bool = False,
) -> LazyMount:
    """Mount ``plan``'s layers read-only through FUSE under ``state_dir`` (created) and
    start their server; mounted and served when it returns.

    ``reopen`` makes the server's own RangeReader in the child (a registry client must
    not share the parent's connections); the server then closes every fd it inherited
    (the caller's pipes, sockets, database). Without it the plan's readers are used and
    the server keeps what it inherited (fine for layouts and the store in tests; a
    caller with pipes to close should pass ``reopen``). ``background``: prefetch, then
    fetch the rest and commit complete, verified layers to ``store``'s content store. ``target`` and
    ``owner_stops`` go into the state file for :meth:`LazyMount.attach`: where the
    caller mounts the rootfs, and whether SIGTERM to this process takes it all down
    (a ``mount --lazy`` owner).

    Unsupported when the plan has a fallback, without /dev/fuse or root;
    MalformedDocument for a TOC no mount may show.
    """
    if plan.fallback is not None:
        raise Unsupported(f"not mounted lazily: {plan.fallback}")
    tree = build_tree([layer.toc() for layer in plan.layers])
    sd = Path(state_dir)
    mnt = sd / MOUNT_DIR
    mnt.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    state = MountState(
        mountpoint=str(mnt),
        owner_pid=me,
        owner_start=start_time(me),
        owner_stops=owner_stops,
        target=target,
        layers=tuple(
            LayerState(str(layer.descriptor.digest), size=layer.descriptor.size)
            for layer in plan.layers
        ),
    )
    write_state(sd, state)
    fd = open_fuse()
    try:
        mount_fuse(fd, str(mnt))
    except BaseException:
        os.close(fd)
        raise
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)

    def make() -> Server:
        def ready() -> None:
            os.write(ready_w, b"r")
            os.close(ready_w)

        upstream = reopen() if reopen is not None else plan.layers[0].fetcher.ranges
        return build_server(
            fd,
            tree,
            plan,
            store=store,
            state_dir=sd,
            state=state,
            upstream=upstream,
            on_ready=ready,
            background=background,
        )

    def record(why: str) -> None:
        write_state(sd, replace(read_state(sd), extra={"error": why}))

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (covered through the mount it serves)
        # with reopen the server makes its own connections: nothing inherited is needed
        run_child(make, sd, record, keep=None if reopen is None else {fd, ready_w})
    os.close(ready_w)
    m = LazyMount(sd, state)
    m._own(fd, pid)
    m.wait_ready(ready_r)
    return m
