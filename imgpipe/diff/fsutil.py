"""Directory-fd helpers: resolve paths *inside* a root, remove trees without following links.

The security argument of the layer applier rests on this module, so it is small and
says why at each step.

Every path a layer names is resolved relative to an open directory fd of the root, with
the root acting as ``/``: an absolute symlink target restarts at the root, ``..`` at the
root stays at the root, and a chain of more than :data:`MAX_SYMLINK_HOPS` links is an
error. That is containerd's ``fs.RootPath`` rule (continuity), done on file descriptors
instead of strings so that what we checked is what we use.

Two implementations give the same answers:

* ``openat2(2)`` with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` (Linux 5.6+, called
  through ctypes as syscall 437): the kernel does the whole walk atomically. Its symlink
  budget is the kernel's (40 hops), stricter than containerd's 255; both end in ELOOP.
* a userspace walk, one component at a time with ``O_NOFOLLOW``, which is also what
  creates missing parent directories (``mkdir -p`` semantics through in-root symlinks,
  as containerd's ``mkparent`` does after ``RootPath``).

openat2 is the fast path when it exists; ENOENT (a parent to create) falls through to
the walk, and ENOSYS/EPERM (old kernel, seccomp filters) switch it off for the process.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable, Sequence
from typing import Final

from imgpipe.errors import MalformedDocument
from imgpipe.rootpath import (
    AT_FDCWD,
    MAX_SYMLINK_HOPS,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    openat2,
)

__all__ = [
    "MAX_SYMLINK_HOPS",
    "DirResolver",
    "NotADirectoryInRoot",
    "clean_components",
    "openat2_available",
    "remove_all",
]


#: Flags for every directory we open: readable (for scandir and fsetxattr), never a
#: symlink, closed on exec.
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_NOFOLLOW: Final = _DIR_FLAGS | os.O_NOFOLLOW
#: mkdir then open can only fail again if another process races us; do not spin.
_MAX_MKDIR_RETRIES: Final = 10_000


class NotADirectoryInRoot(MalformedDocument):
    """A path needs a directory where the tree has another kind of file."""


@functools.cache
def openat2_available() -> bool:
    """Whether ``openat2`` with ``RESOLVE_IN_ROOT`` works in this process (probed once)."""
    try:
        fd = openat2(AT_FDCWD, "/", _DIR_FLAGS, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    except OSError:
        # ENOSYS before 5.6; EPERM/ENOSYS from seccomp profiles that predate it.
        return False
    os.close(fd)
    return True


def clean_components(name: str) -> list[str]:
    """Lexically clean a path from a tar header into components.

    As Go's ``filepath.Clean`` followed by joining onto the root: empty and ``.``
    components vanish, ``..`` removes the previous component and is dropped at the top
    (the root is its own parent). A leading ``/`` is thus harmless. The result holds no
    ``.``, ``..`` or empty component; an empty list means the root itself.
    """
    out: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if out:
                out.pop()
            continue
        out.append(comp)
    return out


#: Called after the walk created directory ``name`` in ``parent_fd``; ``resolved`` is
#: its in-root path (components), for copying metadata from lower layers.
MkdirHook = Callable[[int, str, Sequence[str]], None]


class DirResolver:
    """Open directories of one root by in-root resolution.

    Not thread-safe; one per apply. ``close()`` releases the root fd.
    """

    def __init__(self, root: str | os.PathLike[str], *, use_openat2: bool | None = None) -> None:
        # The root itself is trusted (the caller chose it); only what is below it is not.
        self.root_fd = os.open(root, _DIR_FLAGS)
        self._use_openat2 = openat2_available() if use_openat2 is None else use_openat2
        if self._use_openat2 and not openat2_available():
            self._use_openat2 = False

    @property
    def usesopenat2(self) -> bool:
        return self._use_openat2

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __enter__(self) -> DirResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_dir(
        self,
        components: Sequence[str],
        *,
        create: bool = False,
        mkdir_hook: MkdirHook | None = None,
    ) -> int:
        """A new fd (the caller closes it) of the directory at ``components`` in the root.

        Symlinks on the way are followed inside the root. With ``create``, missing
        directories are made (mode 0755 before umask, as containerd's ``mkparent``), and
        ``mkdir_hook`` runs for each. Raises FileNotFoundError when a component is missing
        and ``create`` is false, NotADirectoryInRoot when one is not a directory, and
        MalformedDocument for a symlink loop.
        """
        if not components:
            return os.dup(self.root_fd)
        if self._use_openat2:
            try:
                return openat2(
                    self.root_fd,
                    "/".join(components),
                    _DIR_FLAGS,
                    RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
                )
            except OSError as e:
                if e.errno == errno.ENOENT:
                    if not create:
                        raise FileNotFoundError(
                            errno.ENOENT, "no such directory in the root", "/".join(components)
                        ) from None
                elif e.errno == errno.ENOTDIR:
                    raise NotADirectoryInRoot(
                        f"{'/'.join(components)!r}: a parent is not a directory"
                    ) from None
                elif e.errno == errno.ELOOP:
                    raise MalformedDocument(
                        f"{'/'.join(components)!r}: too many levels of symbolic links"
                    ) from None
                elif e.errno in (errno.ENOSYS, errno.EPERM):
                    self._use_openat2 = False
                elif e.errno not in (errno.EAGAIN, errno.EXDEV):
                    # EAGAIN/EXDEV: the kernel saw a concurrent rename; the walk retries.
                    raise
        return self._walk(components, create=create, mkdir_hook=mkdir_hook)

    def _walk(
        self, components: Sequence[str], *, create: bool, mkdir_hook: MkdirHook | None
    ) -> int:
        # fds[i] is the directory reached after names[i]; the root is below both stacks,
        # so ".." pops and, at the root, stays (clamped, like RootPath).
        fds: list[int] = []
        names: list[str] = []
        pending = list(reversed(components))
        hops = 0
        retries = 0
        try:
            while pending:
                comp = pending.pop()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if fds:
                        os.close(fds.pop())
                        names.pop()
                    continue
                cur = fds[-1] if fds else self.root_fd
                try:
                    fd = os.open(comp, _DIR_NOFOLLOW, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        raise
                    retries += 1
                    if retries > _MAX_MKDIR_RETRIES:
                        raise MalformedDocument(
                            f"{'/'.join(components)!r}: directory keeps vanishing"
                        ) from None
                    try:
                        os.mkdir(comp, 0o755, dir_fd=cur)
                    except FileExistsError:
                        pass  # made by someone else meanwhile: open it on the next turn
                    else:
                        if mkdir_hook is not None:
                            mkdir_hook(cur, comp, [*names, comp])
                    pending.append(comp)
                    continue
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise NotADirectoryInRoot(
                            f"{'/'.join([*names, comp])!r} is not a directory"
                        ) from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise MalformedDocument(
                            f"{'/'.join(components)!r}: more than {MAX_SYMLINK_HOPS} symlinks"
                        ) from None
                    target = os.readlink(comp, dir_fd=cur)
                    if target.startswith("/"):
                        # An absolute target is re-rooted: it restarts at our root.
                        for f in fds:
                            os.close(f)
                        fds.clear()
                        names.clear()
                    pending.extend(reversed(target.split("/")))
                    continue
                fds.append(fd)
                names.append(comp)
            return fds.pop() if fds else os.dup(self.root_fd)
        finally:
            for f in fds:
                os.close(f)


def remove_all(dir_fd: int, name: str) -> bool:
    """``rm -rf`` of ``name`` in ``dir_fd``, never following a symlink; False if absent.

    Iterative (a deep tree cannot exhaust Python's recursion), every step relative to an
    fd opened with ``O_NOFOLLOW``, so a symlink inside is removed, not followed.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return True
    # Each frame: (parent fd, name, own fd); we own every fd except the caller's.
    stack: list[tuple[int, str, int]] = [
        (dir_fd, name, os.open(name, _DIR_NOFOLLOW, dir_fd=dir_fd))
    ]
    try:
        while stack:
            parent, dname, fd = stack[-1]
            descended = False
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        sub = os.open(entry.name, _DIR_NOFOLLOW, dir_fd=fd)
                        stack.append((fd, entry.name, sub))
                        descended = True
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if descended:
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=parent)
    finally:
        for _, _, fd in stack:
            os.close(fd)
    return True
