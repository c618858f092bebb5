"""Resolve paths *inside* a root directory, as if it were ``/`` (a chroot, without one).

The security argument of the layer applier and of the USER lookup rests on this module,
so it is small and says why at each step.

Every path an image names is resolved relative to an open directory fd of the root, with
the root acting as ``/``: an absolute symlink target restarts at the root, ``..`` at the
root stays at the root, and a chain of more than :data:`MAX_SYMLINK_HOPS` links is an
error. That is containerd's ``fs.RootPath`` rule (continuity), done on file descriptors
instead of strings so that what we checked is what we use.

Two implementations give the same answers:

* ``openat2(2)`` with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` (Linux 5.6+,
  :mod:`imgpipe.fs.openat2`): the kernel does the whole walk atomically. Its symlink
  budget is the kernel's (40 hops), stricter than containerd's 255; both end in ELOOP.
* :func:`walk_in_root`, a userspace walk, one component at a time with ``O_NOFOLLOW`` (the
  kernel never follows a link for us), link targets spliced into the remaining path. It
  is also what creates missing parent directories (``mkdir -p`` semantics through
  in-root symlinks, as containerd's ``mkparent`` does after ``RootPath``).

openat2 is the fast path when it exists; ENOENT (a parent to create) falls through to
the walk, EAGAIN/EXDEV (the kernel saw a concurrent rename) retry with the walk, and
ENOSYS/EPERM (old kernel, seccomp filters) switch it off for the resolver.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Sequence
from typing import Final

from imgpipe.formats.errors import MalformedDocument

from .fdutil import DIR_FLAGS, DIR_NOFOLLOW
from .openat2 import O_PATH, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2, openat2_available

__all__ = [
    "MAX_SYMLINK_HOPS",
    "MkdirHook",
    "NotADirectoryInRoot",
    "RootResolver",
    "clean_components",
    "open_in_root",
    "walk_in_root",
]

#: containerd's (continuity's) limit on symlinks followed while resolving one path.
MAX_SYMLINK_HOPS: Final = 255
_IN_ROOT: Final = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
#: The last component of :meth:`RootResolver.open_path`: any file type, not followed
#: by the kernel (a symlink there is followed by us, inside the root).
_PATH_NOFOLLOW: Final = O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: mkdir then open can only fail again if another process races us; do not spin.
_MAX_MKDIR_RETRIES: Final = 10_000


class NotADirectoryInRoot(MalformedDocument):
    """A path needs a directory where the tree has another kind of file."""


#: Called after the walk created directory ``name`` in ``parent_fd``; ``resolved`` is
#: its in-root path (components), for copying metadata from lower layers.
MkdirHook = Callable[[int, str, Sequence[str]], None]


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


def walk_in_root(
    root_fd: int,
    path: Sequence[str],
    *,
    leaf: bool = False,
    create: bool = False,
    mkdir_hook: MkdirHook | None = None,
) -> int:
    """The userspace form of ``RESOLVE_IN_ROOT``: a new fd of ``path`` (components, which
    may hold ``""``, ``.`` and ``..``) resolved inside ``root_fd``; the caller closes it.

    Every component is a directory, opened ``O_DIRECTORY | O_NOFOLLOW``, except with
    ``leaf`` the last one, opened ``O_PATH | O_NOFOLLOW`` whatever its type (a symlink
    there is followed too). With ``create``, missing directories are made (0755 before
    umask) and ``mkdir_hook`` runs for each. Raises as the kernel would inside a chroot:
    FileNotFoundError, OSError(ENOTDIR) and OSError(ELOOP) after :data:`MAX_SYMLINK_HOPS`.
    """
    if isinstance(path, str):  # a str is a Sequence[str] too, of one-letter names
        raise TypeError("walk_in_root takes path components, not a str")
    # fds[i] is the directory reached after names[i]; the root is below both stacks,
    # so ".." pops and, at the root, stays (clamped, like RootPath).
    fds: list[int] = []
    names: list[str] = []
    pending = list(reversed(path))
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
            cur = fds[-1] if fds else root_fd
            # A trailing "/" or "." leaves something pending: then it must be a directory.
            last = leaf and not pending
            try:
                fd = os.open(comp, _PATH_NOFOLLOW if last else DIR_NOFOLLOW, dir_fd=cur)
            except FileNotFoundError:
                if not create:
                    raise
                retries += 1
                if retries > _MAX_MKDIR_RETRIES:
                    raise MalformedDocument(
                        f"{'/'.join(path)!r}: directory keeps vanishing"
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
                # O_NOFOLLOW on a symlink: ELOOP; O_DIRECTORY on another file: ENOTDIR.
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                fd = -1
            if fd >= 0:
                if not last or not stat.S_ISLNK(os.fstat(fd).st_mode):
                    fds.append(fd)
                    names.append(comp)
                    continue
                os.close(fd)  # an O_PATH fd of the link itself: follow it instead
            elif not stat.S_ISLNK(os.stat(comp, dir_fd=cur, follow_symlinks=False).st_mode):
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), "/".join([*names, comp])
                )
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), "/".join(path))
            target = os.readlink(comp, dir_fd=cur)
            if target.startswith("/"):
                # An absolute target is re-rooted: it restarts at our root.
                for f in fds:
                    os.close(f)
                fds.clear()
                names.clear()
            pending.extend(reversed(target.split("/")))
        return fds.pop() if fds else os.dup(root_fd)
    finally:
        for f in fds:
            os.close(f)


class RootResolver(contextlib.AbstractContextManager["RootResolver"]):
    """Open files of one root by in-root resolution: openat2 when the kernel has it, the
    walk otherwise (and to create parents).

    ``use_openat2``: None uses openat2 when this process can; False forces the walk
    (tests run both); True is a request, ignored without kernel support. Not
    thread-safe; one per apply. ``close()`` releases the root fd.
    """

    def __init__(self, root: str | os.PathLike[str], *, use_openat2: bool | None = None) -> None:
        # The root itself is trusted (the caller chose it); only what is below it is not.
        self.root_fd = os.open(root, DIR_FLAGS)
        self._use_openat2 = use_openat2 is not False and openat2_available()

    @property
    def uses_openat2(self) -> bool:
        return self._use_openat2

    def close(self) -> None:
        fd, self.root_fd = self.root_fd, -1
        if fd >= 0:
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kernel(self, path: str, flags: int, *, create: bool = False) -> int:
        """openat2's fd of ``path``, or -1 when the walk must do it; OSError as the walk
        raises them."""
        try:
            return openat2(self.root_fd, path, flags, _IN_ROOT)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EPERM):
                self._use_openat2 = False
            elif not (
                (e.errno == errno.ENOENT and create) or e.errno in (errno.EAGAIN, errno.EXDEV)
            ):
                raise
        return -1

    def open_path(self, path: str) -> int:
        """An ``O_PATH`` fd of ``path`` (absolute or relative, it makes no difference: the
        root is ``/``), the last component followed if it is a symlink.

        Raises FileNotFoundError, NotADirectoryError or OSError(ELOOP) as the kernel
        would inside a chroot.
        """
        if self._use_openat2:
            # "" would be ENOENT: the root itself is "." (the walk agrees)
            fd = self._kernel(path.lstrip("/") or ".", O_PATH | os.O_CLOEXEC)
            if fd >= 0:
                return fd
        return walk_in_root(self.root_fd, path.split("/"), leaf=True)

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
        try:
            if self._use_openat2:
                fd = self._kernel("/".join(components), DIR_FLAGS, create=create)
                if fd >= 0:
                    return fd
            return walk_in_root(self.root_fd, components, create=create, mkdir_hook=mkdir_hook)
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                raise NotADirectoryInRoot(
                    f"{'/'.join(components)!r}: a component is not a directory"
                ) from None
            if e.errno == errno.ELOOP:
                raise MalformedDocument(
                    f"{'/'.join(components)!r}: too many levels of symbolic links"
                ) from None
            raise

    def lstat(self, components: Sequence[str]) -> tuple[int, os.stat_result] | None:
        """``(parent fd, lstat)`` of the non-empty path ``components``, or None when it
        is missing or a parent is not a directory; the caller closes the fd."""
        try:
            pfd = self.open_dir(components[:-1])
        except (FileNotFoundError, NotADirectoryInRoot):
            return None
        try:
            st = os.stat(components[-1], dir_fd=pfd, follow_symlinks=False)
        except BaseException as e:
            os.close(pfd)
            if isinstance(e, FileNotFoundError):
                return None
            raise
        return pfd, st


def open_in_root(
    root: str | os.PathLike[str], path: str, *, use_openat2: bool | None = None
) -> int:
    """An ``O_PATH`` fd of ``path`` resolved inside ``root`` (the caller closes it): see
    :meth:`RootResolver.open_path`. ``use_openat2=False`` forces the userspace walk."""
    with RootResolver(root, use_openat2=use_openat2) as resolver:
        return resolver.open_path(path)
