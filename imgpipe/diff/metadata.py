"""An entry's metadata as the applier writes it: times, ownership, mode and xattrs.

Metadata goes to the fd we created (``fchown``, ``fsetxattr``, ``fchmod``, ``futimens``)
or by name with ``AT_SYMLINK_NOFOLLOW`` (CVE-2021-32760 was a chmod through a symlink),
in containerd's order: ``lchown`` (unless ``same_owner`` is off), xattrs, ``chmod``
(after chown, which clears set-id bits; never on symlinks), times.

xattrs (PAX ``SCHILY.xattr.*``): ``user.*`` and ``security.*`` are set (raw bytes:
tarfile hands binary values back as surrogate escapes); ``trusted.*`` (overlay's own
metadata lives there) and ``user.overlay.*`` (the same for userxattr mounts) are refused
with a warning, as is any other namespace. ENOTSUP, and EPERM for ``user.*`` on a
symlink or special file (a kernel rule), become warnings, as in containerd.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable
from typing import Final, NamedTuple

from imgpipe.formats.errors import MalformedDocument

__all__ = ["Meta", "Warn", "copy_meta_fd", "entry_times", "layer_xattrs", "meta_fd", "meta_name"]

_XATTR_PAX: Final = "SCHILY.xattr."
#: Latest time containerd's ``boundTime`` accepts (max int64 nanoseconds).
_MAX_NS: Final = 2**63 - 1

#: Where warnings go (the applier keeps a bounded list).
Warn = Callable[[str], None]


class Meta(NamedTuple):
    """An entry's ownership, permission bits and xattrs, as applied."""

    uid: int
    gid: int
    mode: int
    xattrs: list[tuple[str, bytes]]


def _pax_ns(member: tarfile.TarInfo, key: str, fallback: float | None) -> int | None:
    """A PAX time record as exact nanoseconds (tarfile's float loses the last digits)."""
    text = member.pax_headers.get(key)
    if text is not None:
        whole, _, frac = text.partition(".")
        try:
            sec = int(whole)
            ns = int((frac + "000000000")[:9]) if frac else 0
        except ValueError:
            raise MalformedDocument(f"{member.name!r}: bad PAX {key} {text!r}") from None
        return sec * 1_000_000_000 + (-ns if whole.startswith("-") else ns)
    if fallback is None:
        return None
    return int(fallback) * 1_000_000_000


def _bound(ns: int) -> int:
    # containerd's boundTime: outside [epoch, max] becomes the epoch.
    return ns if 0 <= ns <= _MAX_NS else 0


def entry_times(member: tarfile.TarInfo) -> tuple[int, int]:
    """``(atime, mtime)`` in nanoseconds; no atime means the mtime, and atime is never
    before the mtime."""
    mtime = _bound(_pax_ns(member, "mtime", member.mtime) or 0)
    atime_raw = _pax_ns(member, "atime", None)
    return (max(_bound(atime_raw), mtime) if atime_raw is not None else mtime), mtime


def _applied_xattr(name: str) -> bool:
    """xattr namespaces a layer may set (module docstring)."""
    return name.startswith(("user.", "security.")) and not name.startswith("user.overlay.")


def _carried_xattr(name: str) -> bool:
    """xattrs layers carry (what the differ exports): kept in sync on directory merges."""
    return name == "security.capability" or (
        name.startswith("user.") and not name.startswith("user.overlay.")
    )


def layer_xattrs(member: tarfile.TarInfo, warn: Warn) -> list[tuple[str, bytes]]:
    """The entry's xattrs a layer may set, as raw bytes; the others are warned about."""
    out: list[tuple[str, bytes]] = []
    for key, value in member.pax_headers.items():
        if not key.startswith(_XATTR_PAX):
            continue
        name = key[len(_XATTR_PAX) :]
        if not _applied_xattr(name):
            warn(f"{member.name!r}: xattr {name} refused")
            continue
        # tarfile decodes non-UTF-8 values with surrogate escapes: undo that.
        out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


def _set_xattr(target: int | str, where: str, name: str, value: bytes, warn: Warn) -> None:
    try:
        if isinstance(target, int):
            os.setxattr(target, name, value)
        else:
            os.setxattr(target, name, value, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            warn(f"{where!r}: xattr {name} not set: {e.strerror}")
            return
        raise


def meta_fd(
    fd: int,
    member: tarfile.TarInfo,
    meta: Meta,
    *,
    same_owner: bool,
    warn: Warn,
    merge: bool = False,
) -> None:
    """Owner, xattrs and mode of the file or directory open as ``fd``."""
    uid, gid, mode, xattrs = meta
    if same_owner:
        os.fchown(fd, uid, gid)
    if merge:
        # A directory entry over an existing directory describes its metadata in
        # full: xattrs of the namespaces layers carry that the entry lacks go (the
        # differ exports the same set; containerd leaves them, so apply(diff(a, b))
        # would keep a's). Overlay's trusted.* state is not touched.
        wanted = {k for k, _ in xattrs}
        for key in os.listxattr(fd):
            if key not in wanted and _carried_xattr(key):
                os.removexattr(fd, key)
    for key, value in xattrs:
        _set_xattr(fd, member.name, key, value, warn)
    # After chown (which clears set-id bits) and after security.capability.
    os.fchmod(fd, mode)


def meta_name(
    pfd: int,
    base: str,
    member: tarfile.TarInfo,
    meta: Meta,
    *,
    same_owner: bool,
    warn: Warn,
    symlink: bool,
) -> None:
    """Owner, xattrs and mode of ``base`` in ``pfd``, never through a final symlink."""
    uid, gid, mode, xattrs = meta
    if same_owner:
        os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
    if xattrs:
        # l*xattr has no *at form; the parent is named through its fd's /proc link
        # and the last component is not followed.
        path = f"/proc/self/fd/{pfd}/{base}"
        for key, value in xattrs:
            _set_xattr(path, member.name, key, value, warn)
    if not symlink:
        st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            return  # a hardlink to a symlink: nothing to chmod
        os.chmod(base, mode, dir_fd=pfd, follow_symlinks=False)


def copy_meta_fd(src: int, dst: int, st: os.stat_result, *, same_owner: bool, warn: Warn) -> None:
    """Copy-up: owner, xattrs (but overlay's ``trusted.*``), mode and times of ``src``
    (whose stat is ``st``) onto ``dst``."""
    if same_owner:
        os.fchown(dst, st.st_uid, st.st_gid)
    for key in os.listxattr(src):
        if key.startswith("trusted."):
            continue  # overlay's own state (opaque, redirect) must not be copied
        try:
            os.setxattr(dst, key, os.getxattr(src, key))
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            warn(f"copy-up: xattr {key} not copied: {e.strerror}")
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
