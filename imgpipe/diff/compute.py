"""Compute a layer: the changes from a lower tree to an upper tree, as a PAX tar.

Two ways to find the changes, one tar writer:

* :func:`diff_trees`, the double walk (continuity's ``doubleWalkDiff``, what
  containerd's walking differ runs): both trees in lexical order, depth first. A path only
  in the lower tree becomes a whiteout (one for a removed directory, not one per child); a
  path only in the upper tree, or one that differs, is written in full. Sameness is
  containerd's: same inode, or equal mode, uid, gid, rdev and exported xattrs, and for
  non-directories equal size and mtime seconds; when both mtimes have zero nanoseconds (a
  tar truncated them) the content or link target is compared byte by byte, otherwise
  differing nanoseconds mean "changed". Directories compare by metadata only.
* :func:`diff_upperdir`, the overlay fast path (continuity's ``DiffDirChanges``): only
  the upper directory is walked; a 0:0 character device is a deletion, a directory
  with ``trusted.overlay.opaque=y`` (or ``user.overlay.opaque=y``) gets an opaque marker,
  everything else is written. Deletions of paths no lower layer has are dropped.

The writer is containerd's ``ChangeWriter``: PAX format; mtimes truncated to seconds
and, with ``source_date_epoch``, clamped to it; no atime/ctime records; empty user and
group names; whiteouts are empty regular files ``.wh.<name>`` (and ``.wh..wh..opq``) with
mode 0, owner 0:0 and time 0 (containerd >= 2.0); the parent directories of every
written path are written first (from the upper tree); sockets are skipped; hardlinks are
coalesced by inode (the first name carries the data, later names link to it, and an
unchanged name of an inode that gains a new name is re-linked so the pair survives).

xattrs (a deliberate difference from containerd, which exports only
``security.capability``): ``security.capability`` and ``user.*`` are exported, except
``user.overlay.*`` (overlay's own state in userxattr mounts). ``user.*`` xattrs are part
of images (our fixtures carry one; umoci and BuildKit keep them), and what the differ
exports must be what the applier applies for apply(diff(a, b)) on a to give b. Other
namespaces (``trusted.*``, ``security.selinux``, ACLs) are not exported and not
compared: a change in only those is no change.

Output is reproducible: the same two trees give the same bytes (entries sorted by name
bytes per directory, no host names, no wall-clock times).
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, BinaryIO, Final, NamedTuple, cast

from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import FailedPrecondition, Unsupported
from imgpipe.fs import CHUNK, RootResolver, clean_components

__all__ = ["EXPORTED_XATTR_PREFIXES", "DiffResult", "diff_trees", "diff_upperdir"]

#: xattrs a computed layer carries (see the module docstring for why user.* too).
EXPORTED_XATTR_PREFIXES: Final = ("security.capability", "user.")
_EXCLUDED_XATTR_PREFIX: Final = "user.overlay."
_OPAQUE_XATTRS: Final = ("trusted.overlay.opaque", "user.overlay.opaque")
#: Overlay features whose upperdir entries do not hold the whole file or name (metacopy
#: keeps data in the lower, redirect renames a directory): the fast path cannot read them.
_UNSUPPORTED_OVERLAY_XATTRS: Final = (
    "trusted.overlay.metacopy",
    "trusted.overlay.redirect",
    "user.overlay.metacopy",
    "user.overlay.redirect",
)
_WH_PREFIX: Final = ".wh."
_WH_OPAQUE: Final = ".wh..wh..opq"


class DiffResult(NamedTuple):
    """The written layer: DiffID and size of the uncompressed tar, and its entry count."""

    diff_id: Digest
    size: int
    entries: int


class _HashingWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._digester = Digester("sha256")
        self.size = 0

    def write(self, data: bytes) -> int:
        self._digester.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            view = view[self._out.write(view) :]
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def digest(self) -> Digest:
        return self._digester.digest()


def _exported_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in sorted(names):
        if name.startswith(_EXCLUDED_XATTR_PREFIX) or not name.startswith(EXPORTED_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed meanwhile
                raise
    return out


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca = fa.read(CHUNK)
            cb = fb.read(CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def _same_file(lpath: str, lst: os.stat_result, upath: str, ust: os.stat_result) -> bool:
    if (lst.st_dev, lst.st_ino) == (ust.st_dev, ust.st_ino):
        return True
    if (lst.st_mode, lst.st_uid, lst.st_gid, lst.st_rdev) != (
        ust.st_mode,
        ust.st_uid,
        ust.st_gid,
        ust.st_rdev,
    ):
        return False
    if _exported_xattrs(lpath) != _exported_xattrs(upath):
        return False
    if stat.S_ISDIR(ust.st_mode):
        return True
    if lst.st_size != ust.st_size:
        return False
    lsec, lns = divmod(lst.st_mtime_ns, 1_000_000_000)
    usec, uns = divmod(ust.st_mtime_ns, 1_000_000_000)
    if lsec != usec:
        return False
    if lns == 0 and uns == 0:
        # Both truncated by a tar: only the content can tell.
        if stat.S_ISLNK(ust.st_mode):
            return os.readlink(lpath) == os.readlink(upath)
        if ust.st_size == 0 or not stat.S_ISREG(ust.st_mode):
            return True
        return _same_content(lpath, upath)
    return lns == uns


def _scan(path: str) -> dict[str, os.stat_result]:
    with os.scandir(path) as it:
        return {e.name: e.stat(follow_symlinks=False) for e in it}


def _sorted_names(names: Iterable[str]) -> list[str]:
    # Byte order of the names, as Go's filepath.Walk (and so containerd) sorts them.
    return sorted(names, key=os.fsencode)


class _ChangeWriter:
    def __init__(self, out: BinaryIO, upper: str, source_date_epoch: int | None) -> None:
        self._sink = _HashingWriter(out)
        self._upper = upper
        self._sde = source_date_epoch
        self._tar = tarfile.open(  # noqa: SIM115 - closed by close() or abort()
            fileobj=cast(IO[bytes], self._sink),
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
            bufsize=CHUNK,
        )
        # file data is copied in 1 MiB reads, not tarfile's default 16 KiB
        cast(Any, self._tar).copybufsize = CHUNK
        self.entries = 0
        self._added_dirs: set[str] = set()
        self._inode_src: dict[tuple[int, int], str] = {}
        self._inode_refs: dict[tuple[int, int], list[str]] = {}

    def close(self) -> DiffResult:
        self._tar.close()
        return DiffResult(self._sink.digest(), self._sink.size, self.entries)

    def abort(self) -> None:
        # On error the output stays incomplete: mark tarfile and its stream closed so
        # neither writes its buffer or the end-of-archive blocks later (its stream
        # flushes on garbage collection otherwise).
        cast(Any, self._tar.fileobj).closed = True
        cast(Any, self._tar).closed = True

    def _include_parents(self, rel: str, is_dir: bool) -> None:
        parent = rel.rpartition("/")[0]
        if parent and parent not in self._added_dirs:
            self._added_dirs.add(parent)
            pst = os.lstat(os.path.join(self._upper, parent))
            self.modify(parent, pst)
        if is_dir:
            self._added_dirs.add(rel)

    def _add(self, ti: tarfile.TarInfo, rel: str, is_dir: bool, data: str | None = None) -> None:
        self._include_parents(rel, is_dir)
        if data is None:
            self._tar.addfile(ti)
        else:
            with open(data, "rb") as f:
                if os.fstat(f.fileno()).st_size != ti.size:
                    raise FailedPrecondition(f"{rel!r} changed size while the layer was written")
                self._tar.addfile(ti, f)
        self.entries += 1

    def whiteout(self, rel: str) -> None:
        """Deletion of ``rel``: an empty ``.wh.<name>`` file with time 0."""
        parent, _, base = rel.rpartition("/")
        name = f"{parent}/{_WH_PREFIX}{base}" if parent else f"{_WH_PREFIX}{base}"
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.REGTYPE
        ti.mode = 0
        ti.mtime = 0
        ti.uname = ti.gname = ""
        self._add(ti, name, False)

    def opaque(self, rel: str) -> None:
        """Opaque marker for directory ``rel``."""
        ti = tarfile.TarInfo(f"{rel}/{_WH_OPAQUE}")
        ti.type = tarfile.REGTYPE
        ti.mode = 0
        ti.mtime = 0
        ti.uname = ti.gname = ""
        self._add(ti, ti.name, False)

    def modify(self, rel: str, st: os.stat_result, *, unmodified: bool = False) -> None:
        """Write ``rel`` of the upper tree (added or changed), or note an unchanged link."""
        path = os.path.join(self._upper, rel)
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return
        ti = tarfile.TarInfo(rel)
        ti.mode = stat.S_IMODE(mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        mtime = st.st_mtime_ns // 1_000_000_000
        if self._sde is not None and mtime > self._sde:
            mtime = self._sde
        ti.mtime = mtime
        data: str | None = None
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(path)
        elif stat.S_ISREG(mode):
            ti.type = tarfile.REGTYPE
            ti.size = st.st_size
            data = path if st.st_size else None
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:  # pragma: no cover - no other file types on Linux
            raise Unsupported(f"{rel!r}: unsupported file type {stat.S_IFMT(mode):o}")

        extra: list[str] = []
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            src = self._inode_src.get(key)
            if src is not None:
                ti.type = tarfile.LNKTYPE
                ti.linkname = src
                ti.size = 0
                data = None
            else:
                if unmodified:
                    self._inode_refs.setdefault(key, []).append(rel)
                    return
                self._inode_src[key] = rel
                extra = self._inode_refs.pop(key, [])
        elif unmodified:
            return

        xattrs = _exported_xattrs(path)
        if xattrs:
            # Non-UTF-8 values travel as surrogate escapes; tarfile then writes the PAX
            # header with hdrcharset=BINARY and the raw bytes.
            ti.pax_headers = {
                f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
            }
        self._add(ti, rel, stat.S_ISDIR(mode), data)
        for name in extra:
            link = tarfile.TarInfo(name)
            link.type = tarfile.LNKTYPE
            link.linkname = rel
            link.mode, link.uid, link.gid, link.mtime = ti.mode, ti.uid, ti.gid, ti.mtime
            link.uname = link.gname = ""
            link.pax_headers = dict(ti.pax_headers)
            self._add(link, name, False)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _run(top: Iterator[object]) -> None:
    """Drive nested level generators depth first without recursion.

    A level yields the generator of a subdirectory to walk it before its next sibling.
    """
    stack: list[Iterator[object]] = [top]
    while stack:
        try:
            child = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if child is not None:
            stack.append(cast(Iterator[object], child))


def diff_trees(
    lower: str | os.PathLike[str] | None,
    upper: str | os.PathLike[str],
    out: BinaryIO,
    *,
    source_date_epoch: int | None = None,
) -> DiffResult:
    """Write to ``out`` the uncompressed layer tar that turns ``lower`` into ``upper``.

    ``lower`` None (or a missing directory) means an empty tree: every path of ``upper``
    is written. Neither tree is modified; they must not change while being read (a file
    whose size changes raises FailedPrecondition). Returns the DiffID, size and entry
    count of the tar. Raises OSError for unreadable trees.
    """
    lroot = os.fspath(lower) if lower is not None else None
    uroot = os.fspath(upper)
    writer = _ChangeWriter(out, uroot, source_date_epoch)

    def level(rel: str, with_lower: bool) -> Iterator[object]:
        lpath = os.path.join(lroot, rel) if (lroot is not None and with_lower) else None
        lower_entries = _scan(lpath) if lpath is not None and os.path.isdir(lpath) else {}
        upper_entries = _scan(os.path.join(uroot, rel))
        for name in _sorted_names(lower_entries.keys() | upper_entries.keys()):
            p = _join(rel, name)
            lst = lower_entries.get(name)
            ust = upper_entries.get(name)
            if ust is None:
                writer.whiteout(p)
                continue
            if lst is None:
                writer.modify(p, ust)
                if stat.S_ISDIR(ust.st_mode):
                    yield level(p, False)
                continue
            assert lroot is not None
            ldir, udir = stat.S_ISDIR(lst.st_mode), stat.S_ISDIR(ust.st_mode)
            if ldir != udir:
                # A file replacing a directory or the reverse: the entry replaces the
                # whole path when applied; no whiteouts needed for the old children.
                writer.modify(p, ust)
                if udir:
                    yield level(p, False)
                continue
            same = _same_file(os.path.join(lroot, p), lst, os.path.join(uroot, p), ust)
            writer.modify(p, ust, unmodified=same)
            if udir:
                yield level(p, True)

    try:
        _run(level("", lroot is not None))
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def diff_upperdir(
    upperdir: str | os.PathLike[str],
    lowers: Sequence[str | os.PathLike[str]],
    out: BinaryIO,
    *,
    source_date_epoch: int | None = None,
) -> DiffResult:
    """Write to ``out`` the layer tar of an overlay ``upperdir`` over ``lowers``.

    ``lowers`` are the lower directories nearest first; they are only consulted to drop
    whiteouts of paths that no lower has. Raises Unsupported for upperdirs written with
    overlay's metacopy or redirect_dir features (their entries are not whole files), and
    OSError for unreadable trees.
    """
    uroot = os.fspath(upperdir)
    writer = _ChangeWriter(out, uroot, source_date_epoch)
    resolvers = [RootResolver(p) for p in lowers]

    def in_lowers(rel: str) -> bool:
        comps = clean_components(rel)
        for r in resolvers:
            found = r.lstat(comps)
            if found is not None:
                os.close(found[0])
                return True
        return False

    def level(rel: str) -> Iterator[object]:
        entries = _scan(os.path.join(uroot, rel))
        for name in _sorted_names(entries.keys()):
            p = _join(rel, name)
            st = entries[name]
            path = os.path.join(uroot, p)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                if not resolvers or in_lowers(p):
                    writer.whiteout(p)
                continue
            try:
                names = os.listxattr(path, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                names = []
            bad = [n for n in names if n in _UNSUPPORTED_OVERLAY_XATTRS]
            if bad:
                raise Unsupported(f"{p!r}: overlay {bad[0]} in the upperdir is not supported")
            writer.modify(p, st)
            if stat.S_ISDIR(st.st_mode):
                if any(
                    n in names and os.getxattr(path, n, follow_symlinks=False) == b"y"
                    for n in _OPAQUE_XATTRS
                ):
                    writer.opaque(p)
                yield level(p)

    try:
        _run(level(""))
    except BaseException:
        writer.abort()
        raise
    finally:
        for r in resolvers:
            r.close()
    return writer.close()
