"""The :class:`Task`: one container in the runtime (``runc create``, ``start``, ``wait``,
``kill``, ``delete``), with an optional console pty."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from imgpipe.errors import FailedPrecondition

from .runc import CONTROL_TIMEOUT, Runc, become_subreaper, wait_pid

__all__ = ["Task"]


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
        self.id, self.bundle, self.runtime, self.pid = container_id, bundle, runtime, pid
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
