"""Ctrl-C and SIGTERM for the command: the first stops the run, the second stops at once.

The first SIGINT or SIGTERM raises KeyboardInterrupt in the main thread, wherever it
waits; the pipeline then cancels every transfer (they stop at their next read), keeps
what was committed and the partial downloads under its expiring lease, and raises
``imgpipe.errors.Interrupted`` saying what it kept, which :func:`message` turns into
the one line printed before the exit with 130 (SIGTERM too, as the issue tracker's
users asked: one code for "interrupted"). A second signal while that cleanup runs exits
at once (``os._exit``): what is on disk is consistent whenever the process stops (an
ingest's data is a prefix of the blob, re-hashed on resume; SQLite rolls back an open
transaction), so there is nothing to wait for. ``run`` installs its own handlers while
a container runs (forwarding signals to it) and restores these after.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from types import FrameType

from .exitcodes import EXIT_INTERRUPTED

__all__ = ["installed", "leave_stuck_transfers", "message"]

#: The thread names of the scheduler's pools (ThreadPoolExecutor: "<prefix>_<n>").
_POOLS = ("fetch", "push", "convert")


class _Handler:
    def __init__(self) -> None:
        self.first: str | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        import signal  # loaded by installed() already

        name = signal.Signals(signum).name
        if self.first is not None:
            os.write(2, f"imgpipe: {name} again: stopping now\n".encode())
            os._exit(EXIT_INTERRUPTED)
        self.first = name
        raise KeyboardInterrupt(f"interrupted by {name}")


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """SIGINT and SIGTERM handled as the module docstring says for the ``with`` block,
    the previous handlers back after it (``main`` may be called from a program).
    Outside the main thread (where Python allows no handlers) nothing changes."""
    # imported here: `imgpipe --version` and `--help` exit before this, and pay nothing
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler()
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def leave_stuck_transfers(code: int) -> None:
    """After the interrupt line: if a transfer the run left behind is still stuck in a
    read (a stalled connection; the scheduler waited CANCEL_GRACE for it), exit now with
    ``code`` rather than wait for it at interpreter exit. Its ingest is consistent."""
    import sys
    import threading

    stuck = [
        t
        for t in threading.enumerate()
        if t.is_alive() and not t.daemon and t.name.partition("_")[0] in _POOLS
    ]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def message(exc: KeyboardInterrupt) -> str:
    """The line for an interrupt: the signal, and what the run kept for the next one."""
    from imgpipe.errors import Interrupted

    from .output import human_size

    reason = str(exc) or "interrupted"
    if not reason.startswith("interrupted"):
        reason = "interrupted"
    kept = exc.kept if isinstance(exc, Interrupted) else None
    if kept is None:
        return reason
    if kept.lease is None or kept.nothing:
        if not kept.sent:
            return reason
        size = human_size(sum(n for _, n in kept.sent))
        return (
            f"{reason}: the destination has the {len(kept.sent)} blob(s) ({size}) that were"
            " done; run the same command again to skip them"
        )
    parts = []
    if kept.blobs:
        size = human_size(sum(n for _, n in kept.blobs))
        parts.append(f"{len(kept.blobs)} committed blob(s) ({size})")
    if kept.partial:
        size = human_size(sum(n for _, n in kept.partial))
        parts.append(f"{len(kept.partial)} partial download(s) ({size})")
    if kept.snapshots:
        parts.append(f"{kept.snapshots} snapshot(s)")
    until = ""
    if kept.expires_at is not None:
        hours = max(0.0, kept.expires_at - time.time()) / 3600
        until = f", expires in {hours:.3g} h"
    return (
        f"{reason}: kept {' and '.join(parts)} under lease {kept.lease}{until};"
        " run the same command again to resume"
    )
