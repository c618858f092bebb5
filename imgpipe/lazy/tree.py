"""The file tree a lazy mount shows, built from verified TOCs only: no byte of content.

One FUSE mount per lazy rootfs; its root holds one directory per layer, named by the
layer's position from the bottom (``0``, ``1``, ...), which overlay stacks as lowers.
Each layer directory is that layer's tree in overlay's own on-disk form, so overlay
merges it exactly as it merges an unpacked snapshot of the overlay snapshotter:

- ``.wh.NAME`` becomes a character device 0:0 named ``NAME`` (a whiteout);
- ``.wh..wh..opq`` is not shown; its directory gets ``trusted.overlay.opaque=y``;
- a hardlink is the same :class:`Node` under two names (one inode, ``nlink`` counted);
- xattrs are the TOC's ``user.*`` and ``security.*`` ones, as the applier sets them
  (imgpipe/diff/metadata.py): a TOC cannot plant ``trusted.overlay.*`` state (redirects,
  metacopy, opacity) that overlay would act on.

The TOC is validated by :func:`imgpipe.formats.estargz.parse_toc` (no ``..``, no
absolute names, no duplicates, chunks that tile their file); this module adds what a
mount needs: a whiteout's name must be a plain name, and a whiteout or opaque marker
never replaces a real entry of the same layer.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from imgpipe.formats.errors import MalformedDocument
from imgpipe.formats.estargz import TOC, Entry

__all__ = ["OPAQUE_XATTR", "Node", "Tree", "build_tree"]

WH_PREFIX: Final = ".wh."
WH_OPAQUE: Final = ".wh..wh..opq"
OPAQUE_XATTR: Final = "trusted.overlay.opaque"
ROOT_INO: Final = 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_TYPE_BITS: Final = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


def _layer_xattr(name: str) -> bool:
    """The xattr namespaces a layer may set (as imgpipe/diff/metadata.py applies them)."""
    return name.startswith(("user.", "security.")) and not name.startswith("user.overlay.")


@dataclass(eq=False, slots=True)
class Node:
    """One inode of the mount: its stat fields, xattrs, and for a regular file the TOC
    entry holding its chunks (``layer``: the layer's index, bottom = 0)."""

    ino: int
    mode: int  # type bits | permission bits
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    nlink: int = 1
    rdev: int = 0
    target: str = ""  # a symlink's target
    xattrs: dict[str, bytes] = field(default_factory=dict)
    children: dict[str, Node] | None = None  # a directory's, in TOC order
    entry: Entry | None = None  # a regular file's data entry
    layer: int = -1

    @property
    def is_dir(self) -> bool:
        return self.children is not None


class Tree:
    """The mount's nodes, looked up by path (``/1/etc/passwd``)."""

    def __init__(self, root: Node, count: int) -> None:
        self.root = root
        self.count = count  # inodes

    def lookup(self, path: str) -> Node | None:
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if node.children is None:
                return None
            found = node.children.get(part)
            if found is None:
                return None
            node = found
        return node

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every (path, node) below the root, parents first."""
        todo: list[tuple[str, Node]] = [("", self.root)]
        while todo:
            path, node = todo.pop()
            if node.children is not None:
                for name, child in node.children.items():
                    todo.append((f"{path}/{name}", child))
            if path:
                yield path, node


class _Builder:
    def __init__(self) -> None:
        self.next_ino = ROOT_INO + 1
        self.whiteouts: set[int] = set()  # inodes of the whiteouts made

    def node(self, mode: int, **kw: object) -> Node:
        n = Node(self.next_ino, mode, **kw)  # type: ignore[arg-type]
        self.next_ino += 1
        return n

    def from_entry(self, e: Entry, layer: int) -> Node:
        mtime_ns = _ns(e)
        xattrs = {k: v for k, v in e.xattrs.items() if _layer_xattr(k)}
        bits = _TYPE_BITS[e.type]
        node = self.node(
            bits | (e.mode & 0o7777),
            uid=e.uid,
            gid=e.gid,
            mtime_ns=mtime_ns,
            xattrs=xattrs,
            layer=layer,
        )
        if e.type == "dir":
            node.children = {}
            node.nlink = 2
        elif e.type == "reg":
            node.size = e.size
            node.entry = e
        elif e.type == "symlink":
            node.target = e.link_name
            node.size = len(e.link_name.encode("utf-8", "surrogateescape"))
        elif e.type in ("char", "block"):
            node.rdev = _makedev(e.dev_major, e.dev_minor)
        return node

    def layer(self, toc: TOC, n: int) -> Node:
        where = f"layer {n}"
        nodes: dict[str, Node] = {}
        opaque: list[str] = []
        for e in toc.entries:
            parent, _, base = e.name.rpartition("/")
            if e.type == "hardlink":
                continue  # after every target exists
            if base == WH_OPAQUE:
                opaque.append(parent)
                continue
            if base.startswith(WH_PREFIX):
                name = base[len(WH_PREFIX) :]
                if not name or name in (".", "..") or "/" in name:
                    raise MalformedDocument(f"{where}: whiteout {e.name!r} names no entry")
                node = self.node(stat.S_IFCHR, uid=e.uid, gid=e.gid, mtime_ns=_ns(e), layer=n)
                self.whiteouts.add(node.ino)
                base = name
            else:
                node = self.from_entry(e, n)
            path = f"{parent}/{base}" if parent else base
            nodes[path] = node  # a whiteout's path: a later child of it is refused
            if path:
                self._attach(nodes, parent, base, node, where)
        root = nodes[""]
        for e in toc.entries:
            if e.type != "hardlink":
                continue
            parent, _, base = e.name.rpartition("/")
            target = nodes.get(toc.data_entry(e).name)
            if target is None or target.is_dir or target.ino in self.whiteouts:
                raise MalformedDocument(f"{where}: hardlink {e.name!r} has no file to link to")
            target.nlink += 1
            self._attach(nodes, parent, base, target, where)
            self._relink(target, e)
        for parent in opaque:
            d = nodes.get(parent)
            if d is None or not d.is_dir:
                raise MalformedDocument(f"{where}: opaque marker in {parent!r}, not a directory")
            d.xattrs[OPAQUE_XATTR] = b"y"
        return root

    def _relink(self, node: Node, e: Entry) -> None:
        """A hardlink entry's metadata lands on the inode it names, as the applier (and
        containerd's) chown, setxattr, chmod and utime the new link."""
        node.uid, node.gid = e.uid, e.gid
        node.xattrs.update((k, v) for k, v in e.xattrs.items() if _layer_xattr(k))
        if not stat.S_ISLNK(node.mode):
            node.mode = stat.S_IFMT(node.mode) | (e.mode & 0o7777)
        node.mtime_ns = _ns(e)

    def _attach(
        self, nodes: dict[str, Node], parent: str, base: str, node: Node, where: str
    ) -> None:
        """Put ``node`` in ``parent`` as ``base``. One entry per name, but a whiteout
        and an entry of the same name in one layer: the later one wins, as when the
        applier applies them in order (a whiteout removes what is there; an entry
        replaces a whiteout)."""
        d = nodes.get(parent)
        if d is None or d.children is None:
            raise MalformedDocument(f"{where}: {parent!r} is not a directory")
        old = d.children.get(base)
        if old is not None:
            if old.ino not in self.whiteouts and node.ino not in self.whiteouts:
                raise MalformedDocument(f"{where}: two entries for {parent + '/' + base!r}")
            if old.is_dir:
                d.nlink -= 1
            elif old.nlink > 1:
                old.nlink -= 1  # one name of a hardlinked file goes
        d.children[base] = node
        if node.is_dir:
            d.nlink += 1


def _ns(e: Entry) -> int:
    """The entry's modification time in nanoseconds since the epoch (0 when unset)."""
    if e.mtime is None:
        return 0
    delta = e.mtime - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _makedev(major: int, minor: int) -> int:
    # os.makedev without its range check's OverflowError on hostile numbers
    if major > 0xFFFFFFFF or minor > 0xFFFFFFFF:
        raise MalformedDocument(f"device {major}:{minor} out of range")
    return (
        ((major & 0xFFFFF000) << 32)
        | ((major & 0xFFF) << 8)
        | ((minor & 0xFFFFFF00) << 12)
        | (minor & 0xFF)
    )


def build_tree(tocs: Sequence[TOC]) -> Tree:
    """The mount's tree: a root directory (0755, root-owned) with ``tocs[i]`` as ``i``.

    MalformedDocument for what no layer may hold (see the module docstring)."""
    b = _Builder()
    root = Node(ROOT_INO, stat.S_IFDIR | 0o755, children={}, nlink=2)
    for n, toc in enumerate(tocs):
        layer_root = b.layer(toc, n)
        assert root.children is not None
        root.children[str(n)] = layer_root
        root.nlink += 1
    return Tree(root, b.next_ino - 1)
