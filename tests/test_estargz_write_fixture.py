"""The containerd fixture itself: a private daemon pulls from the test registry, runs a
container and shows the unpacked rootfs (what the eStargz interop tests build on)."""

from __future__ import annotations

from pathlib import Path

from containerd_fixture import Containerd
from registry_fixtures import Registry


def test_private_containerd_pulls_runs_and_mounts(
    containerd: Containerd, registry: Registry, fixture_dir: Path
) -> None:
    registry.push_layout(fixture_dir / "busybox", "busybox", "ctd-fixture/busybox", "1")
    ctd = containerd.namespace("fixture-smoke")
    ref = registry.ref("ctd-fixture/busybox", "1")
    ctd.pull(ref)
    assert ctd.run(ref, "/bin/sh", "-c", "echo hello").stdout == "hello\n"
    with ctd.mounted(ref) as rootfs:
        assert (rootfs / "bin" / "busybox").is_file()
    assert ctd.image_digest(ref).startswith("sha256:")
    # the private daemon keeps its state under its own directory
    assert str(ctd.workdir) in ctd.address
    assert ctd.ctr_remote("version").returncode == 0
