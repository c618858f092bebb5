"""``<state dir>/state.json``: what a lazy mount is, and how far each layer has come.

Written atomically (a temporary file, fsync, rename) by the server while it lives and by
the owner after it died (so never by both at once); read by anyone (``ps``, ``umount``,
``rm``): the pids to stop, the mount point to take down, per layer the state
(``lazy`` -> ``prefetched`` -> ``complete``), bytes fetched and the error if any, and
``failure``, why the server is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

__all__ = [
    "COMPLETE",
    "LAZY",
    "PREFETCHED",
    "LayerState",
    "MountState",
    "alive",
    "read_state",
    "settled",
    "wait_state",
    "write_state",
]

LAZY: Final = "lazy"
PREFETCHED: Final = "prefetched"
COMPLETE: Final = "complete"
STATE_FILE: Final = "state.json"


@dataclass(frozen=True)
class LayerState:
    """One layer of a lazy mount: ``fetched`` compressed bytes of ``size``; ``error``
    is the last read or fetch that failed (naming the layer), or ""."""

    digest: str
    state: str = LAZY
    fetched: int = 0
    size: int = 0
    error: str = ""


@dataclass(frozen=True)
class MountState:
    """The whole state file."""

    mountpoint: str  # the FUSE mount (its layer dirs are the lowers)
    owner_pid: int
    server_pid: int = 0
    server_start: str = ""  # /proc/PID/stat start time: a reused pid is not ours
    owner_start: str = ""
    owner_stops: bool = False  # the owner is a `mount --lazy` process: SIGTERM stops it all
    target: str = ""  # where `mount --lazy` mounted the merged rootfs
    layers: tuple[LayerState, ...] = ()
    failure: str = ""
    background: str = ""  # the prefetch/background fetch: "" not started, running, done
    extra: dict[str, Any] = field(default_factory=dict)

    def with_layer(self, n: int, **changes: Any) -> MountState:
        layers = list(self.layers)
        layers[n] = replace(layers[n], **changes)
        return replace(self, layers=tuple(layers))


def read_state(state_dir: str | os.PathLike[str]) -> MountState:
    """The state in ``state_dir``; FileNotFoundError if there is none, ValueError if it
    does not parse."""
    raw = json.loads((Path(state_dir) / STATE_FILE).read_bytes())
    if not isinstance(raw, dict):
        raise ValueError("state.json is not an object")
    layers = tuple(LayerState(**x) for x in raw.pop("layers", []))
    return MountState(layers=layers, **raw)


def write_state(state_dir: str | os.PathLike[str], state: MountState) -> None:
    """Replace the state file atomically (readers see the old or the new one)."""
    d = Path(state_dir)
    data = json.dumps(asdict(state), indent=1).encode()
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / STATE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _stat_fields(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rpartition(")")[2].split()  # from field 3 (the state) on


def start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat), "" if it is gone."""
    fields = _stat_fields(pid)
    return fields[19] if fields else ""


def alive(pid: int, start: str) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` and has not
    exited (a zombie waiting for its parent to reap it is gone)."""
    fields = _stat_fields(pid)
    return bool(pid > 0 and start and fields and fields[19] == start and fields[0] not in "ZX")


_IN_CLOSE_WRITE: Final = 0x8
_IN_MOVED_TO: Final = 0x80
_IN_NONBLOCK: Final = os.O_NONBLOCK
_IN_CLOEXEC: Final = os.O_CLOEXEC


def wait_state(
    state_dir: str | os.PathLike[str], done: Callable[[MountState], bool], timeout: float
) -> MountState | None:
    """The state once ``done(state)`` holds, or None after ``timeout`` seconds. Woken by
    inotify when the state file is replaced (no polling)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    try:
        if libc.inotify_add_watch(fd, os.fsencode(state_dir), _IN_MOVED_TO | _IN_CLOSE_WRITE) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {state_dir}: {os.strerror(err)}")
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                state = read_state(state_dir)
                if done(state):
                    return state
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 4096):
                    pass
    finally:
        os.close(fd)


def settled(state: MountState) -> bool:
    """The background work is done (every layer complete or failed, or, without the
    background fetch, prefetched), or the server is gone: nothing more will change."""
    return bool(state.failure) or state.background == "done"
