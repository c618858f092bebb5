"""The per-layer cache of a lazy mount: the compressed blob's bytes, as they arrive.

``<root>/lazy/layers/<hex>/``:

- ``data``: a sparse file holding the blob's bytes at their own offsets;
- ``lock``: held shared (``flock``) by every process that has the cache open; ``gc``
  removes a cache only when it can take it exclusively;
- ``ranges.json``: which ``[start, end)`` ranges of it are present. A range is recorded
  only after its bytes are on disk (``fdatasync`` before the record, which is replaced
  atomically and fsync'd), so a crash loses at most what was not yet recorded.

The bytes are the registry's, unverified: every read still goes through
:class:`~imgpipe.image.ranged.RangedLayer`, which checks each chunk against its
``chunkDigest`` (a chunk that fails is dropped from the record, :meth:`LayerCache.forget`),
and a complete blob is checked against the layer's digest before it is committed to the
content store (:mod:`imgpipe.lazy.background`). Two mounts of one layer share the cache:
the record is merged under an ``flock``; their bytes are the same blob's.

:class:`CachingRanges` is the RangeReader the server's layers read through: a range that
is present comes from ``data``; another is fetched from the registry and written there
as it streams by.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.image.tocfetch import RangeReader

__all__ = ["LAYERS_DIR", "LOCK_FILE", "CachingRanges", "LayerCache", "cache_dir"]

#: ``<root>/lazy/layers/<hex>/``
LAYERS_DIR: Final = Path("lazy") / "layers"
_DATA: Final = "data"
_RANGES: Final = "ranges.json"
#: Held shared (flock) while a cache is open: gc takes it exclusively to remove one.
LOCK_FILE: Final = "lock"
#: Serialises the record's updates between processes.
_RECORD_LOCK: Final = "ranges.lock"

Ranges = list[tuple[int, int]]


def cache_dir(root: str | os.PathLike[str], desc: Descriptor) -> Path:
    """Where the cache of the layer ``desc`` lives under the imgpipe root ``root``."""
    return Path(root) / LAYERS_DIR / desc.digest.hex


def _merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for a, b in sorted(r for r in ranges if r[0] < r[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(ranges: Ranges, a: int, b: int) -> Ranges:
    out: Ranges = []
    for x, y in ranges:
        if y <= a or x >= b:
            out.append((x, y))
            continue
        if x < a:
            out.append((x, a))
        if y > b:
            out.append((b, y))
    return out


class LayerCache:
    """The cache of one layer (``desc``) in ``directory`` (created). Thread-safe."""

    def __init__(self, directory: Path, desc: Descriptor) -> None:
        self.directory = directory
        self.desc = desc
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._held = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._held, fcntl.LOCK_SH)  # in use: gc leaves it alone
        self.path = directory / _DATA
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size != desc.size:
            os.ftruncate(self._fd, desc.size)  # sparse: holes cost nothing
        self._lock = threading.Lock()
        self._ranges = self._load()

    def close(self) -> None:
        for fd in (self._fd, self._held):
            if fd >= 0:
                os.close(fd)
        self._fd = self._held = -1

    # -- the record ------------------------------------------------------------------------

    def _load(self) -> Ranges:
        try:
            raw = json.loads((self.directory / _RANGES).read_bytes())
            if raw.get("digest") != str(self.desc.digest):
                return []
            ranges = [(int(a), int(b)) for a, b in raw["ranges"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return _merge([(max(a, 0), min(b, self.desc.size)) for a, b in ranges])

    def _save(self, change: Ranges, *, remove: bool = False) -> None:
        """Merge ``change`` into the on-disk record (another mount may have added to
        it) under the directory's lock, and replace it atomically."""
        lock = os.open(self.directory / _RECORD_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ranges = _merge(self._load() + self._ranges + ([] if remove else change))
            if remove:
                for a, b in change:
                    ranges = _subtract(ranges, a, b)
            self._ranges = ranges
            data = json.dumps({"digest": str(self.desc.digest), "ranges": ranges}).encode()
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".ranges-")
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.directory / _RANGES)
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(lock)

    def present(self, offset: int, length: int) -> bool:
        end = offset + length
        with self._lock:
            return any(a <= offset and end <= b for a, b in self._ranges)

    def missing(self) -> Ranges:
        """The ranges not yet here, in blob order."""
        with self._lock:
            out: Ranges = []
            at = 0
            for a, b in self._ranges:
                if a > at:
                    out.append((at, a))
                at = max(at, b)
            if at < self.desc.size:
                out.append((at, self.desc.size))
            return out

    def stored(self) -> int:
        with self._lock:
            return sum(b - a for a, b in self._ranges)

    def complete(self) -> bool:
        return not self.missing()

    def add(self, start: int, end: int) -> None:
        """Record ``[start, end)`` as present, after its bytes are on disk."""
        if start >= end:
            return
        os.fdatasync(self._fd)
        with self._lock:
            self._save([(start, end)])

    def forget(self, start: int, end: int) -> None:
        """Drop ``[start, end)`` from the record (its bytes failed a check)."""
        with self._lock:
            self._save([(start, end)], remove=True)

    def reset(self) -> None:
        """Drop everything (the complete blob did not verify)."""
        self.forget(0, self.desc.size)

    # -- the bytes -------------------------------------------------------------------------

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n

    def open(self, offset: int, length: int) -> BinaryIO:
        """``[offset, offset + length)`` of the cached blob, as a stream."""
        f = open(self.path, "rb")  # noqa: SIM115 (the caller closes it)
        f.seek(offset)
        return io.BufferedReader(_Limited(f, length))


class _Limited(io.RawIOBase):
    def __init__(self, f: BinaryIO, length: int) -> None:
        self._f = f
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        data = self._f.read(min(len(b), self._left))
        n = len(data)
        b[:n] = data
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _Tee(io.RawIOBase):
    """A registry range streaming by, written into the cache; what was read whole is
    recorded when the stream is closed."""

    def __init__(self, raw: BinaryIO, cache: LayerCache, offset: int, owner: CachingRanges) -> None:
        self._raw = raw
        self._cache = cache
        self._start = self._pos = offset
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(b))
        n = len(data)
        if n:
            b[:n] = data
            self._cache.write(self._pos, data)
            self._pos += n
            self._owner.counted(self._cache.desc, n)
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                with contextlib.suppress(OSError):
                    self._cache.add(self._start, self._pos)
        super().close()


class CachingRanges:
    """A RangeReader over ``upstream`` that keeps what it fetched in ``caches`` (by
    layer digest) and serves from there what is present. ``fetched(desc)``: the bytes
    that came from upstream for that blob."""

    def __init__(self, upstream: RangeReader, caches: dict[str, LayerCache]) -> None:
        self.upstream = upstream
        self.caches = caches
        self._fetched: dict[str, int] = {}
        self._lock = threading.Lock()

    def fetched(self, desc: Descriptor) -> int:
        with self._lock:
            return self._fetched.get(str(desc.digest), 0)

    def counted(self, desc: Descriptor, n: int) -> None:
        key = str(desc.digest)
        with self._lock:
            self._fetched[key] = self._fetched.get(key, 0) + n

    def open_range(self, desc: Descriptor, offset: int, length: int) -> BinaryIO:
        cache = self.caches.get(str(desc.digest))
        if cache is None:
            return self.upstream.open_range(desc, offset, length)
        if cache.present(offset, length):
            return cache.open(offset, length)
        raw = self.upstream.open_range(desc, offset, length)
        return io.BufferedReader(_Tee(raw, cache, offset, self))
