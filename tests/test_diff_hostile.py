"""The hostile-layer corpus (fixtures/hostile.py): nothing outside the root changes.

Layout per case: ``<tmp>/root`` is the apply root, ``<tmp>/sentinel`` a directory next to
it holding ``victim``; every case is also given the sentinel's absolute path, so both
``../sentinel`` and ``/abs/.../sentinel`` aim at it. After each case the whole of
``<tmp>`` outside the root must be exactly as before (tests/treecompare.py), whether the
layer was refused or applied. Every case runs with openat2 resolution and with the
userspace walk.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest

from fixtures.hostile import VICTIM_DATA, Case, cases
from imgpipe.diff import ApplyOptions, apply_layer
from imgpipe.diff.state import ApplyState
from imgpipe.errors import ImgpipeError
from imgpipe.fs import RootResolver, openat2_available
from tests.treecompare import snapshot

_PROBE = "/nonexistent-probe"
CASE_NAMES = [c.name for c in cases(_PROBE)]


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    sentinel = tmp_path / "sentinel"
    root.mkdir()
    sentinel.mkdir()
    (sentinel / "victim").write_bytes(VICTIM_DATA)
    (sentinel / "victim").chmod(0o644)
    (sentinel / "sub").mkdir()
    return root, sentinel


def _outside_snapshot(tmp_path: Path) -> dict[str, object]:
    snap = snapshot(tmp_path, mtimes=True, include_root=True)
    # the root's own inode changes as entries land in it; what is inside is not "outside"
    return {p: n for p, n in snap.items() if p != "root" and not p.startswith("root/")}


def _apply(root: Path, data: bytes, case: Case, last: bool, use_openat2: bool):
    if case.gzip and last:
        data = gzip.decompress(data)  # a valid gzip stream around a damaged tar
    opts = ApplyOptions(use_openat2=use_openat2)
    return apply_layer(root, io.BytesIO(data), options=opts)


def test_corpus_is_big_enough():
    assert len(CASE_NAMES) >= 20
    assert len(set(CASE_NAMES)) == len(CASE_NAMES)


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_case(tmp_path: Path, name: str, use_openat2: bool):
    if use_openat2 and not openat2_available():
        pytest.skip("kernel without openat2: the userspace walk covers this case")
    root, sentinel = _layout(tmp_path)
    case = next(c for c in cases(str(sentinel)) if c.name == name)
    before = _outside_snapshot(tmp_path)

    result = None
    for layer in case.layers[:-1]:
        _apply(root, layer, case, False, use_openat2)
    if case.error is not None:
        with pytest.raises(case.error) as info:
            _apply(root, case.layers[-1], case, True, use_openat2)
        assert isinstance(info.value, ImgpipeError)
    else:
        result = _apply(root, case.layers[-1], case, True, use_openat2)

    assert _outside_snapshot(tmp_path) == before, "something outside the root changed"
    assert (sentinel / "victim").read_bytes() == VICTIM_DATA

    for path, want in case.expect.items():
        p = root / path
        assert os.path.lexists(p), f"{path} missing"
        st = p.lstat()
        kind = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}.get(st.st_mode & 0o170000)
        assert kind == want.kind, f"{path}: {kind} != {want.kind}"
        if want.data is not None:
            assert p.read_bytes() == want.data
        if want.linkname is not None:
            assert os.readlink(p) == want.linkname
        if want.mode is not None:
            assert st.st_mode & 0o7777 == want.mode
    for path in case.absent:
        assert not os.path.lexists(root / path), f"{path} should not exist"
    if case.warning:
        assert result is not None
        assert any(case.warning in w for w in result.warnings), result.warnings


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_each_mode_uses_its_resolver(tmp_path: Path, use_openat2: bool):
    """The two runs above really take the two paths: ApplyOptions reaches the resolver."""
    if use_openat2 and not openat2_available():
        pytest.skip("kernel without openat2")
    state = ApplyState(tmp_path, ApplyOptions(use_openat2=use_openat2))
    try:
        assert state.root.uses_openat2 is use_openat2
    finally:
        state.close()


#: Paths through a hostile tree (see _hostile_tree): what each resolves to, or the error.
RESOLVE_PATHS = [
    "file", "/file", "../../file", "abs/file", "rel/file", "up/up/file", "escape",
    "dir/../../file", "loop", "loop/file", "dangling", "file/", "file/x", "dirlink/",
    "abs", "nope/file", "magic/self", "/", "..",
]  # fmt: skip


def _hostile_tree(tmp_path: Path, sentinel: Path) -> Path:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "file").write_bytes(b"in root")
    os.symlink("/", root / "abs")  # re-rooted: /file inside
    os.symlink("../../../..", root / "rel")  # clamped at the root
    os.symlink("..", root / "up")
    os.symlink(str(sentinel / "victim"), root / "escape")  # absolute: missing inside
    os.symlink("loop2", root / "loop")
    os.symlink("loop", root / "loop2")
    os.symlink("missing", root / "dangling")
    os.symlink("dir", root / "dirlink")
    os.symlink("/proc/self", root / "magic")  # no magic links: /proc is not in the root
    return root


def _resolve(root: Path, path: str, use_openat2: bool) -> object:
    with RootResolver(root, use_openat2=use_openat2) as r:
        try:
            fd = r.open_path(path)
        except OSError as e:
            return e.errno
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def test_open_path_walk_equals_openat2(tmp_path: Path):
    """The userspace walk answers as the kernel's RESOLVE_IN_ROOT does, path for path."""
    if not openat2_available():
        pytest.skip("kernel without openat2: nothing to compare the walk with")
    (tmp_path / "x").mkdir()
    _, sentinel = _layout(tmp_path / "x")
    root = _hostile_tree(tmp_path, sentinel)
    victim = os.stat(sentinel / "victim")
    for path in RESOLVE_PATHS:
        kernel, walk = _resolve(root, path, True), _resolve(root, path, False)
        assert kernel == walk, path
        assert kernel != (victim.st_dev, victim.st_ino), path
