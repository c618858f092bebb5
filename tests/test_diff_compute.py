"""diff_trees / diff_upperdir: the tar they write, and apply(diff(a, b)) onto a == b."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgpipe.diff import ApplyOptions, apply_layer, diff_trees, diff_upperdir
from imgpipe.errors import Unsupported
from tests.test_diff_apply import apply_image, needs_root
from tests.treecompare import assert_same, snapshot

SDE = 1704067200


def _diff(lower, upper, **kw) -> tuple[bytes, object]:
    out = io.BytesIO()
    result = diff_trees(lower, upper, out, **kw)
    return out.getvalue(), result


def _copy(src: Path, dst: Path) -> Path:
    # cp -a keeps owners, modes, times, xattrs, hardlinks and devices
    subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)
    return dst


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return tar.getmembers()


@pytest.fixture(scope="module")
def layered_trees(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(tree after L0..L2, tree after L0..L3) of the layered image."""
    from tests.test_diff_apply import image_layers, open_layer

    base = tmp_path_factory.mktemp("layered-trees")
    layers = image_layers(fixture_dir / "layered")
    a, b = base / "a", base / "b"
    for root, count in ((a, 3), (b, 4)):
        root.mkdir()
        for media_type, blob, _ in layers[:count]:
            with open_layer(media_type, blob) as s:
                apply_layer(root, s)
    return a, b


def test_diff_of_layer3_reproduces_it(layered_trees, tmp_path: Path):
    a, b = layered_trees
    data, result = _diff(a, b, source_date_epoch=SDE)
    names = [m.name for m in _members(data)]
    # the deleted file is a whiteout; the opaque dir's lower children are whiteouts each
    assert "etc/.wh.to-delete" in names
    assert "opt/replaced/.wh.old-a" in names and "opt/replaced/.wh.old-sub" in names
    assert "opt/replaced/new" in names and "etc/motd" in names
    assert "bin/busybox" not in names  # unchanged
    assert result.entries == len(names)
    target = _copy(a, tmp_path / "t")
    r = apply_layer(target, io.BytesIO(data))
    assert r.diff_id == result.diff_id and r.size == len(data)
    assert_same(snapshot(target), snapshot(b))
    # reproducible: the same trees give the same bytes
    assert _diff(a, b, source_date_epoch=SDE)[0] == data


def test_full_layer_header_policy(layered_trees, tmp_path: Path):
    _, b = layered_trees
    (b_copy := tmp_path / "b").mkdir()
    _copy(b, b_copy)
    os.utime(b_copy / "etc" / "motd", ns=(0, (SDE + 5000) * 10**9 + 999))
    data, _ = _diff(None, b_copy, source_date_epoch=SDE)
    members = _members(data)
    by_name = {m.name: m for m in members}
    assert by_name["etc/motd"].mtime == SDE  # clamped to SOURCE_DATE_EPOCH
    for m in members:
        assert m.uname == "" and m.gname == ""
        assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
        assert isinstance(m.mtime, int)
    # a directory comes before its children; hardlinks carry data once
    names = [m.name for m in members]
    assert names.index("data") < names.index("data/linked") < names.index("data/linked/original")
    assert by_name["data/linked/same-inode"].type == tarfile.LNKTYPE
    assert by_name["data/linked/same-inode"].linkname == "data/linked/original"
    assert by_name["data/xattr.txt"].pax_headers["SCHILY.xattr.user.imgpipe"] == "fixture"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    apply_layer(fresh, io.BytesIO(data))
    assert_same(snapshot(fresh), snapshot(b_copy))


def test_whiteouts_have_epoch_times(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "d").mkdir(parents=True)
    (a / "d" / "gone").write_bytes(b"x")
    (b / "d").mkdir(parents=True)
    data, _ = _diff(a, b)
    wh = {m.name: m for m in _members(data)}["d/.wh.gone"]
    assert (wh.mtime, wh.size, wh.type, wh.mode) == (0, 0, tarfile.REGTYPE, 0)
    # the unchanged parent is included so the whiteout has a directory entry before it
    assert [m.name for m in _members(data)] == ["d", "d/.wh.gone"]


def test_new_name_for_unchanged_inode_keeps_the_pair(tmp_path: Path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "x").write_bytes(b"data")
    os.utime(a / "x", (SDE, SDE))
    b = _copy(a, tmp_path / "b")
    os.link(b / "x", b / "y")
    data, _ = _diff(a, b)
    target = _copy(a, tmp_path / "t")
    apply_layer(target, io.BytesIO(data))
    assert (target / "x").stat().st_ino == (target / "y").stat().st_ino
    assert_same(snapshot(target), snapshot(b))


# --- property: apply(diff(a, b)) onto a == b --------------------------------------------

_NAMES = st.sampled_from(["a", "b", "c", ".x", "d-e"])
_PATHS = st.lists(_NAMES, min_size=1, max_size=3).map("/".join)
_ENTRY = st.tuples(
    st.sampled_from(["file", "file", "dir", "symlink"]),
    st.sampled_from([b"", b"one", b"two", b"six", b"three!"]),
    st.sampled_from([0o644, 0o600, 0o755, 0o4755]),
    st.sampled_from([0, 1000]),
    st.sampled_from([SDE, SDE + 1]),
    st.sampled_from([None, b"v1", b"v2"]),
)
_TREE = st.dictionaries(_PATHS, _ENTRY, max_size=8)
_LINKS = st.lists(st.tuples(_PATHS, _PATHS), max_size=2)


@st.composite
def _tree_pairs(draw):
    """(a, b): b is a with entries dropped, single fields changed (so equal-size content
    changes with equal times occur) and entries added."""
    a = draw(_TREE)
    keys = sorted(a)
    b = dict(a)
    if keys:
        for k in draw(st.sets(st.sampled_from(keys))):
            del b[k]
        for k in draw(st.sets(st.sampled_from(keys))):
            if k in b:
                field = draw(st.integers(0, 5))
                new = draw(_ENTRY)
                b[k] = tuple(new[i] if i == field else b[k][i] for i in range(6))
    b.update(draw(st.dictionaries(_PATHS, _ENTRY, max_size=3)))
    return a, b


def _build(root: Path, spec: dict, links=()) -> None:
    root.mkdir()
    for path in sorted(spec, key=lambda p: p.split("/")):
        kind, data, mode, uid, mtime, xattr = spec[path]
        p = root / path
        if any(
            (os.path.lexists(root / anc) and not (root / anc).is_dir()) or (root / anc).is_symlink()
            for anc in _ancestors(path)
        ):
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(p):
            continue
        if kind == "file":
            p.write_bytes(data)
            os.chown(p, uid, uid)
            p.chmod(mode)
            if xattr is not None:
                os.setxattr(p, "user.k", xattr)
        elif kind == "dir":
            p.mkdir()
            os.chown(p, uid, uid)
            p.chmod(mode & 0o777 | 0o700)
            if xattr is not None:
                os.setxattr(p, "user.k", xattr)
        else:
            p.symlink_to(data.decode() or "nowhere")
            os.chown(p, uid, uid, follow_symlinks=False)
        os.utime(p, (mtime, mtime), follow_symlinks=False)
    for new, old in links:
        src, dst = root / old, root / new
        if src.is_symlink() or not src.is_file() or os.path.lexists(dst) or not dst.parent.is_dir():
            continue
        if dst.parent.is_symlink():
            continue
        os.link(src, dst)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@needs_root
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=_tree_pairs(), links=_LINKS)
def test_property_apply_diff_reproduces_b(pair, links):
    a_spec, b_spec = pair
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        _build(t / "a", a_spec)
        _build(t / "b", b_spec, links)
        out = io.BytesIO()
        diff_trees(t / "a", t / "b", out)
        target = _copy(t / "a", t / "t")
        apply_layer(target, io.BytesIO(out.getvalue()))
        assert_same(snapshot(target, mtimes=True), snapshot(t / "b", mtimes=True))


def _overlay(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},index=off,redirect_dir=off"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)


@needs_root
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=_tree_pairs())
def test_property_upperdir_equals_double_walk(pair):
    """Changes made through a real overlay mount: the upperdir's layer has the same
    effect as the double walk's."""
    a_spec, b_spec = pair
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        _build(t / "a", a_spec)
        _build(t / "b", b_spec)
        walk = io.BytesIO()
        diff_trees(t / "a", t / "b", walk)
        lower = _copy(t / "a", t / "lower")
        _overlay(lower, t / "upper", t / "work", t / "merged")
        try:
            # make the merged view equal b through the kernel: it writes whiteouts,
            # opaque directories and copy-ups into the upperdir
            apply_layer(t / "merged", io.BytesIO(walk.getvalue()))
        finally:
            subprocess.run(["umount", str(t / "merged")], check=True)
        fast = io.BytesIO()
        diff_upperdir(t / "upper", [lower], fast)
        results = []
        for name, data in (("via-walk", walk), ("via-upper", fast)):
            target = _copy(t / "a", t / name)
            apply_layer(target, io.BytesIO(data.getvalue()))
            results.append(snapshot(target, mtimes=True))
        assert_same(results[0], results[1])
        assert_same(results[1], snapshot(t / "b", mtimes=True))


@needs_root
def test_upperdir_opaque_and_whiteout(tmp_path: Path):
    lower = tmp_path / "lower"
    (lower / "d" / "sub").mkdir(parents=True)
    (lower / "d" / "old").write_bytes(b"o")
    (lower / "gone").write_bytes(b"g")
    merged = tmp_path / "merged"
    _overlay(lower, tmp_path / "upper", tmp_path / "work", merged)
    try:
        shutil.rmtree(merged / "d")
        (merged / "d").mkdir()
        (merged / "d" / "new").write_bytes(b"n")
        (merged / "gone").unlink()
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    out = io.BytesIO()
    diff_upperdir(tmp_path / "upper", [lower], out)
    names = [m.name for m in _members(out.getvalue())]
    # walk order is the order of the upperdir's names ("gone" after "d"), not of the
    # whiteout names, as in containerd
    assert names == ["d", "d/.wh..wh..opq", "d/new", ".wh.gone"]
    target = _copy(lower, tmp_path / "t")
    apply_layer(target, io.BytesIO(out.getvalue()))
    assert sorted(os.listdir(target)) == ["d"]
    assert os.listdir(target / "d") == ["new"]


def test_upperdir_refuses_redirects(tmp_path: Path):
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    try:
        os.setxattr(upper / "d", "trusted.overlay.redirect", b"/elsewhere")
    except PermissionError:
        pytest.skip("needs CAP_SYS_ADMIN for trusted.* xattrs (CI runs as root)")
    with pytest.raises(Unsupported, match="redirect"):
        diff_upperdir(upper, [], io.BytesIO())


def test_apply_image_then_diff_from_scratch_roundtrip(fixture_dir: Path, tmp_path: Path):
    tree = tmp_path / "tree"
    apply_image(fixture_dir / "layered", tree)
    data, result = _diff(None, tree, source_date_epoch=SDE)
    again = tmp_path / "again"
    again.mkdir()
    r = apply_layer(again, io.BytesIO(data), options=ApplyOptions())
    assert r.diff_id == result.diff_id
    assert_same(snapshot(again), snapshot(tree))
