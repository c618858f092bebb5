"""A loop-backed btrfs file system for tests: sparse file, mkfs.btrfs, losetup, mount.

Use :func:`loop_btrfs` from a fixture in the test module::

    @pytest.fixture(scope="module")
    def btrfs_dir(tmp_path_factory):
        with loop_btrfs(tmp_path_factory.mktemp("btrfs")) as mnt:
            yield mnt

Needs root (loop devices and mount): skips with that reason otherwise. A missing
mkfs.btrfs or losetup as root is a failure with an install hint, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: Sparse size of the backing file: above mkfs.btrfs's minimum (about 110 MiB with the
#: default profiles) with room for a few hundred small snapshots.
SIZE = 512 << 20


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def require_root(what: str) -> None:
    """Skip the test unless running as root (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (mounts, loop devices); CI runs as root")


@contextmanager
def loop_btrfs(workdir: Path, *, size: int = SIZE) -> Iterator[Path]:
    """A fresh btrfs mounted at ``workdir/mnt``; unmounted, detached and deleted after."""
    require_root("btrfs on a loop device")
    for tool, pkg in (
        ("mkfs.btrfs", "btrfs-progs"),
        ("btrfs", "btrfs-progs"),
        ("losetup", "mount"),
        ("mount", "mount"),
    ):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install {pkg} (apt-get install {pkg}, or make setup)")
    image = workdir / "btrfs.img"
    mnt = workdir / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    _run("mkfs.btrfs", "-q", "-f", str(image))
    dev = _run("losetup", "--find", "--show", str(image))
    try:
        _run("mount", "-t", "btrfs", dev, str(mnt))
        try:
            yield mnt
        finally:
            # Lazy: a test that failed while something was mounted below must not keep
            # the file system (and the loop device) busy for the rest of the session.
            subprocess.run(["umount", "-R", "-l", str(mnt)], capture_output=True, timeout=60)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)
        image.unlink(missing_ok=True)
