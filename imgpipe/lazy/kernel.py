"""The kernel side of a lazy mount: /dev/fuse, mount(2), and the EIO responder.

The owner process opens ``/dev/fuse`` and mounts it itself (no fusermount3, no second
mount by libfuse: the server is handed ``/dev/fd/N``). It keeps its copy of that fd for
the mount's whole life, so the kernel connection stays up when the server dies; the
:class:`Responder` then answers every request with ``-EIO``, so a reader gets an error
instead of hanging (and instead of ENOTCONN, which is what a dead daemon gives
stargz-snapshotter's users). Requests the server had read but not answered when it died
stay pending until the fd is closed (the kernel then aborts the connection).

Wire format (``include/uapi/linux/fuse.h``): a request starts with ``fuse_in_header``
(40 bytes: u32 len, u32 opcode, u64 unique, u64 nodeid, u32 uid, gid, pid, u16
total_extlen, u16 padding); a reply is ``fuse_out_header`` (16 bytes: u32 len, i32
error, u64 unique). FORGET, BATCH_FORGET and INTERRUPT take no reply.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import threading
from typing import Final

from imgpipe.formats.errors import FailedPrecondition, Unsupported

__all__ = ["MOUNT_TYPE", "Responder", "mount_fuse", "open_fuse"]

MOUNT_SOURCE: Final = "imgpipe-lazy"
MOUNT_TYPE: Final = "fuse.imgpipe"
_MS_RDONLY: Final = 0x1
_MS_NOSUID: Final = 0x2
_MS_NODEV: Final = 0x4

_IN_HEADER: Final = struct.Struct("=IIQQIIIHH")
_OUT_HEADER: Final = struct.Struct("=IiQ")
_FORGET: Final = 2
_INTERRUPT: Final = 36
_BATCH_FORGET: Final = 42
_NO_REPLY: Final = frozenset({_FORGET, _INTERRUPT, _BATCH_FORGET})
#: A request is at most max_write (1 MiB with max_pages 256) plus headers; the kernel
#: refuses reads into a buffer smaller than the next request.
_READ_BUFFER: Final = (1 << 20) + 8192


def open_fuse() -> int:
    """An fd on ``/dev/fuse`` (close-on-exec). Unsupported when there is none."""
    try:
        return os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Unsupported("lazy mounts need FUSE: there is no /dev/fuse") from None
    except PermissionError:
        raise Unsupported("lazy mounts need FUSE: /dev/fuse is not accessible") from None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_fuse(fd: int, target: str) -> None:
    """Mount the FUSE connection ``fd`` read-only, nosuid, nodev on ``target``.

    ``allow_other`` (so that a container's processes, whoever they are, may read it) and
    ``default_permissions`` (the kernel checks modes, as on any file system) only as root;
    Unsupported without the privilege, FailedPrecondition for any other refusal.
    """
    root = os.geteuid() == 0
    opts = f"fd={fd},rootmode=40000,user_id={os.geteuid()},group_id={os.getegid()}"
    opts += ",default_permissions" + (",allow_other" if root else "")
    flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV
    rc = _libc().mount(
        MOUNT_SOURCE.encode(), os.fsencode(target), MOUNT_TYPE.encode(), flags, opts.encode()
    )
    if rc != 0:
        err = ctypes.get_errno()
        what = f"mount {MOUNT_TYPE} on {target}"
        if err == errno.EPERM:
            raise Unsupported(f"{what}: not permitted (a lazy mount needs root)")
        if err == errno.ENODEV:
            raise Unsupported(f"{what}: the kernel has no FUSE")
        raise FailedPrecondition(f"{what}: {os.strerror(err)}")


class Responder:
    """Answers every request on ``fd`` with ``-EIO`` on a thread, from :meth:`start`
    until :meth:`stop` (or the connection ends: the mount is gone).

    Requests the dead server had read but not answered are in the kernel's processing
    list, where nothing but a reply with their ``unique`` ends them (a reader would wait
    until the fd is closed). The kernel numbers requests in order, so they are older than
    any request read now: :meth:`start` makes one (a STATFS of the mount ``probe``),
    and after answering the first request it reads, the responder answers
    each of the :data:`IN_FLIGHT_WINDOW` uniques before it with ``-EIO`` too; the
    kernel refuses (ENOENT) a reply to a unique it is not waiting for, so the others
    cost one failed write each (about 0.1 s for the whole window).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.answered = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread: threading.Thread | None = None

    def start(self, probe: str | None = None) -> None:
        """Start answering; ``probe``: the mount point, to ask STATFS of (see above)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="imgpipe-lazy-eio", daemon=True)
            self._thread.start()
            if probe is not None:
                threading.Thread(
                    target=_probe, args=(probe,), name="imgpipe-lazy-probe", daemon=True
                ).start()

    def stop(self) -> None:
        """Stop answering (idempotent); the fd stays open (the caller closes it)."""
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _reply(self, unique: int) -> bool:
        try:
            os.write(self.fd, _OUT_HEADER.pack(_OUT_HEADER.size, -errno.EIO, unique))
        except OSError:  # ENOENT: nobody waits for it (any more)
            return False
        self.answered += 1
        return True

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        swept = False
        while True:
            ready = dict(poller.poll())
            if self._wake_r in ready:
                return
            events = ready.get(self.fd, 0)
            if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                return
            try:
                data = os.read(self.fd, _READ_BUFFER)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: the request was interrupted meanwhile
                return  # ENODEV: the connection is gone (unmounted or aborted)
            if len(data) < _IN_HEADER.size:
                continue
            _, opcode, unique, *_ = _IN_HEADER.unpack_from(data)
            if opcode not in _NO_REPLY:
                self._reply(unique)
            if not swept:
                swept = True
                for older in range(unique - 1, max(unique - IN_FLIGHT_WINDOW, 0), -1):
                    self._reply(older)


#: How many requests before the first one the responder reads it answers as possibly
#: left in flight by the dead server (each unanswered request holds one; libfuse serves
#: with at most ten threads, and the kernel counts FORGETs and INTERRUPTs too).
IN_FLIGHT_WINDOW: Final = 1 << 16


def _probe(path: str) -> None:
    # STATFS: never cached, and it takes no inode lock (a LOOKUP would wait behind an
    # in-flight lookup of the same directory, which only the sweep can end)
    with contextlib.suppress(OSError):
        os.statvfs(path)
