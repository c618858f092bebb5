"""Hostile TOCs and a lazy mount: what parse_toc refuses never gets mounted, and what it
lets through is contained by the tree (imgpipe/lazy/tree.py): no overlay state planted
by a layer, whiteouts that name only a plain entry, one entry per name."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lazy_fixtures import fuse_mounts, needs_root, plan_of
from test_estargz_read_hostile import HOSTILE, Entries, layout_of

from imgpipe.formats.errors import MalformedDocument
from imgpipe.formats.estargz import parse_toc
from imgpipe.lazy import start_lazy
from imgpipe.lazy.tree import OPAQUE_XATTR, build_tree
from imgpipe.store import Store


def _toc(*entries: dict[str, Any]) -> Any:
    raw = json.dumps({"version": 1, "entries": list(entries)}).encode()
    return parse_toc(raw, data_end=0, what="TOC")


def _dir(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "dir", "mode": 0o755, **kw}


def _empty(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "reg", "size": 0, "mode": 0o644, **kw}


def test_whiteouts_and_opaque_markers_in_overlays_form() -> None:
    tree = build_tree([_toc(_dir("a/"), _empty("a/.wh.gone"), _empty("a/.wh..wh..opq"))])
    a = tree.lookup("/0/a")
    assert a is not None and a.children is not None
    assert set(a.children) == {"gone"}  # the marker is not shown
    gone = a.children["gone"]
    assert stat.S_ISCHR(gone.mode) and gone.rdev == 0 and stat.S_IMODE(gone.mode) == 0
    assert a.xattrs == {OPAQUE_XATTR: b"y"}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_dir("a/"), _empty("a/.wh.")], "names no entry"),
        ([_dir("a/"), _empty("a/.wh..")], "names no entry"),
        ([_dir("a/"), _empty("a/.wh...")], "names no entry"),
        ([_dir("a/"), _empty("a/.wh.x"), _empty("a/.wh.x/y")], "not a directory"),
        ([_dir("a/"), _empty("a/x"), {"name": "a/h", "type": "hardlink", "linkName": "a/x"},
          _empty("a/.wh.x")], "no file to link to"),
    ],
    ids=["empty-name", "dot", "dotdot", "child-of-a-whiteout", "link-to-a-whiteout"],
)  # fmt: skip
def test_whiteouts_that_name_no_plain_entry_are_refused(
    entries: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(MalformedDocument, match=message):
        build_tree([_toc(*entries)])


def test_a_whiteout_and_an_entry_of_one_name_the_later_wins() -> None:
    """As the applier applies them in order: a whiteout removes, an entry replaces."""
    tree = build_tree([_toc(_dir("a/"), _empty("a/x", uid=7), _empty("a/.wh.x"))])
    x = tree.lookup("/0/a/x")
    assert x is not None and stat.S_ISCHR(x.mode) and x.uid == 0
    tree = build_tree([_toc(_dir("a/"), _empty("a/.wh.x", uid=3), _empty("a/x", uid=7))])
    x = tree.lookup("/0/a/x")
    assert x is not None and stat.S_ISREG(x.mode) and x.uid == 7
    tree = build_tree([_toc(_dir("a/"), _dir("a/x/"), _empty("a/.wh.x"))])
    a = tree.lookup("/0/a")
    assert a is not None and a.nlink == 2  # the directory x went


def test_a_layer_cannot_plant_overlay_state_in_xattrs() -> None:
    def b64(v: bytes) -> str:
        import base64

        return base64.b64encode(v).decode()

    xattrs = {
        "trusted.overlay.redirect": b64(b"/etc"),
        "trusted.overlay.opaque": b64(b"y"),
        "trusted.overlay.metacopy": b64(b""),
        "user.overlay.opaque": b64(b"y"),
        "security.capability": b64(b"\x01\x00\x00\x02"),
        "user.note": b64(b"kept"),
    }
    tree = build_tree([_toc(_dir("d/", xattrs=xattrs), _empty("d/f", xattrs=xattrs))])
    for path in ("/0/d", "/0/d/f"):
        node = tree.lookup(path)
        assert node is not None
        assert set(node.xattrs) == {"security.capability", "user.note"}, path


def test_names_are_looked_up_inside_the_tree_only() -> None:
    tree = build_tree([_toc(_dir("etc/"), _empty("etc/passwd"))])
    assert tree.lookup("/0/etc/passwd") is not None
    assert tree.lookup("/0/etc/../etc/passwd") is None  # the kernel resolves '..', not us
    assert tree.lookup("/1") is None
    assert tree.lookup("/0/etc/passwd/x") is None


@needs_root
@pytest.mark.parametrize(
    ("mutate", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_a_hostile_toc_is_refused_before_anything_is_mounted(
    tmp_path: Path, mutate: Callable[[Entries], None], message: str
) -> None:
    ref = layout_of(tmp_path, mutate)
    with pytest.raises(MalformedDocument, match=message):
        plan, source = plan_of(ref)
        with source:
            start_lazy(Store(tmp_path / "root"), plan, tmp_path / "state")
    assert not fuse_mounts(tmp_path)
    assert not (tmp_path / "state").exists()
