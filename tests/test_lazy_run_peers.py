"""``run --lazy`` of an eStargz image another tool wrote: ``ctr-remote images convert
--estargz --oci`` (stargz-snapshotter 0.12, in a private containerd 1.6), pushed with
``ctr images push`` to the real registry. The source is debian-multi's base layer (libc,
dash, base-files: 17 MB) and its small top layer (tests/lazy_images.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import IMGPIPE
from containerd_fixture import Containerd
from lazy_images import make_debian_multi
from registry_fixtures import Registry
from run_helpers import mounts_under, runc_ids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="FUSE and overlay mounts need root")


def test_run_lazy_of_a_ctr_remote_estargz_image_prints_its_output(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    image = make_debian_multi(tmp_path / "src", groups=1)
    registry.push_layout(image.layout, image.tag, "lazy-peer/debian", "src")
    ctd = containerd.namespace("lazy-run-peers")
    src = registry.ref("lazy-peer/debian", "src")
    ctd.pull(src)
    dst = registry.ref("lazy-peer/debian", "ctr-remote")
    ctd.ctr_remote("images", "convert", "--estargz", "--oci", src, dst)
    ctd.push(dst)
    root = tmp_path / "root"
    script = 'while IFS= read -r l; do echo "$l"; done < /etc/os-release'  # dash builtins
    argv = [str(IMGPIPE), "--root", str(root), "run", "--rm", "--lazy"]
    out = subprocess.run(
        [*argv, "--lazy-background=false", dst, "sh", "-c", script],
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == image.os_release
    assert b"2 layers lazy" in out.stderr, out.stderr
    assert not mounts_under(root) and not runc_ids(root)
