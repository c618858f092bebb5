"""Writing one ingest: append while hashing, resume after an interruption, commit.

How a blob gets in: a ``Writer`` appends to ``ingest/<key>/data`` while hashing, then
``commit`` fsyncs, checks size and digest (``verify.check_hashed``), and renames ``data``
to ``blobs/<alg>/<hex>``. The rename is the only way anything appears in ``blobs/``, so
its readers never see partial or unverified data. An interrupted write leaves its ingest
behind; the next writer of the same ref re-hashes ``data`` and continues at its end.

The fsync at commit waits only for the tail of the data: every
:data:`WRITEBACK_BYTES` written, the kernel is asked to start writing them out
(``sync_file_range``, no waiting), so a large blob goes to the disk while it downloads.

Reading an ingest while it is written (how ``pull --unpack`` applies a layer as it
downloads, :mod:`.feed`): a writer opened with ``feed=`` publishes into that
:class:`~.feed.IngestFeed` every offset it reaches (after ``os.write`` returned, so any
descriptor on ``data`` sees those bytes, from the page cache; not yet fsynced) and, once
``commit`` checked size and digest, that the blob is verified; a writer that lets go
otherwise (closed for a resume, discarded, cut back by ``truncate``) publishes that
instead. The writer itself is unchanged by it: what it writes, hashes and renames, and
when, is the same with or without a feed, so a follower can delay nothing and verify
nothing on the writer's behalf. The safety argument is the feed's (see there): a
follower gets EOF only after the verified commit, and the bytes before it are
provisional.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import FailedPrecondition, IntegrityError, SizeMismatch

from .closing import Closing
from .feed import IngestFeed
from .layout import BLOB_MODE, DATA_MODE, Layout, check_digest, check_size
from .locks import IngestLock
from .meta import fmt_time, read_meta, set_meta, write_meta
from .space import refused
from .verify import CHUNK_SIZE, VerifyingReader, check_hashed

__all__ = ["WRITEBACK_BYTES", "Writer", "rehash", "start_writeback"]

_DEFAULT_ALGORITHM: Final = "sha256"

#: Bytes appended between two write-back starts. Without them the whole blob is still
#: dirty in the page cache at commit and the fsync writes all of it while the caller
#: waits (25-40 ms for a 30 MB layer on this project's disk); with them it writes the
#: last few MiB. Large enough that the calls cost nothing (one per 8 MiB).
WRITEBACK_BYTES: Final = 8 << 20


class Writer(Closing):
    """Appends to one ingest while hashing; ``commit`` makes it a blob.

    Obtain one from ``ContentStore.writer``. It holds the ingest's lock until ``commit``,
    ``close`` or ``discard``. Leaving a ``with`` block without committing closes the
    writer and keeps the ingest for a later resume. Writes go straight to the file
    (no user-space buffer), so whatever ``offset`` says is in ``data``. Not thread-safe.
    """

    def __init__(
        self,
        layout: Layout,
        ref: str,
        *,
        lock: IngestLock,
        data_fd: int,
        digester: Digester,
        offset: int,
        expected: Digest | None,
        total: int | None,
    ) -> None:
        self.ref = ref
        self._layout = layout
        self._lock = lock
        self._fd: int | None = data_fd
        self._digester = digester
        self._offset = offset
        self._expected = expected
        self._total = total
        self._committed_new = False
        self._written_back = offset  # where the last write-back start ended
        self._feed: IngestFeed | None = None

    @classmethod
    def _open(
        cls,
        layout: Layout,
        ref: str,
        lock: IngestLock,
        *,
        expected: Digest | None,
        total: int | None,
        feed: IngestFeed | None = None,
    ) -> Writer:
        """Create or resume the ingest in ``lock.directory`` (whose lock we hold)."""
        directory = lock.directory
        meta = read_meta(directory)
        fd = os.open(
            directory / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, DATA_MODE
        )
        try:
            restart = (
                meta.damaged
                or meta.ref != ref
                or (total is not None and meta.total is not None and meta.total != total)
                or (
                    expected is not None and meta.expected is not None and meta.expected != expected
                )
            )
            eff_total = total if total is not None else (None if restart else meta.total)
            eff_expected = (
                expected if expected is not None else (None if restart else meta.expected)
            )
            algorithm = eff_expected.algorithm if eff_expected else _DEFAULT_ALGORITHM
            digester = Digester(algorithm)
            offset = 0
            if not restart:
                digester, offset = rehash(fd, algorithm)
                restart = eff_total is not None and (
                    offset > eff_total
                    or (
                        offset == eff_total
                        and eff_expected is not None
                        and digester.digest() != eff_expected
                    )
                )
            now = time.time()
            if restart:
                os.ftruncate(fd, 0)
                digester, offset = Digester(algorithm), 0
                write_meta(directory, "startedat", fmt_time(now))
                write_meta(directory, "updatedat", fmt_time(now))
                set_meta(directory, "total", None if eff_total is None else str(eff_total))
                set_meta(directory, "expected", None if eff_expected is None else str(eff_expected))
                # `ref` last: an ingest without it is treated as not (yet) existing.
                write_meta(directory, "ref", ref)
            else:
                if total is not None and meta.total is None:
                    write_meta(directory, "total", str(total))
                if expected is not None and meta.expected is None:
                    write_meta(directory, "expected", str(expected))
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        w = cls(
            layout,
            ref,
            lock=lock,
            data_fd=fd,
            digester=digester,
            offset=offset,
            expected=eff_expected,
            total=eff_total,
        )
        if feed is not None and feed._bind(fd, directory / "data", offset):
            w._feed = feed
        return w

    # -- state ----------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes in the ingest so far (where the next write lands)."""
        return self._offset

    @property
    def total(self) -> int | None:
        """The declared size, if one was given now or recorded earlier."""
        return self._total

    @property
    def expected(self) -> Digest | None:
        """The declared digest, if one was given now or recorded earlier."""
        return self._expected

    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def committed_new(self) -> bool:
        """True after a ``commit`` that created the blob (False if it already existed)."""
        return self._committed_new

    @property
    def digester(self) -> Digester:
        """The live hash of the bytes written so far: a verified read resuming this
        ingest (``open_verified(..., resume=writer)``) continues it in place."""
        return self._digester

    def digest(self) -> Digest:
        """The digest of the bytes written so far (the ingest's algorithm)."""
        return self._digester.digest()

    # -- writing --------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns its length.

        Raises SizeMismatch without writing anything if the write would take the ingest
        past its declared total; FailedPrecondition if the writer is closed. If the disk
        write fails the data file is cut back to the previous offset, so the ingest stays
        consistent for a resume.
        """
        view = memoryview(data).cast("B")
        n = len(view)
        self._require_open()
        if self._total is not None and self._offset + n > self._total:
            raise SizeMismatch(
                f"ingest {self.ref!r}: writing {n} bytes at offset {self._offset} goes past "
                f"the declared size {self._total}",
                expected=self._total,
                actual=self._offset + n,
            )
        self._append(view)
        self._digester.update(view)
        return n

    def _copy_verified(self, reader: VerifyingReader) -> None:
        """Append everything ``reader`` delivers, through one reused buffer.

        ``reader`` resumed this writer (``open_verified(..., resume=self)``), so it hashes
        into this writer's digester and checks size and digest itself: the bytes are
        hashed once, and the last chunk of a bad blob never reaches the disk.
        """
        view = memoryview(bytearray(CHUNK_SIZE))
        # One read of the source per write: what arrived is on disk before the next
        # read, which may fail, so a resume keeps it.
        while n := reader.readinto1(view):
            self._append(view[:n])

    def _append(self, view: memoryview) -> None:
        """Write ``view`` at the end of the data, unhashed. If the disk write fails the
        data file is cut back to the previous offset, so the ingest stays consistent for
        a resume; a full or read-only disk is raised as a StorageError naming the file."""
        fd = self._require_open()
        done = 0
        try:
            while done < len(view):
                done += os.write(fd, view[done:])
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._offset)
                os.lseek(fd, self._offset, os.SEEK_SET)
            if isinstance(e, OSError):
                self._raise_refused(e)
            raise
        self._offset += len(view)
        if self._feed is not None:
            self._feed._advance(self._offset)
        if self._offset - self._written_back >= WRITEBACK_BYTES:
            start_writeback(fd, self._written_back, self._offset - self._written_back)
            self._written_back = self._offset

    def describe(self) -> str:
        """What this ingest holds, for messages: the blob's digest and size if known."""
        what = f"blob {self._expected}" if self._expected else f"ingest {self.ref!r}"
        return f"{what} ({self._total} bytes)" if self._total is not None else what

    def _raise_refused(self, e: OSError) -> None:
        """Raise ``e`` as the StorageError it is, if the system refused the write."""
        needed = self._total - self._offset if self._total is not None else -1
        err = refused(e, self._lock.directory / "data", self.describe(), needed=needed)
        if err is not None:
            raise err from e

    def truncate(self) -> None:
        """Drop everything written: back to offset 0 with a fresh hash."""
        fd = self._require_open()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        self._digester = Digester(self._digester.algorithm)
        self._offset = self._written_back = 0
        if self._feed is not None:
            self._feed._advance(0)

    def commit(self, size: int, expected: Digest) -> Digest:
        """Make the ingest the blob ``expected``; returns ``expected``.

        Fsyncs the data, then checks the byte count against ``size`` (SizeMismatch) and
        the hash against ``expected`` (DigestMismatch; re-hashed if ``expected`` uses
        another algorithm than the ingest); on a mismatch the ingest is discarded. Then
        the data is made read-only and renamed into ``blobs/`` and the directory fsynced
        (at the end of the store's ``deferred_dir_sync`` block, if one is open).
        If the blob already exists (another writer committed it), the ingest is discarded
        and the call returns normally (``committed_new`` tells the two apart). The writer
        is closed and the lock released in every case, even on error; an InvalidArgument
        (bad ``size`` or ``expected``) keeps the ingest. Raises FailedPrecondition if
        already closed.
        """
        fd = self._require_open()
        directory = self._lock.directory
        try:
            expected = check_digest(expected)
            check_size(size, "size")  # a caller bug, not bad content: keep the ingest
            self._commit(fd, directory, size, expected)
            if self._feed is not None:
                self._feed._verify()  # the bytes checked out (stored by us or another)
            return expected
        except OSError as e:
            self._raise_refused(e)
            raise
        finally:
            self._release()

    def _commit(self, fd: int, directory: Path, size: int, expected: Digest) -> None:
        """``commit`` with the writer open and the arguments checked."""
        os.fsync(fd)
        digester = self._digester
        if expected.algorithm != digester.algorithm:
            digester = rehash(fd, expected.algorithm)[0]
        try:
            check_hashed(digester, os.fstat(fd).st_size, digest=expected, size=size)
        except IntegrityError:
            self._layout.remove_ingest_dir(directory)
            raise
        target = self._layout.ensure_blob_dir(expected.algorithm) / expected.encoded
        if os.path.lexists(target):
            self._layout.remove_ingest_dir(directory)
            return
        # Read-only and stamped before the rename: the blob appears in its final state.
        os.fchmod(fd, BLOB_MODE)
        now = time.time()
        os.utime(fd, (now, now))
        # Two writers of different refs may both get here for one digest; the second
        # rename replaces a file with identical (verified) bytes, which readers of the
        # first cannot tell apart.
        os.rename(directory / "data", target)
        # The name made durable now, or once at the end of the store's deferred block.
        self._layout.dirs.sync(target.parent)
        self._committed_new = True
        self._layout.remove_ingest_dir(directory)

    def discard(self) -> None:
        """Remove the ingest and release the lock (``abort`` for the lock holder).

        Raises FailedPrecondition if the writer is already closed (its lock is gone, so
        removing the ingest now could remove someone else's: use ``abort`` then).
        """
        self._require_open()
        try:
            self._layout.remove_ingest_dir(self._lock.directory)
        finally:
            self._release()

    def close(self) -> None:
        """Fsync the data, record the update time and release the lock, keeping the
        ingest for a later resume. Idempotent."""
        fd = self._fd
        if fd is None:
            return
        try:
            os.fsync(fd)
            write_meta(self._lock.directory, "updatedat", fmt_time(time.time()))
        finally:
            self._release()

    def __del__(self) -> None:
        # A writer dropped without close must not keep the ref locked for the life of
        # the process; no fsync here (finalisers should not do I/O that can fail).
        with contextlib.suppress(Exception):
            self._release()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"offset={self._offset}"
        return f"<Writer ref={self.ref!r} {state}>"

    def _require_open(self) -> int:
        if self._fd is None:
            raise FailedPrecondition(f"writer for ingest {self.ref!r} is closed")
        return self._fd

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)
        finally:
            self._lock.release()
            if self._feed is not None:
                self._feed._release()


_SYNC_FILE_RANGE_WRITE: Final = 2  # linux/fs.h: start write-out, do not wait
_SyncFileRange = Callable[[int, int, int, int], int]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` at ``offset`` to the
    disk, without waiting (``sync_file_range(SYNC_FILE_RANGE_WRITE)``).

    Best effort and durability-neutral: nothing here makes data durable (the fsync at
    commit does); it only moves the disk's work earlier. A system without the call, or
    a file system that refuses it, is silently skipped.
    """
    fn = _find_sync_file_range()
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # result ignored


@functools.cache
def _find_sync_file_range() -> _SyncFileRange | None:
    """libc's ``sync_file_range``, through ctypes (not in the os module); the call
    releases the GIL. None where there is none (not Linux, a static interpreter)."""
    import ctypes  # noqa: PLC0415 (1.4 ms: only for a blob past WRITEBACK_BYTES)

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    found: _SyncFileRange = fn
    return found


def rehash(fd: int, algorithm: str) -> tuple[Digester, int]:
    """Hash the whole file behind ``fd`` through one reused buffer: (digester, size)."""
    d = Digester(algorithm)
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    pos = 0
    while n := os.preadv(fd, [buf], pos):
        d.update(view[:n])
        pos += n
    return d, pos
