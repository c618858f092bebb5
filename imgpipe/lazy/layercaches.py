"""The lazy layer caches on disk, as ``content ls --lazy`` and ``gc`` see them.

::

    <root>/lazy/layers/<hex>/        one directory per layer (sha256 <hex>): the sparse
                                     blob, the record of the ranges present, ``lock``

A cache is in use while a process holds its ``lock`` file (``flock``) or while a live
lazy mount of the root lists its layer (the servers' ``state.json`` under
``tasks/*/lazy/state/`` and ``lazy/mounts/*/``, their pids checked against their start
times). ``gc`` removes a cache that is not in use when no image or lease holds its layer,
or when the layer is a committed blob (complete: the cache is a second copy), taking the
lock exclusively while it removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import Conflict, InvalidDigest, NotFound

__all__ = ["LAYERS_DIR", "LOCK_FILE", "CacheInfo", "LayerCaches", "disk_usage"]

LAYERS_DIR: Final = "lazy/layers"
LOCK_FILE: Final = "lock"


@dataclass(frozen=True)
class CacheInfo:
    """One layer's cache: its digest, the bytes it takes on disk (sparse: the blocks
    written, not the blob's size), whether a process holds it."""

    digest: Digest
    size: int
    locked: bool
    path: Path


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (st_blocks: a sparse file counts what it holds)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _try_lock(path: Path) -> int | None:
    """An exclusive lock on the cache's lock file (its fd), or None if held."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise NotFound(f"no lazy cache {path.name}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _live_layers(root: Path) -> set[str]:
    """The layer digests the live lazy mounts of ``root`` serve."""
    import json  # noqa: PLC0415

    out: set[str] = set()
    for state in (
        *root.glob("tasks/*/lazy/state/state.json"),
        *root.glob("lazy/mounts/*/state.json"),
    ):
        try:
            raw = json.loads(state.read_bytes())
            pid, start = int(raw.get("server_pid", 0)), str(raw.get("server_start", ""))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if pid > 0 and start and _start_time(pid) == start:
            out.update(str(layer.get("digest", "")) for layer in raw.get("layers", ()))
    return out


def _start_time(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text.rpartition(")")[2].split()[19]


class LayerCaches:
    """The caches under ``root`` (an imgpipe root): :class:`imgpipe.metadata.gc.GCCaches`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.base = self.root / LAYERS_DIR

    def walk(self) -> Iterator[CacheInfo]:
        try:
            names = sorted(os.listdir(self.base))
        except FileNotFoundError:
            return
        live = _live_layers(self.root)
        for name in names:
            if name.startswith(".removing-"):  # a gc that died mid-removal
                shutil.rmtree(self.base / name, ignore_errors=True)
                continue
            try:
                digest = Digest.parse(f"sha256:{name}")
            except InvalidDigest:
                continue  # not ours (a temporary name): left alone
            path = self.base / name
            if not path.is_dir():
                continue
            try:
                fd = _try_lock(path)
            except NotFound:
                continue
            if fd is not None:
                os.close(fd)
            yield CacheInfo(digest, disk_usage(path), fd is None or str(digest) in live, path)

    def delete(self, digest: Digest) -> None:
        path = self.base / digest.encoded
        if not path.is_dir():
            raise NotFound(f"no lazy cache of {digest}")
        fd = _try_lock(path)
        if fd is not None and str(digest) in _live_layers(self.root):
            os.close(fd)
            fd = None
        if fd is None:
            raise Conflict(f"the lazy cache of {digest} is in use")
        try:
            # renamed first: a server that looks for it from now on finds none
            gone = path.with_name(f".removing-{digest.encoded}")
            os.rename(path, gone)
            shutil.rmtree(gone)
        finally:
            os.close(fd)
