"""Mounting what a snapshotter returns: mount(2) and umount2(2) through ctypes.

A :class:`~imgpipe.snapshots.protocol.Mount` is containerd's ``mount.Mount``: a type, a
source and an option list in ``mount -o`` spelling. :func:`mount_all` turns the options
into mount(2) flags plus a data string, the way util-linux and containerd do:

* ``bind``/``rbind`` with ``ro`` is a bind followed by a read-only remount (the kernel
  ignores ``MS_RDONLY`` on the bind itself);
* propagation options (``private``, ``rslave``, ...) are applied by a second call;
* everything that is not a flag (``lowerdir=...``, ``index=off``) becomes the data string.

Deep overlay stacks
    The kernel copies at most one page of mount data, so an overlay with a hundred
    absolute ``lowerdir`` paths does not fit. Like containerd (``compactLowerdirOption``),
    when the data would reach ``pagesize - 512`` bytes the lower dirs are rewritten relative
    to their common parent and the mount is made from that directory: in a thread of its
    own that first calls ``unshare(CLONE_FS)``, so the ``chdir`` changes only that thread's
    working directory, never the process's. With snapshot ids as short numbers a layer then
    costs about eight bytes (``123/fs:``), which fits the kernel's overlay stack limit
    (:data:`OVERLAY_MAX_STACK` lower dirs) in one page. A data string that is still too
    long fails with ResourceLimit before any mount is tried.

Mounting needs ``CAP_SYS_ADMIN`` (root). Without it, :func:`direct_path` tells whether the
mounts are a plain bind of one directory that the caller can use in place.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from imgpipe.formats.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceLimit,
    Unsupported,
)

from .protocol import Mount

__all__ = [
    "OVERLAY_MAX_STACK",
    "PAGE_SIZE",
    "check_overlay",
    "compact_lowerdir",
    "direct_path",
    "is_mountpoint",
    "mount",
    "mount_all",
    "overlay_index_off",
    "parse_options",
    "unmount",
]

#: The kernel copies at most one page of mount data (``copy_mount_options``).
PAGE_SIZE: Final = os.sysconf("SC_PAGESIZE")

#: containerd switches to relative lower dirs once the data reaches this many bytes,
#: leaving room for the option names and separators it adds around the paths.
_COMPACT_THRESHOLD: Final = PAGE_SIZE - 512

#: The kernel's limit on lower layers of one overlay (``OVL_MAX_STACK`` in
#: fs/overlayfs: 500 since Linux 4.x, unchanged through 6.x). Checked up front so a too
#: deep image fails with a message naming the limit, not a bare EINVAL.
OVERLAY_MAX_STACK: Final = 500

# <sys/mount.h>
_MS_RDONLY: Final = 0x1
_MS_NOSUID: Final = 0x2
_MS_NODEV: Final = 0x4
_MS_NOEXEC: Final = 0x8
_MS_SYNCHRONOUS: Final = 0x10
_MS_REMOUNT: Final = 0x20
_MS_MANDLOCK: Final = 0x40
_MS_DIRSYNC: Final = 0x80
_MS_NOATIME: Final = 0x400
_MS_NODIRATIME: Final = 0x800
_MS_BIND: Final = 0x1000
_MS_REC: Final = 0x4000
_MS_UNBINDABLE: Final = 0x20000
_MS_PRIVATE: Final = 0x40000
_MS_SLAVE: Final = 0x80000
_MS_SHARED: Final = 0x100000
_MS_RELATIME: Final = 0x200000
_MS_STRICTATIME: Final = 0x1000000
_MNT_DETACH: Final = 0x2
_CLONE_FS: Final = 0x200

# option -> (clear?, flag): the table of util-linux's mount(8) for the flags we honour.
_FLAGS: Final[dict[str, tuple[bool, int]]] = {
    "async": (True, _MS_SYNCHRONOUS),
    "atime": (True, _MS_NOATIME),
    "bind": (False, _MS_BIND),
    "defaults": (False, 0),
    "dev": (True, _MS_NODEV),
    "diratime": (True, _MS_NODIRATIME),
    "dirsync": (False, _MS_DIRSYNC),
    "exec": (True, _MS_NOEXEC),
    "mand": (False, _MS_MANDLOCK),
    "noatime": (False, _MS_NOATIME),
    "nodev": (False, _MS_NODEV),
    "nodiratime": (False, _MS_NODIRATIME),
    "noexec": (False, _MS_NOEXEC),
    "nomand": (True, _MS_MANDLOCK),
    "norelatime": (True, _MS_RELATIME),
    "nostrictatime": (True, _MS_STRICTATIME),
    "nosuid": (False, _MS_NOSUID),
    "rbind": (False, _MS_BIND | _MS_REC),
    "relatime": (False, _MS_RELATIME),
    "remount": (False, _MS_REMOUNT),
    "ro": (False, _MS_RDONLY),
    "rw": (True, _MS_RDONLY),
    "strictatime": (False, _MS_STRICTATIME),
    "suid": (True, _MS_NOSUID),
    "sync": (False, _MS_SYNCHRONOUS),
}

_PROPAGATION: Final[dict[str, int]] = {
    "private": _MS_PRIVATE,
    "rprivate": _MS_PRIVATE | _MS_REC,
    "shared": _MS_SHARED,
    "rshared": _MS_SHARED | _MS_REC,
    "slave": _MS_SLAVE,
    "rslave": _MS_SLAVE | _MS_REC,
    "unbindable": _MS_UNBINDABLE,
    "runbindable": _MS_UNBINDABLE | _MS_REC,
}


@functools.cache
def _lib() -> ctypes.CDLL:
    # Loaded on first use, not at import: importing imgpipe must not touch libc.
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    lib.mount.restype = ctypes.c_int
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.umount2.restype = ctypes.c_int
    lib.unshare.argtypes = [ctypes.c_int]
    lib.unshare.restype = ctypes.c_int
    return lib


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def _sys_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    rc = _lib().mount(_b(source), _b(target), _b(fstype), flags, _b(data) if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def parse_options(options: Sequence[str]) -> tuple[int, int, str]:
    """``(flags, propagation flags, data)`` for a ``mount -o`` style option list.

    Pure: no system call. Options not in the flag tables go, in order, into the data
    string that the file system parses (``lowerdir=...``, ``subvol=...``).
    """
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def compact_lowerdir(options: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """Rewrite ``lowerdir=`` relative to the lower dirs' common parent if the data
    string would not fit one mount page; returns ``(cwd, options)``.

    ``cwd`` is None (and ``options`` unchanged) when the absolute form fits or there is
    no ``lowerdir``. Pure: no system call. ResourceLimit when even the relative form does
    not fit in a page, or when there are more than :data:`OVERLAY_MAX_STACK` lower dirs.
    """
    options = tuple(options)
    lower_at = [i for i, o in enumerate(options) if o.startswith("lowerdir=")]
    if not lower_at:
        return None, options
    idx = lower_at[-1]
    lowers = options[idx][len("lowerdir=") :].split(":")
    if len(lowers) > OVERLAY_MAX_STACK:
        raise ResourceLimit(
            f"overlay mount with {len(lowers)} lower layers: the kernel stacks at most "
            f"{OVERLAY_MAX_STACK}"
        )
    _, _, data = parse_options(options)
    if len(data) < _COMPACT_THRESHOLD:
        return None, options
    if not all(os.path.isabs(d) for d in lowers):
        raise InvalidArgument("overlay lowerdir paths must be absolute to be compacted")
    common = os.path.commonpath(lowers)
    rel = [os.path.relpath(d, common) for d in lowers]
    new = (*options[:idx], "lowerdir=" + ":".join(rel), *options[idx + 1 :])
    _, _, data = parse_options(new)
    if len(data) >= PAGE_SIZE:
        raise ResourceLimit(
            f"overlay mount options are {len(data)} bytes even with relative lower dirs; "
            f"the kernel takes at most {PAGE_SIZE - 1}"
        )
    return common, new


def _mount_in(cwd: str, source: str, target: str, *, fstype: str, flags: int, data: str) -> None:
    """mount(2) from ``cwd``, in a thread whose working directory is its own."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            # CLONE_FS unshares cwd/root/umask for this thread only: the chdir below cannot
            # move the working directory of the rest of the process. The thread then ends,
            # so its private fs state is never reused.
            if _lib().unshare(_CLONE_FS) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
            os.chdir(cwd)
            _sys_mount(source, target, fstype, flags, data)
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run, name="imgpipe-mount", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]


def _mount_error(m: Mount, target: Path, e: OSError) -> Exception:
    what = f"mount {m.type} {m.source} on {target}"
    if e.errno == errno.EPERM:
        return Unsupported(f"{what}: not permitted (mounting needs root / CAP_SYS_ADMIN)")
    if e.errno == errno.ENODEV:
        return Unsupported(f"{what}: the kernel does not support file system type {m.type!r}")
    return FailedPrecondition(f"{what}: {os.strerror(e.errno or 0)}")


def mount(m: Mount, target: str | os.PathLike[str]) -> None:
    """Mount one :class:`Mount` on the existing directory ``target``.

    Raises Unsupported without the privilege to mount or for an unknown file system type,
    ResourceLimit for an overlay too deep for one mount, FailedPrecondition for any other
    refusal (missing source, bad options), with the errno chained.
    """
    tgt = Path(os.path.abspath(target))
    flags, propagation, data = parse_options(m.options)
    cwd = m.target_cwd
    options = m.options
    if m.type == "overlay" and cwd is None:
        cwd, options = compact_lowerdir(m.options)
        flags, propagation, data = parse_options(options)
    if data and len(data) >= PAGE_SIZE:
        raise ResourceLimit(f"mount options for {tgt} are {len(data)} bytes, over one page")
    bind_ro = bool(flags & _MS_BIND) and bool(flags & _MS_RDONLY)
    try:
        if cwd is not None:
            _mount_in(cwd, m.source, str(tgt), fstype=m.type, flags=flags, data=data)
        else:
            _sys_mount(m.source, str(tgt), m.type, flags, data)
        if bind_ro:
            # A bind ignores MS_RDONLY: make it read-only with a remount of that bind.
            remount = _MS_REMOUNT | _MS_BIND | (flags & ~_MS_REC)
            try:
                _sys_mount(None, str(tgt), None, remount, "")
            except OSError:
                _umount(str(tgt), 0)
                raise
        if propagation:
            _sys_mount(None, str(tgt), None, propagation, "")
    except OSError as e:
        raise _mount_error(m, tgt, e) from e


def mount_all(mounts: Sequence[Mount], target: str | os.PathLike[str]) -> None:
    """Mount ``mounts`` in order on ``target`` (each on top of the previous).

    All or nothing: if one fails, those already made are unmounted before the error
    (see :func:`mount`) is raised. InvalidArgument for an empty list.
    """
    if not mounts:
        raise InvalidArgument(f"nothing to mount on {target}")
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            _umount(os.fspath(target), _MNT_DETACH)
        raise


def _umount(target: str, flags: int) -> int:
    """umount2; returns 0 or the errno."""
    if _lib().umount2(_b(target), flags) != 0:
        return ctypes.get_errno()
    return 0


#: Bound on stacked mounts unmount() peels off one target, so a loop cannot spin forever.
_MAX_STACKED_MOUNTS: Final = 64


def unmount(target: str | os.PathLike[str], *, detach: bool = False) -> None:
    """Unmount everything mounted on ``target`` (stacked mounts too). Idempotent: a
    target that is not a mount point, or does not exist, is left as it is.

    ``detach`` makes it lazy (``MNT_DETACH``): gone from the tree now, released when no
    longer busy. Raises FailedPrecondition when the mount is busy and
    ``detach`` is false, Unsupported without the privilege to unmount.
    """
    tgt = os.path.abspath(target)
    flags = _MNT_DETACH if detach else 0
    for _ in range(_MAX_STACKED_MOUNTS):
        err = _umount(tgt, flags)
        if err == 0:
            continue
        if err in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount point
            return
        if err == errno.EPERM:
            raise Unsupported(f"unmount {tgt}: not permitted (needs root / CAP_SYS_ADMIN)")
        if err == errno.EBUSY:
            raise FailedPrecondition(f"unmount {tgt}: busy (a process uses it)")
        raise FailedPrecondition(f"unmount {tgt}: {os.strerror(err)}")
    raise FailedPrecondition(f"unmount {tgt}: more than {_MAX_STACKED_MOUNTS} stacked mounts")


_OCTAL_ESCAPE: Final = re.compile(rb"\\([0-7]{3})")


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the mount point of some mount (read from mountinfo, so bind
    mounts of a directory on its own file system count too)."""
    want = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            # the 5th field; mountinfo escapes space, tab, newline and backslash as \ooo
            point = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), line.split(b" ", 5)[4])
            if point == want:
                return True
    return False


def direct_path(mounts: Sequence[Mount]) -> Path | None:
    """The directory ``mounts`` would show, if they are one bind mount of it; else None.

    Without the privilege to mount, a caller may read (or, for a read-write bind, write)
    that directory in place: that is how the native snapshotter works without root.
    """
    if len(mounts) != 1:
        return None
    m = mounts[0]
    if m.type != "bind" and "bind" not in m.options and "rbind" not in m.options:
        return None
    return Path(m.source)


def overlay_index_off() -> tuple[str, ...]:
    """``("index=off",)`` when the kernel's overlay has the ``index`` feature, like
    containerd: with the index on, a layer directory can only be mounted with the
    upper/work pair it was first used with, which snapshots do not keep."""
    if os.path.exists("/sys/module/overlay/parameters/index"):
        return ("index=off",)
    return ()


def check_overlay(probe_root: str | os.PathLike[str]) -> None:
    """Check that overlayfs works with upper and work dirs under ``probe_root``.

    Like containerd's ``overlayutils.Supported``: mounts a two-lower overlay in a
    temporary directory there and unmounts it. Raises Unsupported saying why it does not
    (not root, no overlay in the kernel, the file system refuses to be an upper dir).
    """
    if os.geteuid() != 0:
        raise Unsupported("overlay needs root (mounting needs CAP_SYS_ADMIN)")
    # No look at /proc/filesystems: the module may load on demand at the first mount,
    # so only a real mount tells.
    Path(probe_root).mkdir(parents=True, exist_ok=True)
    import tempfile  # noqa: PLC0415 (only the probe: not on every run)

    tmp = tempfile.mkdtemp(prefix="overlay-check-", dir=probe_root)
    try:
        for d in ("lower1", "lower2", "upper", "work", "merged"):
            os.mkdir(os.path.join(tmp, d))
        opts = (
            *overlay_index_off(),
            f"lowerdir={tmp}/lower2:{tmp}/lower1",
            f"upperdir={tmp}/upper",
            f"workdir={tmp}/work",
        )
        merged = os.path.join(tmp, "merged")
        try:
            mount(Mount("overlay", "overlay", opts), merged)
        except (Unsupported, FailedPrecondition) as e:
            raise Unsupported(f"overlay does not work on {probe_root}: {e}") from e
        unmount(merged, detach=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
