"""Snapshot a directory tree and compare two snapshots (unpack, snapshotter, diff tests).

``snapshot(root)`` records every path below ``root`` (the root itself is left out unless
asked): kind, permission bits with set-id/sticky, uid/gid, size, content sha256, link
target, xattrs, device numbers, and a hardlink group (the first path, in sorted order,
of the paths sharing an inode within the tree). mtimes are recorded on request.
``compare(a, b)`` lists the differences as readable lines; ``assert_same`` fails with them.

Nothing here follows a symlink: a tree is described as it is on disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

__all__ = [
    "DEFAULT_XATTR_FILTER",
    "Node",
    "assert_same",
    "compare",
    "snapshot",
]

_CHUNK = 1 << 20


def DEFAULT_XATTR_FILTER(name: str) -> bool:
    """xattrs compared by default: what layers carry (``user.*``, ``security.capability``),
    not what the host or overlay adds (``trusted.overlay.*``, ``security.selinux``)."""
    return (name.startswith("user.") and not name.startswith("user.overlay.")) or (
        name == "security.capability"
    )


@dataclass(frozen=True)
class Node:
    kind: str  # file, dir, symlink, fifo, char, block, socket
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int = 0
    sha256: str = ""
    linkname: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    rdev: tuple[int, int] | None = None
    link_group: str = ""  # "" unless the inode has another name in the tree
    mtime_ns: int | None = None


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFSOCK: "socket",
}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path: str, keep: Callable[[str], bool]) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names if keep(n)))


def _node(path: str, st: os.stat_result, keep: Callable[[str], bool], mtimes: bool) -> Node:
    kind = _KINDS[stat.S_IFMT(st.st_mode)]
    return Node(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if kind == "file" else 0,
        sha256=_sha256(path) if kind == "file" else "",
        linkname=os.readlink(path) if kind == "symlink" else "",
        xattrs=_xattrs(path, keep),
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else None,
        mtime_ns=st.st_mtime_ns if mtimes and kind != "dir" else None,
    )


def snapshot(
    root: str | os.PathLike[str],
    *,
    xattr_filter: Callable[[str], bool] = DEFAULT_XATTR_FILTER,
    mtimes: bool = False,
    include_root: bool = False,
) -> dict[str, Node]:
    """Describe every path under ``root``; keys are relative POSIX paths ("" = root)."""
    base = os.fspath(root)
    out: dict[str, Node] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    if include_root:
        out[""] = _node(base, os.lstat(base), xattr_filter, mtimes)
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(base, rel)) as it:
            entries = list(it)
        for e in entries:
            p = f"{rel}/{e.name}" if rel else e.name
            st = e.stat(follow_symlinks=False)
            out[p] = _node(e.path, st, xattr_filter, mtimes)
            if stat.S_ISDIR(st.st_mode):
                stack.append(p)
            elif st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(p)
    for paths in inodes.values():
        if len(paths) > 1:
            first = min(paths)
            for p in paths:
                out[p] = replace(out[p], link_group=first)
    return dict(sorted(out.items()))


def compare(
    a: Mapping[str, Node],
    b: Mapping[str, Node],
    *,
    ignore: Iterable[str] = (),
    ignore_paths: Iterable[str] = (),
) -> list[str]:
    """Differences between two snapshots, one line each ("" when equal).

    ``ignore`` names Node fields not to compare (e.g. ``{"mtime_ns", "link_group"}``);
    ``ignore_paths`` are paths left out on both sides.
    """
    skip = set(ignore)
    skip_paths = set(ignore_paths)
    lines: list[str] = []
    for p in sorted((a.keys() | b.keys()) - skip_paths):
        na, nb = a.get(p), b.get(p)
        if na is None:
            lines.append(f"{p!r}: only in second ({nb})")
        elif nb is None:
            lines.append(f"{p!r}: only in first ({na})")
        else:
            for f in fields(Node):
                if f.name in skip:
                    continue
                va, vb = getattr(na, f.name), getattr(nb, f.name)
                if va != vb:
                    lines.append(f"{p!r}: {f.name} {va!r} != {vb!r}")
    return lines


def assert_same(
    a: Mapping[str, Node],
    b: Mapping[str, Node],
    *,
    ignore: Iterable[str] = (),
    ignore_paths: Iterable[str] = (),
) -> None:
    """Fail with the list of differences unless the snapshots are equal."""
    diffs = compare(a, b, ignore=ignore, ignore_paths=ignore_paths)
    assert not diffs, "trees differ:\n" + "\n".join(diffs[:50])


def matches_expected(tree: Mapping[str, Node], expected: Mapping[str, object]) -> list[str]:
    """Differences between a snapshot and ``fixtures.build.expected_rootfs`` entries."""
    lines: list[str] = []
    for p in sorted(tree.keys() | expected.keys()):
        n = tree.get(p)
        e = expected.get(p)
        if n is None or e is None:
            lines.append(f"{p!r}: {'missing' if n is None else 'unexpected'}")
            continue
        want = {
            "kind": e.kind,  # type: ignore[attr-defined]
            "mode": e.mode,  # type: ignore[attr-defined]
            "size": e.size,  # type: ignore[attr-defined]
            "sha256": e.sha256,  # type: ignore[attr-defined]
            "linkname": e.linkname,  # type: ignore[attr-defined]
            "xattrs": tuple(sorted((k, v.encode()) for k, v in e.xattrs)),  # type: ignore[attr-defined]
            "uid": 0,
            "gid": 0,
        }
        for key, value in want.items():
            if getattr(n, key) != value:
                lines.append(f"{p!r}: {key} {getattr(n, key)!r} != expected {value!r}")
        same = e.same_inode_as  # type: ignore[attr-defined]
        other = tree.get(same) if same else None
        if same and (not n.link_group or other is None or other.link_group != n.link_group):
            lines.append(f"{p!r}: not a hardlink of {same!r}")
    return lines


def tree_paths(root: Path) -> set[str]:
    """Just the relative paths under ``root`` (cheap existence checks)."""
    return set(snapshot(root, xattr_filter=lambda _n: False))
