"""Whiteouts (OCI image-spec ``layer.md``), per :attr:`ApplyOptions.whiteouts`:

* ``delete``: ``.wh.<name>`` removes ``<name>``; ``.wh..wh..opq`` removes from its
  directory everything this layer did not itself create (inodes this layer made are
  remembered, so the marker's position in the tar does not matter).
* ``overlay``: ``.wh.<name>`` becomes a 0:0 character device, ``.wh..wh..opq`` the xattr
  ``trusted.overlay.opaque=y`` on the directory (containerd's ``OverlayConvertWhiteout``).
* ``overlay-user``: the same with ``user.overlay.opaque`` for ``userxattr`` mounts (what
  umoci's ``UserXattr`` mode writes; containerd itself has no such mode).

A whiteout whose name would leave its directory (``.wh.``, ``.wh..``, ``.wh...``) is an
error, as in containerd's ``validateWhiteout``. Removal never follows a symlink
(:func:`imgpipe.fs.remove_all`), and every removal drops the parent-fd cache.
"""

from __future__ import annotations

import os
import stat
import tarfile
from typing import Any, Final

from imgpipe.formats.errors import MalformedDocument
from imgpipe.fs import DIR_NOFOLLOW, remove_all

from .options import MAX_ID, WHITEOUT_DELETE, WHITEOUT_OVERLAY_USER
from .state import ApplyState

__all__ = ["WH_OPAQUE", "WH_PREFIX", "apply_whiteout"]

WH_PREFIX: Final = ".wh."
WH_OPAQUE: Final = ".wh..wh..opq"


def apply_whiteout(state: ApplyState, member: tarfile.TarInfo, pfd: int, base: str) -> None:
    """Apply the whiteout entry ``base`` (``.wh.*``) in the directory ``pfd``."""
    mode = state.opts.whiteouts
    if base == WH_OPAQUE:
        if mode == WHITEOUT_DELETE:
            _opaque_delete(state, pfd)
        else:
            key = (
                "user.overlay.opaque" if mode == WHITEOUT_OVERLAY_USER else "trusted.overlay.opaque"
            )
            os.setxattr(pfd, key, b"y")
        return
    victim = base[len(WH_PREFIX) :]
    if victim in ("", ".", "..") or "/" in victim:
        raise MalformedDocument(f"{member.name!r}: invalid whiteout name")
    if remove_all(pfd, victim):
        state.clear_cache()
    if mode == WHITEOUT_DELETE:
        return
    os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
    if state.same_owner:
        uid, gid = member.uid, member.gid
        if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
            raise MalformedDocument(f"{member.name!r}: uid/gid {uid}/{gid} out of range")
        os.chown(victim, uid, gid, dir_fd=pfd, follow_symlinks=False)


def _opaque_delete(state: ApplyState, dir_fd: int) -> None:
    # Remove, recursively, whatever this layer did not create, so lower layers'
    # content disappears whether the marker comes before or after this layer's
    # children. A directory this layer did not create survives only if something it
    # holds was created by this layer (containerd removes it with that content when
    # the layer lists the child but not the directory: a quirk not copied).
    # Post-order walk on an explicit stack: frames are [fd, entries, keep, name].
    removed = False
    stack: list[list[Any]] = [[os.dup(dir_fd), None, True, ""]]
    try:
        while stack:
            frame = stack[-1]
            fd = frame[0]
            if frame[1] is None:
                with os.scandir(fd) as it:
                    frame[1] = iter(list(it))
            descended = False
            for entry in frame[1]:
                st = entry.stat(follow_symlinks=False)
                made = (st.st_dev, st.st_ino) in state.made
                if stat.S_ISDIR(st.st_mode):
                    sub = os.open(entry.name, DIR_NOFOLLOW, dir_fd=fd)
                    stack.append([sub, None, made, entry.name])
                    descended = True
                    break
                if made:
                    frame[2] = True
                else:
                    os.unlink(entry.name, dir_fd=fd)
                    removed = True
            if descended:
                continue
            stack.pop()
            os.close(fd)
            if stack:
                if frame[2]:
                    stack[-1][2] = True
                else:
                    os.rmdir(frame[3], dir_fd=stack[-1][0])
                    removed = True
    finally:
        for frame in stack:
            os.close(frame[0])
    if removed:
        state.clear_cache()
