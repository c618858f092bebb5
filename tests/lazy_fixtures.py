"""Helpers for the lazy-mount tests: mount an image lazily, stack overlay on it, and
describe a tree (names, types, modes, owners, sizes, links, content, xattrs) so two
trees can be compared with ``==``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IMGPIPE

from imgpipe.formats.reference import parse_transport
from imgpipe.image import Image, load
from imgpipe.image.tocfetch import range_reader
from imgpipe.lazy import LazyMount, LazyPlan, lazy_plan, start_lazy
from imgpipe.snapshots import Mount, mount_all, unmount
from imgpipe.store import Store
from imgpipe.transports import open_source

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
    reason="lazy mounts need root and /dev/fuse (CI runs as root)",
)

#: eStargz bookkeeping a full unpack writes (the TOC is a tar entry of the blob) and a
#: lazy tree, built from the TOC, cannot show: the TOC does not list itself.
NOT_IN_TOC = {"stargz.index.json"}


def cli(
    *args: str | os.PathLike[str], root: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(IMGPIPE)] + (["--root", str(root)] if root else []) + [str(a) for a in args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def fuse_mounts(under: Path) -> list[str]:
    """The lazy (fuse.imgpipe) mounts below ``under`` (the test's own directory: other
    sessions on the machine may have theirs)."""
    with open("/proc/self/mountinfo") as f:
        lines = [line for line in f if " fuse.imgpipe " in line]
    return [line for line in lines if line.split()[4].startswith(str(under))]


def plan_of(ref: str) -> tuple[LazyPlan, Any]:
    """The lazy plan of ``ref`` and its open source (the caller closes it)."""
    source = open_source(parse_transport(ref))
    image = load(source, source.resolve())
    assert isinstance(image, Image)
    return lazy_plan(image, source), source


@contextlib.contextmanager
def lazily_mounted(
    ref: str, store: Store, state_dir: Path, *, background: bool = False
) -> Iterator[LazyMount]:
    """``ref`` mounted lazily (the server reads through a source of its own)."""
    plan, source = plan_of(ref)
    assert plan.fallback is None, (plan.fallback, plan.detail)

    def reopen() -> Any:
        return range_reader(open_source(parse_transport(ref)))

    m = start_lazy(store, plan, state_dir, background=background, reopen=reopen)
    try:
        yield m
    finally:
        m.stop()
        source.close()


@contextlib.contextmanager
def overlaid(lowers: list[Path], work: Path) -> Iterator[Path]:
    """An overlay of ``lowers`` (top first) with a scratch upper dir, at work/merged."""
    for d in ("upper", "work", "merged"):
        (work / d).mkdir(parents=True, exist_ok=True)
    options = [
        "lowerdir=" + ":".join(map(str, lowers)),
        f"upperdir={work / 'upper'}",
        f"workdir={work / 'work'}",
    ]
    mount_all([Mount(type="overlay", source="overlay", options=tuple(options))], work / "merged")
    try:
        yield work / "merged"
    finally:
        unmount(work / "merged")


def describe(root: Path, *, skip: set[str] = NOT_IN_TOC) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not ``root`` itself): type and mode, owner, size, link
    count, device, symlink target, content digest, xattrs, mtime (not of directories,
    whose times overlay and the applier may touch), and which entries share an inode."""
    out: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel in skip:
                continue
            st = os.lstat(path)
            content = target = ""
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.file_digest(f, "sha256").hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for key in sorted(os.listxattr(path)):
                    xattrs[key] = os.getxattr(path, key)
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[rel] = (
                stat.filemode(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
                st.st_rdev,
                target,
                content,
                tuple(xattrs.items()),
                mtime,
            )
    links = {tuple(sorted(paths)) for paths in inodes.values() if len(paths) > 1}
    out["<hardlinks>"] = tuple(sorted(links))
    return out


@contextlib.contextmanager
def fully_mounted(ref: str, root: Path, target: Path) -> Iterator[Path]:
    """``ref`` pulled in full, unpacked and mounted read-only at ``target``."""
    pulled = cli("pull", ref, root=root)
    assert pulled.returncode == 0, pulled.stderr
    target.mkdir(parents=True, exist_ok=True)
    name = pulled.stdout.split()[0]  # the stored name (an oci: ref is stored by its tag)
    mounted = cli("mount", "--read-only", name, target, root=root)
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield target
    finally:
        cli("umount", target, root=root)


def lazy_and_full(ref: str, work: Path, *, big: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tree of ``ref`` mounted lazily (overlay over the FUSE layers) and fully
    unpacked, each as :func:`describe` gives it; ``big.bin`` read through the lazy mount
    must be ``big``. Both mounts are gone when it returns."""
    with fully_mounted(ref, work / "full", work / "full-rootfs") as full:
        want = describe(full)
    with (
        lazily_mounted(ref, Store(work / "root"), work / "state") as m,
        overlaid(m.lowers, work / "ov") as merged,
    ):
        got = describe(merged)
        assert (merged / "big.bin").read_bytes() == big
    return got, want
