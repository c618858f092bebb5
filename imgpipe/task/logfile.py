"""A detached container's output: ``<root>/tasks/<id>/container.log``.

One file for both streams, so ``imgpipe logs`` replays stdout and stderr in the order
the monitor read them. Each chunk is a frame with Docker's attach/stdcopy header (one
byte stream, three zero bytes, the payload size as a big-endian uint32), so any byte
the container writes is kept as it is (no JSON, no text decoding). The monitor writes a
last frame of stream :data:`END` carrying the exit status: a follower (``logs -f``)
stops there. The file is opened ``O_APPEND`` and written by the monitor alone.

Following waits for the file to grow with inotify (no polling); only a monitor that
died without writing its end frame is noticed by a liveness check once a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["END", "LOG_FILE", "STDERR", "STDOUT", "LogWriter", "copy_log", "frames"]

LOG_FILE: Final = "container.log"
STDOUT: Final = 1
STDERR: Final = 2
#: The last frame; its payload is the container's exit status in ASCII.
END: Final = 0xFF
_HEADER: Final = struct.Struct(">B3xI")
#: Bound on one frame's payload read back: the writer never writes more than this.
MAX_FRAME: Final = 1 << 20
#: Seconds between liveness checks of the monitor while following an idle log.
_LIVENESS_PERIOD: Final = 1.0
_IN_MODIFY: Final = 0x2
_IN_NONBLOCK_CLOEXEC: Final = os.O_NONBLOCK | os.O_CLOEXEC


class LogWriter:
    """Appends frames to a container's log (the monitor's side)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self, stream: int, data: bytes) -> None:
        for start in range(0, len(data), MAX_FRAME):
            part = data[start : start + MAX_FRAME]
            _write_all(self.fd, _HEADER.pack(stream, len(part)) + part)

    def end(self, code: int) -> None:
        self.write(END, str(code).encode())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def frames(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """The complete frames from ``f``'s position on; stops before a partial one (the
    position is left at its start, to read it again once it is whole)."""
    while True:
        pos = f.tell()
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            f.seek(pos)
            return
        stream, size = _HEADER.unpack(head)
        if size > MAX_FRAME:
            raise ValueError(f"corrupt log frame at byte {pos}: size {size}")
        data = f.read(size)
        if len(data) < size:
            f.seek(pos)
            return
        yield stream, data


def copy_log(
    path: Path,
    sinks: dict[int, Callable[[bytes], object]],
    *,
    follow: bool = False,
    alive: Callable[[], bool] = lambda: False,
) -> int | None:
    """Write the log's frames to ``sinks`` (by stream); with ``follow``, go on as it
    grows until the end frame, or until ``alive()`` says its writer is gone. The exit
    status of the end frame, or None if there is none (yet)."""
    with open(path, "rb") as f:
        if not follow:
            return _copy(f, sinks)
        ino = _inotify_watch(path)
        try:
            while True:
                code = _copy(f, sinks)
                if code is not None:
                    return code
                ready, _, _ = select.select([ino], [], [], _LIVENESS_PERIOD)
                if ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(ino, 4096)
                elif not alive():
                    return _copy(f, sinks)  # what it wrote before dying
        finally:
            os.close(ino)


def _copy(f: BinaryIO, sinks: dict[int, Callable[[bytes], object]]) -> int | None:
    for stream, data in frames(f):
        if stream == END:
            return int(data)
        sink = sinks.get(stream)
        if sink is not None:
            sink(data)
    return None


def _inotify_watch(path: Path) -> int:
    """An inotify fd that becomes readable when ``path`` is written to."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(_IN_NONBLOCK_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", str(path))
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
