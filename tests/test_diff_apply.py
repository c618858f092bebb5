"""apply_layer on the fixture images, in delete and overlay modes, and its edge cases."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from fixtures.build import LAYERED_ABSENT, expected_rootfs
from imgpipe.diff import (
    WHITEOUT_OVERLAY,
    WHITEOUT_OVERLAY_USER,
    ApplyOptions,
    apply_layer,
)
from imgpipe.errors import DigestMismatch, MalformedDocument
from imgpipe.formats.digest import Digest
from tests.treecompare import assert_same, matches_expected, snapshot

# --- helpers shared with the other diff tests ------------------------------------------


def image_layers(layout: Path) -> list[tuple[str, Path, Digest]]:
    """(media type, blob path, diff ID) per layer of a single-manifest fixture layout."""

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    index = json.loads((layout / "index.json").read_bytes())
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    return [
        (layer["mediaType"], blob(layer["digest"]), Digest.parse(diff_id))
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]


@contextlib.contextmanager
def open_layer(media_type: str, path: Path) -> Iterator[BinaryIO]:
    """The uncompressed tar stream of a layer blob (the caller's job in the pipeline)."""
    with open(path, "rb") as raw:
        if media_type.endswith("gzip"):
            with gzip.GzipFile(fileobj=raw) as g:
                yield g  # type: ignore[misc]
        elif media_type.endswith("zstd"):
            with zstandard.ZstdDecompressor().stream_reader(raw) as z:
                yield z  # type: ignore[misc]
        else:
            yield raw


def apply_image(layout: Path, root: Path, **opts) -> list:
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for media_type, blob, diff_id in image_layers(layout):
        with open_layer(media_type, blob) as stream:
            results.append(
                apply_layer(root, stream, options=ApplyOptions(**opts), expected_diff_id=diff_id)
            )
    return results


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            else:
                tar.addfile(ti)
    return buf.getvalue()


def ti(name: str, kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = kind
    t.mode = kw.pop("mode", 0o644)
    t.mtime = kw.pop("mtime", 1704067200)
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def apply_bytes(root: Path, data: bytes, **opts):
    root.mkdir(parents=True, exist_ok=True)
    return apply_layer(root, io.BytesIO(data), options=ApplyOptions(**opts))


def overlay_mount(lowers: list[Path], target: Path) -> None:
    """Read-only overlay of ``lowers`` (nearest first) at ``target``; needs root."""
    target.mkdir(parents=True, exist_ok=True)
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)], check=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

# --- the fixture images ----------------------------------------------------------------

APPLY_FIXTURES = [
    "busybox",
    "busybox-zstd",
    "busybox-uncompressed",
    "layered",
    "layered-zstd",
    "layered-uncompressed",
    "layered-docker",
]


@pytest.mark.parametrize("name", APPLY_FIXTURES)
def test_fixture_rootfs(fixture_dir: Path, tmp_path: Path, name: str):
    root = tmp_path / "rootfs"
    results = apply_image(fixture_dir / name, root)
    assert [r.diff_id for r in results] == [d for _, _, d in image_layers(fixture_dir / name)]
    assert all(r.warnings == () for r in results)
    tree = snapshot(root)
    assert matches_expected(tree, expected_rootfs(name)) == []
    if name.startswith("layered"):
        for path in LAYERED_ABSENT:
            assert path not in tree


def test_diff_id_is_hash_of_every_byte(fixture_dir: Path, tmp_path: Path):
    _, blob, diff_id = image_layers(fixture_dir / "layered-uncompressed")[1]
    data = blob.read_bytes()
    # Extra zero records after the end-of-archive blocks are part of the layer's bytes.
    padded = data + b"\0" * 10240
    r = apply_bytes(tmp_path / "r", padded)
    assert r.diff_id == Digest.from_bytes(padded) != diff_id
    assert r.size == len(padded)
    r2 = apply_bytes(tmp_path / "r2", data)
    assert (r2.diff_id, r2.size) == (diff_id, len(data))


def test_wrong_diff_id(fixture_dir: Path, tmp_path: Path):
    media_type, blob, _ = image_layers(fixture_dir / "busybox")[0]
    wrong = Digest("sha256", "0" * 64)
    with open_layer(media_type, blob) as stream, pytest.raises(DigestMismatch) as info:
        apply_layer(tmp_path, stream, expected_diff_id=wrong)
    assert info.value.expected == str(wrong)


@needs_root
def test_overlay_mode_matches_delete_mode(fixture_dir: Path, tmp_path: Path):
    layout = fixture_dir / "layered"
    flat = tmp_path / "flat"
    apply_image(layout, flat)
    uppers: list[Path] = []
    for i, (media_type, blob, diff_id) in enumerate(image_layers(layout)):
        upper = tmp_path / f"l{i}"
        upper.mkdir()
        opts = ApplyOptions(whiteouts=WHITEOUT_OVERLAY, lowers=tuple(reversed(uppers)))
        with open_layer(media_type, blob) as stream:
            r = apply_layer(upper, stream, options=opts, expected_diff_id=diff_id)
        assert r.warnings == ()
        uppers.append(upper)
    # L3's whiteouts are overlay's on-disk forms, not deletions.
    wh = (uppers[3] / "etc" / "to-delete").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(uppers[3] / "opt" / "replaced", "trusted.overlay.opaque") == b"y"
    merged = tmp_path / "merged"
    overlay_mount(list(reversed(uppers)), merged)
    try:
        assert_same(snapshot(merged), snapshot(flat))
    finally:
        subprocess.run(["umount", str(merged)], check=True)


@needs_root
def test_overlay_copy_up_parent_and_hardlink_to_lower(tmp_path: Path):
    lower = tmp_path / "lower"
    apply_bytes(
        lower,
        tar_bytes(
            (ti("d", tarfile.DIRTYPE, mode=0o710, uid=7, gid=8), None),
            (ti("d/target", mode=0o640, uid=7), b"shared bytes"),
        ),
    )
    os.setxattr(lower / "d", "user.kept", b"1")
    upper = tmp_path / "upper"
    layer = tar_bytes(
        (ti("d/new"), b"n"),
        (ti("d/link", tarfile.LNKTYPE, linkname="d/target", mode=0o640, uid=7), None),
        (ti("e/.wh..wh..opq"), b""),
    )
    apply_bytes(upper, layer, whiteouts=WHITEOUT_OVERLAY_USER, lowers=(lower,))
    st = (upper / "d").lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o710, 7, 8)
    assert os.getxattr(upper / "d", "user.kept") == b"1"
    # the target was copied up beside the link: one inode, the lower's content and owner
    a, b = (upper / "d" / "target").lstat(), (upper / "d" / "link").lstat()
    assert (a.st_ino, a.st_nlink, a.st_uid) == (b.st_ino, 2, 7)
    assert (upper / "d" / "link").read_bytes() == b"shared bytes"
    assert os.getxattr(upper / "e", "user.overlay.opaque") == b"y"
    # the same layer in delete mode, without lowers, cannot find the target
    with pytest.raises(MalformedDocument, match="does not exist"):
        apply_bytes(tmp_path / "alone", layer)


# --- entry-level behaviour -----------------------------------------------------------


def test_options_without_privileges(tmp_path: Path):
    layer = tar_bytes(
        (ti("f", uid=1234, gid=5678), b"x"),
        (ti("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        (ti("p", tarfile.FIFOTYPE), None),
    )
    r = apply_bytes(tmp_path / "r", layer, same_owner=False, devices=False)
    st = (tmp_path / "r" / "f").lstat()
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert not (tmp_path / "r" / "dev" / "null").exists()
    assert any("dev/null" in w and "skipped" in w for w in r.warnings)
    assert stat.S_ISFIFO((tmp_path / "r" / "p").lstat().st_mode)


@needs_root
def test_owner_devices_modes_as_root(tmp_path: Path):
    layer = tar_bytes(
        (ti("f", uid=1234, gid=5678, mode=0o6755), b"x"),
        (ti("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
        (ti("dev/loop9", tarfile.BLKTYPE, devmajor=7, devminor=9, mode=0o660), None),
        (ti("tmp", tarfile.DIRTYPE, mode=0o1777), None),
        (ti("l", tarfile.SYMTYPE, linkname="f", uid=42, gid=43), None),
    )
    r = apply_bytes(tmp_path / "r", layer)
    assert r.warnings == ()
    root = tmp_path / "r"
    st = (root / "f").lstat()
    # setuid/setgid survive because chmod comes after chown
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o6755)
    dev = (root / "dev" / "null").lstat()
    assert stat.S_ISCHR(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
    blk = (root / "dev" / "loop9").lstat()
    assert stat.S_ISBLK(blk.st_mode) and os.minor(blk.st_rdev) == 9
    assert stat.S_IMODE((root / "tmp").lstat().st_mode) == 0o1777
    assert ((root / "l").lstat().st_uid, (root / "l").lstat().st_gid) == (42, 43)


def test_times_xattrs_and_capability(tmp_path: Path):
    cap = bytes([1, 0, 0, 2, 0x80, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    f = ti("bin/ping", mode=0o755)
    f.pax_headers = {
        "mtime": "1704067200.123456789",
        "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.note": "hello",
        "SCHILY.xattr.trusted.evil": "1",
    }
    d = ti("bin", tarfile.DIRTYPE, mtime=1000)
    r = apply_bytes(tmp_path / "r", tar_bytes((d, None), (f, b"#!")))
    root = tmp_path / "r"
    assert (root / "bin" / "ping").lstat().st_mtime_ns == 1704067200_123456789
    # the directory's time is set after its child was created in it
    assert (root / "bin").lstat().st_mtime_ns == 1000 * 10**9
    if os.geteuid() == 0:
        assert os.getxattr(root / "bin" / "ping", "security.capability") == cap
    assert os.getxattr(root / "bin" / "ping", "user.note") == b"hello"
    assert "trusted.evil" not in os.listxattr(root / "bin" / "ping")
    assert any("trusted.evil refused" in w for w in r.warnings)


def test_opaque_keeps_this_layers_children_in_any_order(tmp_path: Path):
    root = tmp_path / "r"
    apply_bytes(root, tar_bytes((ti("d/old"), b"o"), (ti("d/keep/old"), b"o")))
    for order in ("before", "after"):
        marker = (ti("d/.wh..wh..opq"), b"")
        new = [(ti("d/new"), b"n"), (ti("d/keep", tarfile.DIRTYPE), None)]
        members = [marker, *new] if order == "before" else [*new, marker]
        apply_bytes(root, tar_bytes(*members))
        assert sorted(p.name for p in (root / "d").iterdir()) == ["keep", "new"], order
        assert list((root / "d" / "keep").iterdir()) == []


def test_sparse_file_written_densely(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(3 << 20)
        f.write(b"end")
        f.seek(1 << 20)
        f.write(b"middle")
    out = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=posix", "-C", src, "-cf", out, "sparse"], check=True
    )
    root = tmp_path / "r"
    apply_bytes(root, out.read_bytes())
    got = root / "sparse"
    assert (
        hashlib.sha256(got.read_bytes()).digest()
        == hashlib.sha256((src / "sparse").read_bytes()).digest()
    )


def test_gnu_long_names(tmp_path: Path):
    long = "d/" + "x" * 150 + "/" + "y" * 120
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        t = ti(long)
        t.size = 2
        tar.addfile(t, io.BytesIO(b"ok"))
        tar.addfile(ti("l", tarfile.SYMTYPE, linkname=long))
    apply_bytes(tmp_path / "r", buf.getvalue())
    assert (tmp_path / "r" / long).read_bytes() == b"ok"
    assert os.readlink(tmp_path / "r" / "l") == long


def test_userspace_walk_equals_openat2(fixture_dir: Path, tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    apply_image(fixture_dir / "layered", a)
    apply_image(fixture_dir / "layered", b, use_openat2=False)
    assert_same(snapshot(a), snapshot(b))
