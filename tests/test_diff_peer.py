"""Peer equality: our applied rootfs equals ``umoci unpack``'s, tree for tree.

umoci is the most careful layer unpacker in Go (the issue's reference peer). Compared per
path: kind, mode with set-id bits, uid/gid, size, content sha256, link target, user.* and
security.capability xattrs, device numbers, hardlink groups. umoci cannot read zstd
layers, so the zstd fixtures are left out. An image rewritten by skopeo (media
types stay OCI, layers compressed by Go's gzip) is unpacked by both too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_diff_apply import apply_image, image_layers, needs_root
from tests.treecompare import assert_same, snapshot

PEER_FIXTURES = ["busybox", "busybox-uncompressed", "layered", "layered-uncompressed"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install {name} (or make setup)")
    return path


def _umoci_rootfs(layout: Path, tag: str, bundle: Path) -> Path:
    subprocess.run(
        [_tool("umoci"), "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    return bundle / "rootfs"


@needs_root
@pytest.mark.parametrize("name", PEER_FIXTURES)
def test_equals_umoci(fixture_dir: Path, tmp_path: Path, name: str):
    peer = _umoci_rootfs(fixture_dir / name, name, tmp_path / "bundle")
    ours = tmp_path / "ours"
    apply_image(fixture_dir / name, ours)
    assert_same(snapshot(ours), snapshot(peer))


@needs_root
def test_skopeo_converted_image_equals_umoci(fixture_dir: Path, tmp_path: Path):
    converted = tmp_path / "converted"
    src = fixture_dir / "layered-uncompressed"
    # skopeo gzips the uncompressed layers with Go's compressor: other layer bytes, the
    # same DiffIDs. (Its oci: reader does not accept the Docker-typed fixture's index.)
    subprocess.run(
        [
            _tool("skopeo"),
            "copy",
            "--quiet",
            "--dest-compress",
            f"oci:{src}:layered-uncompressed",
            f"oci:{converted}:conv",
        ],
        check=True,
        capture_output=True,
    )
    peer = _umoci_rootfs(converted, "conv", tmp_path / "bundle")
    ours = tmp_path / "ours"
    results = apply_image(converted, ours)
    assert [r.warnings for r in results] == [()] * 4
    assert all(mt.endswith("tar+gzip") for mt, _, _ in image_layers(converted))
    assert_same(snapshot(ours), snapshot(peer))
    assert os.path.exists(ours / "data" / "xattr.txt")
