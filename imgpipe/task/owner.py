"""The owner of a container: the one process that waits for its init, records its exit
status and tears it down (the foreground ``imgpipe run``, or the monitor of ``run -d``).

The owner holds an exclusive ``flock`` on ``<root>/tasks/<id>/owner`` from the claim of
the container to the end of its cleanup, and writes the exit status into that file
before it lets go. Whoever waits for a container (``imgpipe wait``, ``stop``, ``rm -f``)
takes a shared lock on the file: the kernel grants it the moment the owner is done, or
dies (even by SIGKILL), so no one polls and no pid can have been reused. The file is
read through the waiter's open descriptor, so the status survives the directory being
removed (``--rm``).

A flock belongs to the open file description, not to the process: ``run -d`` hands its
lock to the monitor by passing the descriptor (the monitor's copy keeps it held when
the parent closes its own), with no moment when the container is unowned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from imgpipe.errors import Conflict, FailedPrecondition

__all__ = ["OWNER_FILE", "Owner", "owner_busy", "wait_owner"]

OWNER_FILE: Final = "owner"


class Owner:
    """The exclusive lock on a container's owner file (held until :meth:`close`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def acquire(cls, bundle: Path) -> Owner:
        """Own the container in ``bundle``; Conflict if another process does."""
        fd = os.open(bundle / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"container {bundle.name} is owned by another process") from None
        return cls(fd)

    def set_exit(self, code: int) -> None:
        """Record the container's exit status for the waiters (before :meth:`close`)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{code}\n".encode(), 0)

    def close(self) -> None:
        """Let go (idempotent): waiters wake up."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _open(bundle: Path) -> int | None:
    try:
        return os.open(bundle / OWNER_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def wait_owner(bundle: Path) -> int | None:
    """Block until the owner of the container in ``bundle`` is done; the exit status it
    recorded, or None if it recorded none (it died first, or the container never ran).
    FailedPrecondition if there is no owner file (a container older than this scheme,
    or one being removed)."""
    fd = _open(bundle)
    if fd is None:
        raise FailedPrecondition(f"container {bundle.name} has no owner to wait for")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # SIGINT still interrupts (KeyboardInterrupt)
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.lstrip("-").isdigit() else None


def owner_busy(bundle: Path) -> bool:
    """True while a process owns the container in ``bundle`` (does not block)."""
    fd = _open(bundle)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
