"""``imgpipe wait``, ``stop`` and ``logs``: a container seen from another process than
its owner (the foreground ``run``, or a detached container's monitor; see :mod:`.owner`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imgpipe.errors import FailedPrecondition

from . import state
from .logfile import LOG_FILE, STDERR, STDOUT, copy_log
from .owner import owner_busy, wait_owner
from .runc import CONTROL_TIMEOUT, Runc

if TYPE_CHECKING:
    from imgpipe.pipeline import Root

__all__ = ["container_logs", "stop_container", "wait_container"]


def _root(root: Root) -> Path:
    from imgpipe.store import default_root  # noqa: PLC0415 (start-up: on use)

    return Path(root or default_root())


def wait_container(container_id: str, *, root: Root = None) -> int:
    """Block until the container ends and its owner has recorded it; its exit status
    (128+n if a signal n killed it), as ``docker wait``. At once for one that ended.

    NotFound if there is no such container; FailedPrecondition if there is no exit
    status to wait for (it never started, or its owner was killed while it ran)."""
    imgroot = _root(root)
    rec = state.read_record(imgroot, container_id)
    code: int | None = None
    # Even when the record has the status already: the owner may still be tearing the
    # container down, and after wait returns, `rm` must find it done.
    with contextlib.suppress(FailedPrecondition):  # no owner file: the record says
        code = wait_owner(state.task_dir(imgroot, container_id))
    if code is None:
        code = rec.exit_code
    if code is None:
        with contextlib.suppress(Exception):  # removed meanwhile: what the owner wrote
            code = state.read_record(imgroot, container_id).exit_code
    if code is None:
        raise FailedPrecondition(
            f"container {container_id} has no exit status: it never started, or its "
            f"monitor was killed (imgpipe rm -f {container_id} removes it)"
        )
    return code


def stop_container(
    container_id: str,
    *,
    timeout: float | None = None,
    sig: int = signal.SIGTERM,
    runtime: str | None = None,
    root: Root = None,
) -> int | None:
    """``docker stop``: send ``sig`` (SIGTERM) to the container's init; if it has not
    exited ``timeout`` seconds later (default: its ``run --stop-timeout``, else 10),
    SIGKILL every process of it. Returns once the
    owner has recorded the end: the exit status (None when the owner recorded none).
    A container that is not running is left as it is (its recorded status returned).

    NotFound if there is no such container."""
    if timeout is not None and timeout < 0:
        from imgpipe.errors import InvalidArgument  # noqa: PLC0415

        raise InvalidArgument("the stop timeout must not be negative")
    imgroot = _root(root)
    rec = state.read_record(imgroot, container_id)
    if timeout is None:
        timeout = rec.stop_timeout
    bundle = state.task_dir(imgroot, container_id)
    rt = Runc(imgroot / state.RUNC_DIR, binary=runtime)
    log = bundle / "log.json"
    pidfd = _live_init(rt, container_id)
    if pidfd is not None:
        try:
            rt.kill(container_id, sig, log=log)
            ready, _, _ = select.select([pidfd], [], [], timeout)
            if not ready:
                rt.kill(container_id, signal.SIGKILL, all_processes=True, log=log)
                select.select([pidfd], [], [], CONTROL_TIMEOUT)
        finally:
            os.close(pidfd)
    if owner_busy(bundle) or pidfd is not None:
        with contextlib.suppress(FailedPrecondition):
            return wait_owner(bundle)
    return rec.exit_code


def _live_init(rt: Runc, container_id: str) -> int | None:
    """A pidfd on the container's init while it runs, else None.

    Opened before the state is read again: if the runtime still says running with that
    pid afterwards, the pidfd refers to the init (its owner has not reaped it, so the
    pid cannot have been reused), and select() on it wakes when it exits."""
    st = rt.state(container_id)
    if st is None or st.get("status") not in ("running", "paused", "created"):
        return None
    pid = int(st.get("pid", 0))
    if pid <= 0:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    again = rt.state(container_id)
    if again is None or int(again.get("pid", 0)) != pid or again.get("status") == "stopped":
        os.close(pidfd)
        return None
    return pidfd


def container_logs(
    container_id: str,
    *,
    stdout: Callable[[bytes], object],
    stderr: Callable[[bytes], object],
    follow: bool = False,
    root: Root = None,
) -> int | None:
    """Replay a detached container's output to ``stdout``/``stderr`` (each chunk as the
    container wrote it, in order); with ``follow``, go on until it ends (``logs -f``).
    The exit status when the log holds the end, else None.

    NotFound if there is no such container; FailedPrecondition if it was not run with
    ``-d`` (its output went to the terminal of its ``run``)."""
    imgroot = _root(root)
    rec = state.read_record(imgroot, container_id)
    bundle = state.task_dir(imgroot, container_id)
    path = bundle / LOG_FILE
    if not rec.detached:
        raise FailedPrecondition(
            f"container {container_id} was not run with -d: its output went to its "
            "terminal, no log was kept"
        )
    try:
        return copy_log(
            path,
            {STDOUT: stdout, STDERR: stderr},
            follow=follow,
            alive=lambda: owner_busy(bundle),
        )
    except FileNotFoundError:
        return None  # its monitor has not opened it yet: nothing written
    except ValueError as e:
        raise FailedPrecondition(f"container {container_id}: log {path}: {e}") from None
