"""A directory snapshotter's directories outside their records: building, deleting and
sweeping up what a crash leaves behind.

Under ``<root>/snapshots`` a snapshot's directory is named by its decimal id. A
directory being built is ``new-<random>`` (renamed to its id when its record commits), one
being deleted ``rm-<id>-<random>``; a build holds a shared lock on ``<root>/build.lock``
meanwhile, so a sweep takes ``new-*`` directories only when no build runs anywhere.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

#: Name prefixes of directories under ``<root>/snapshots`` that are not snapshots yet
#: (being built) or any more (being deleted).
NEW: Final = "new-"
RM: Final = "rm-"


def _rmtree_once(path: Path) -> None:
    def ignore_missing(func: object, p: str, exc: BaseException) -> None:
        # Another process may be deleting the same leftover: gone is what we want.
        if not isinstance(exc, FileNotFoundError):
            raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=ignore_missing)
    else:
        shutil.rmtree(path, onerror=lambda f, p, e: ignore_missing(f, p, e[1]))


def rmtree(path: Path) -> None:
    """Delete ``path`` and everything under it; a missing path is fine. Directories
    without write or search permission (a layer's 0555 dirs, when not root) are opened up
    and the deletion retried."""
    if not os.path.lexists(path):
        return
    try:
        _rmtree_once(path)
    except PermissionError:
        with suppress(OSError):
            os.chmod(path, 0o700)
        for top, dirs, _ in os.walk(path, followlinks=False):
            for d in dirs:
                sub = os.path.join(top, d)
                if not os.path.islink(sub):  # never chmod what a symlink points at
                    with suppress(OSError):
                        os.chmod(sub, 0o700)
        _rmtree_once(path)


@contextmanager
def build_lock(lock: Path, *, exclusive: bool = False) -> Iterator[bool]:
    """Hold ``lock``: shared (waiting for it), or with ``exclusive`` only if no one else
    holds it; yields whether it is held."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_SH)
            held = True
        except BlockingIOError:
            held = False  # someone holds it: with exclusive, we do without
        yield held
    finally:
        os.close(fd)


def highest_id(snapshots: Path) -> int:
    """The highest id a directory under ``snapshots`` uses, being deleted ones included
    (so an id is never reused while its old directory still exists); 0 if none."""
    top = 0
    with os.scandir(snapshots) as it:
        for e in it:
            num = e.name[len(RM) :].split("-", 1)[0] if e.name.startswith(RM) else e.name
            if num.isdigit():
                top = max(top, int(num))
    return top


def discard(snapshots: Path, backend_id: str, delete: Callable[[Path], None]) -> None:
    """Delete the directory of ``backend_id`` (its record is gone, or never committed):
    renamed to ``rm-*`` first, so a half-deleted tree is never taken for a snapshot."""
    dst = _doomed(snapshots, backend_id)
    try:
        os.rename(snapshots / backend_id, dst)
    except FileNotFoundError:
        return  # the sweep of another process got there first
    delete(dst)


def claim_leftovers(snapshots: Path, live: set[str], *, take_new: bool) -> list[tuple[str, Path]]:
    """Rename every directory no record names (ids not in ``live``; ``new-*`` ones too if
    ``take_new``) to ``rm-*``, and return ``(name, path to delete)`` of those and of the
    ``rm-*`` ones already there. Called inside the records' transaction, so no record can
    appear for an id meanwhile; the deleting happens after it."""
    doomed: list[tuple[str, Path]] = []
    with os.scandir(snapshots) as it:
        names = [e.name for e in it]
    for n in names:
        if (n.isdigit() and n not in live) or (n.startswith(NEW) and take_new):
            dst = _doomed(snapshots, n)
            with suppress(FileNotFoundError):
                os.rename(snapshots / n, dst)
                doomed.append((n, dst))
        elif n.startswith(RM):
            doomed.append((n, snapshots / n))
    return doomed


def _doomed(snapshots: Path, name: str) -> Path:
    # A fresh name each time, so it never meets what an earlier, crashed deletion left.
    return snapshots / f"{RM}{name}-{os.urandom(4).hex()}"
