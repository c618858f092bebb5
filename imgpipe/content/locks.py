"""The one-writer-per-ingest lock, across threads and processes (there is no daemon).

Each ingest has a ``lock`` file held with ``flock(LOCK_EX)`` by its one writer. flock
locks belong to the open file description, so two writers in one process exclude each
other too. An ingest is removed (commit, abort, mismatch) by renaming its directory away
while holding its lock; whoever waited on the old lock file notices, after acquiring it,
that the file at the path is no longer the one it locked (inode check) and starts over on
the new directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Final

from imgpipe.formats.errors import Conflict, NotFound

from .layout import DATA_MODE, DIR_MODE, Layout

__all__ = ["DEFAULT_LOCK_TIMEOUT", "IngestLock", "lock_ingest", "probe_locked"]

#: How long ``writer()`` waits for another writer of the same ref. A pull of the same
#: blob by two processes makes the second wait for the first; a minute covers a large
#: layer on a slow link without hanging forever on a stuck process.
DEFAULT_LOCK_TIMEOUT: Final[float] = 60.0

# Polling back-off while another writer holds a ref (containerd's OpenWriter does the
# same, 16 ms doubling to 2 s): short first so a quick commit is noticed at once, capped
# so a waiter reacts within half a second when the lock is freed.
_BACKOFF_INITIAL: Final = 0.005
_BACKOFF_MAX: Final = 0.5

# An ingest directory replaced under us again and again means someone is aborting and
# recreating it in a loop; give up with Conflict rather than spin.
_REPLACED_RETRIES: Final = 1000


def _backoff_sleep(seconds: float) -> None:
    """Sleep between lock polls. A module function so tests can observe the waiting."""
    time.sleep(seconds)


def _flock(fd: int, operation: int) -> None:
    """flock(2). A module function so tests can act between open and lock (the race the
    inode check in ``lock_ingest`` exists for)."""
    fcntl.flock(fd, operation)


class IngestLock:
    """A held flock on an ingest's lock file. ``release`` is idempotent."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def lock_ingest(layout: Layout, ref: str, *, timeout: float, create: bool) -> IngestLock:
    """Take the flock of the ingest ``ref``, creating its directory if ``create``.

    Without ``create`` a missing ingest is NotFound. Raises Conflict when the lock is
    still held after ``timeout`` seconds.
    """
    directory = layout.ingest_dir(ref)
    lock_path = directory / "lock"
    deadline = time.monotonic() + timeout
    delay = _BACKOFF_INITIAL
    replaced = 0
    while True:
        if create:
            layout.ingest.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, DIR_MODE)
        try:
            # O_CREAT: two processes creating the ingest at once open the same file.
            fd = os.open(
                lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, DATA_MODE
            )
        except FileNotFoundError:
            if not create:
                raise NotFound(f"ingest {ref!r}: not found") from None
            # The directory was removed between mkdir and open: again.
            replaced += 1
            if replaced > _REPLACED_RETRIES:
                break
            continue
        try:
            _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Conflict(
                    f"ingest {ref!r} is being written by another writer"
                    + (f" (waited {timeout:g} s)" if timeout else "")
                ) from None
            # Jitter keeps several waiters from polling in lock-step.
            import random  # noqa: PLC0415 (start-up: only a contended lock waits)

            jitter = random.uniform(0.5, 1.0)  # noqa: S311 - not a secret
            _backoff_sleep(min(delay * jitter, left))
            delay = min(delay * 2, _BACKOFF_MAX)
            continue
        except BaseException:
            os.close(fd)
            raise
        # The lock is ours, but is it still the ingest's lock? The holder before us may
        # have removed the directory (commit/abort) between our open and our flock; then
        # we hold a lock on a file nobody else will ever look at.
        if _same_file(fd, lock_path):
            return IngestLock(directory, fd)
        os.close(fd)
        if not create and not directory.exists():
            raise NotFound(f"ingest {ref!r}: not found")
        replaced += 1
        if replaced > _REPLACED_RETRIES:
            break
    raise Conflict(f"ingest {ref!r} keeps being replaced by another process")


def probe_locked(lock_path: Path) -> bool:
    """Whether a writer holds the lock now (a brief shared flock tells)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _same_file(fd: int, path: Path) -> bool:
    held = os.fstat(fd)
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
