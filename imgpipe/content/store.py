"""The local content store: blobs kept exactly as served, addressed by digest.

Layout under the store root (``<imgpipe root>/content``), as containerd's local store::

    blobs/<alg>/<hex>            committed blobs, read-only (0444), complete and verified
    ingest/<sha256(ref)>/        one in-progress write per ref
        ref                      the ref string
        data                     the bytes written so far
        startedat, updatedat     Unix times as decimal text
        total, expected          optional: declared size (decimal) and digest
        lock                     flock(2) target: held by the one writer of this ref
    ingest/.trash-*              an ingest being removed (renamed first, then deleted)

How a blob gets in: a ``Writer`` appends to ``ingest/<key>/data`` while hashing, then
``commit`` fsyncs, checks size and digest, and renames ``data`` to ``blobs/<alg>/<hex>``.
The rename is the only way anything appears in ``blobs/``, so readers never see partial
or unverified data. An interrupted write leaves its ingest behind; the next writer of the
same ref re-hashes ``data`` and continues at its end.

Concurrency, across threads and processes (there is no daemon): each ingest has a
``lock`` file held with ``flock(LOCK_EX)`` by its one writer. flock locks belong to the
open file description, so two writers in one process exclude each other too. An ingest is
removed (commit, abort, mismatch) by renaming its directory away while holding its lock;
whoever waited on the old lock file notices, after acquiring it, that the file at the
path is no longer the one it locked (inode check) and starts over on the new directory.

Errors: NotFound, AlreadyExists, Conflict (ref locked), SizeMismatch, DigestMismatch,
ResourceLimit, InvalidArgument, FailedPrecondition (a blob path that is not a regular
file, a closed writer), all from ``imgpipe.formats.errors``; OSError for the disk itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import random
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import ALGORITHMS, Digest, Digester
from imgpipe.formats.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    InvalidDigest,
    NotFound,
    ResourceLimit,
    SizeMismatch,
)
from imgpipe.formats.mediatype import MediaType

from .verify import (
    CHUNK_SIZE,
    BlobReader,
    VerifyingReader,
    check_hashed,
    digest_stream,
    open_verified,
)

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "MAX_REF_LENGTH",
    "ContentStore",
    "Info",
    "IngestStatus",
    "VerifyProblem",
    "Writer",
]

#: How long ``writer()`` waits for another writer of the same ref. A pull of the same
#: blob by two processes makes the second wait for the first; a minute covers a large
#: layer on a slow link without hanging forever on a stuck process.
DEFAULT_LOCK_TIMEOUT: Final[float] = 60.0

#: Longest ref accepted, in UTF-8 bytes: refs are names like ``import-sha256:<hex>`` and
#: are stored in a small file that is read back with a size cap.
MAX_REF_LENGTH: Final[int] = 1024

# Polling back-off while another writer holds a ref (containerd's OpenWriter does the
# same, 16 ms doubling to 2 s): short first so a quick commit is noticed at once, capped
# so a waiter reacts within half a second when the lock is freed.
_BACKOFF_INITIAL: Final = 0.005
_BACKOFF_MAX: Final = 0.5

# An ingest directory replaced under us again and again means someone is aborting and
# recreating it in a loop; give up with Conflict rather than spin.
_REPLACED_RETRIES: Final = 1000

# Metadata files hold a ref, a digest, a number or a time: a few hundred bytes at most.
_META_LIMIT: Final = 4096

_DIR_MODE: Final = 0o755
_DATA_MODE: Final = 0o644
_BLOB_MODE: Final = 0o444

_DEFAULT_ALGORITHM: Final = "sha256"

# What ``ingest`` calls a stream it is handed without a descriptor.
_OCTET_STREAM: Final = MediaType("application/octet-stream")


def _backoff_sleep(seconds: float) -> None:
    """Sleep between lock polls. A module function so tests can observe the waiting."""
    time.sleep(seconds)


def _flock(fd: int, operation: int) -> None:
    """flock(2). A module function so tests can act between open and lock (the race the
    inode check in ``_lock_ingest`` exists for)."""
    fcntl.flock(fd, operation)


@dataclass(frozen=True)
class Info:
    """A committed blob. ``created_at`` is the commit time (mtime), ``updated_at`` the
    access time (atime), as containerd's local store reports them."""

    digest: Digest
    size: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class IngestStatus:
    """An in-progress write. ``offset`` is the size of its data so far; ``locked`` says
    whether a writer holds it at the time of the call."""

    ref: str
    offset: int
    total: int | None
    expected: Digest | None
    started_at: float
    updated_at: float
    locked: bool


@dataclass(frozen=True)
class VerifyProblem:
    """A blob whose bytes are not what its name promises, with a sentence saying why."""

    digest: Digest
    problem: str


@dataclass(frozen=True)
class _Meta:
    """What an ingest directory records about itself; ``damaged`` if a file is unreadable."""

    ref: str | None
    total: int | None
    expected: Digest | None
    started_at: float | None
    updated_at: float | None
    damaged: bool


class _Lock:
    """A held flock on an ingest's lock file. ``release`` is idempotent."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


class _OneStream:
    """A BlobReader over one stream already open (``ContentStore.ingest``)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self._stream


class ContentStore:
    """Blobs by digest, plus resumable ingests. Safe to share between processes.

    ``root`` is the store's own directory (``<imgpipe root>/content``); it and its
    subdirectories are created when first needed, so constructing a store does no I/O.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root: Path = Path(root)
        self._blobs = self.root / "blobs"
        self._ingest = self.root / "ingest"

    def __repr__(self) -> str:
        return f"ContentStore({str(self.root)!r})"

    # -- committed blobs ------------------------------------------------------------------

    def info(self, digest: Digest) -> Info:
        """Size and times of a committed blob.

        Raises NotFound if there is no such blob, FailedPrecondition if its path holds
        something other than a regular file. Idempotent.
        """
        path = self._blob_path(digest)
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"content {digest}: not found") from None
        if not stat.S_ISREG(st.st_mode):
            raise FailedPrecondition(f"content {digest}: {path} is not a regular file")
        return Info(digest=digest, size=st.st_size, created_at=st.st_mtime, updated_at=st.st_atime)

    def exists(self, digest: Digest) -> bool:
        """Whether the blob is committed. Raises FailedPrecondition as ``info`` does."""
        try:
            self.info(digest)
        except NotFound:
            return False
        return True

    def open(self, digest: Digest) -> BinaryIO:
        """The committed blob, opened read-only, positioned at 0. The caller closes it.

        The final path component is opened with O_NOFOLLOW, so a symlink planted in
        ``blobs/`` is refused (FailedPrecondition) rather than followed. Reads are not
        re-verified (the blob was verified at commit; ``verify`` re-checks the store).
        Raises NotFound.
        """
        path = self._blob_path(digest)
        # O_NONBLOCK so that a FIFO planted at the path cannot hang the open; it is
        # cleared again once the file is known to be regular.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, flags)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"content {digest}: not found") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise FailedPrecondition(f"content {digest}: {path} is a symlink") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FailedPrecondition(f"content {digest}: {path} is not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, digest: Digest, *, limit: int) -> bytes:
        """The whole blob, for small documents (manifests, indexes, configs).

        Raises ResourceLimit if the blob is larger than ``limit`` bytes (nothing is
        read), DigestMismatch if the stored bytes no longer hash to ``digest`` (a
        document is parsed only after that check), NotFound.
        """
        with self.open(digest) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise ResourceLimit(f"content {digest} is {size} bytes; the limit here is {limit}")
            with VerifyingReader(f, digest=digest, size=size) as reader:
                return reader.read()

    def walk(self) -> Iterator[Info]:
        """Every committed blob, in no particular order.

        Entries under ``blobs/`` that are not a supported algorithm, not a valid digest
        or not a regular file are skipped, as are blobs deleted while walking.
        """
        for alg in sorted(ALGORITHMS):
            try:
                entries = os.scandir(self._blobs / alg)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    try:
                        digest = Digest(alg, entry.name)
                        st = entry.stat(follow_symlinks=False)
                    except (InvalidDigest, FileNotFoundError):
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield Info(
                            digest=digest,
                            size=st.st_size,
                            created_at=st.st_mtime,
                            updated_at=st.st_atime,
                        )

    def delete(self, digest: Digest) -> None:
        """Remove a committed blob. Raises NotFound if it is not there.

        Readers that already opened the blob keep reading it (POSIX unlink semantics).
        Deciding *whether* a blob may go is the garbage collector's job, not the store's.
        """
        path = self._blob_path(digest)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"content {digest}: not found") from None

    def verify(self) -> Iterator[VerifyProblem]:
        """Re-hash every committed blob and yield one problem per bad blob.

        The problem is ``"content hashes to <digest>"`` when the bytes changed,
        ``"size N differs from M"`` when the file changed while being read, and
        ``"unreadable: ..."`` when it cannot be read. A clean store yields nothing.
        """
        for info in self.walk():
            try:
                with self.open(info.digest) as f:
                    actual, size = digest_stream(f, algorithm=info.digest.algorithm)
            except NotFound:
                continue  # deleted while we walked: not a problem of the store
            except (OSError, FailedPrecondition) as e:
                yield VerifyProblem(info.digest, f"unreadable: {e}")
                continue
            if actual != info.digest:
                yield VerifyProblem(info.digest, f"content hashes to {actual}")
            elif size != info.size:
                yield VerifyProblem(info.digest, f"size {size} differs from {info.size}")

    # -- ingests --------------------------------------------------------------------------

    def writer(
        self,
        ref: str,
        *,
        expected: Digest | None = None,
        total: int | None = None,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> Writer:
        """A writer for the ingest named ``ref``, created or resumed, holding its lock.

        If ``expected`` is already committed, raises AlreadyExists before creating
        anything (and again if it got committed while this call waited for the lock).
        An existing ingest is resumed: its data is re-hashed and writing continues at its
        end (``Writer.offset``). It is restarted at 0 instead if its recorded ``total`` or
        ``expected`` disagree with the ones given, if it holds more than ``total`` bytes,
        or if it holds exactly ``total`` bytes that do not hash to ``expected``.

        If another writer holds the ref (in this or another process), polls with bounded
        exponential back-off for up to ``timeout`` seconds, then raises Conflict;
        ``timeout=0`` does not wait. Raises InvalidArgument for a bad ref, total or
        timeout. Use the writer as a context manager.
        """
        _check_ref(ref)
        if expected is not None:
            expected = _check_digest(expected)
        if total is not None and (
            not isinstance(total, int) or isinstance(total, bool) or total < 0
        ):
            raise InvalidArgument(f"total must be a non-negative integer, not {total!r}")
        if not timeout >= 0:  # also refuses NaN
            raise InvalidArgument(f"timeout must be >= 0, not {timeout!r}")
        if expected is not None and self.exists(expected):
            raise AlreadyExists(f"content {expected}: already exists")
        lock = self._lock_ingest(ref, timeout=timeout, create=True)
        try:
            if expected is not None and self.exists(expected):
                # Committed by the writer we waited for. A directory we only just
                # created for this call is ours to clean; a real ingest stays.
                if not (lock.directory / "ref").exists():
                    self._remove_ingest_dir(lock.directory)
                raise AlreadyExists(f"content {expected}: already exists")
            return Writer._open(self, ref, lock, expected=expected, total=total)
        except BaseException:
            lock.release()
            raise

    def ingests(self) -> Iterator[IngestStatus]:
        """The status of every ingest, in no particular order (see ``ingest_status``)."""
        try:
            entries = os.scandir(self._ingest)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                # Only names we create: 64 hex characters. Trash and strays are skipped.
                if len(entry.name) != 64 or entry.name.strip("0123456789abcdef"):
                    continue
                directory = Path(entry.path)
                meta = _read_meta(directory)
                if meta.ref is None or _ref_key(meta.ref) != entry.name:
                    continue
                with contextlib.suppress(NotFound):
                    yield self._status(directory, meta.ref, meta)

    def ingest_status(self, ref: str) -> IngestStatus:
        """Where the ingest ``ref`` stands. Raises NotFound if there is none.

        ``locked`` is found by briefly taking a shared flock; a writer polling for the
        lock at that very moment just polls once more.
        """
        _check_ref(ref)
        directory = self._ingest_dir(ref)
        meta = _read_meta(directory)
        if meta.ref != ref:
            raise NotFound(f"ingest {ref!r}: not found")
        return self._status(directory, ref, meta)

    def abort(self, ref: str) -> None:
        """Remove the ingest ``ref`` and its data.

        Raises NotFound if there is none, Conflict if a writer holds it (it does not
        wait: the holder may be about to commit). Not idempotent: a second call raises
        NotFound.
        """
        _check_ref(ref)
        directory = self._ingest_dir(ref)
        if not directory.is_dir():
            raise NotFound(f"ingest {ref!r}: not found")
        lock = self._lock_ingest(ref, timeout=0, create=False)
        try:
            self._remove_ingest_dir(lock.directory)
        finally:
            lock.release()

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The committed blob ``desc`` names, raw (``open``): the store as a BlobReader.

        Read it through ``open_verified(store, desc)`` to have it checked again.
        """
        return self.open(desc.digest)

    def ingest_blob(
        self,
        source: BlobReader,
        desc: Descriptor,
        *,
        ref: str | None = None,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> bool:
        """Copy the blob ``desc`` from ``source`` into the store, verified on the way.

        The ingest is named ``ref`` (default ``import-<digest>``, so two processes
        fetching one blob share one ingest). If the ingest resumes at offset N, the
        source stream starts at N (``open_verified(source, desc, resume=writer)``: a
        seek, which a registry stream turns into a Range request) and the hash of the
        N bytes already stored is continued, so every byte is hashed once. The source
        is not opened at all when the blob is already committed. Returns True if this
        call committed the blob, False if it already existed (before or by the time of
        the commit).

        A stream that is shorter or longer than ``desc.size``, or whose bytes hash to
        another digest, raises SizeMismatch or DigestMismatch (from the verifying reader,
        before its last chunk is written) and the ingest is discarded. Any other error
        (the stream failing mid-way) keeps the ingest for a later resume. Raises Conflict
        as ``writer`` does after waiting ``timeout`` seconds.
        """
        try:
            w = self.writer(
                ref if ref is not None else f"import-{desc.digest}",
                expected=desc.digest,
                total=desc.size,
                timeout=timeout,
            )
        except AlreadyExists:
            return False
        with w:
            try:
                with open_verified(source, desc, resume=w) as reader:
                    w._copy_verified(reader)
            except IntegrityError:
                w.discard()
                raise
            w.commit(desc.size, desc.digest)  # fsync, then rename into blobs/
            return w.committed_new

    def ingest(
        self,
        ref: str,
        stream: BinaryIO,
        *,
        digest: Digest,
        size: int,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> bool:
        """``ingest_blob`` for a stream already open: the blob ``digest`` of ``size`` bytes.

        If the ingest resumes at offset N, the first N bytes of ``stream`` are skipped
        (by seeking if it is seekable, else by reading and discarding). Returns and
        raises as ``ingest_blob``; ``stream`` is not read if the blob exists, and is
        closed once it was read from.
        """
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"size must be a non-negative integer, not {size!r}")
        desc = Descriptor(media_type=_OCTET_STREAM, digest=_check_digest(digest), size=size)
        return self.ingest_blob(_OneStream(stream), desc, ref=ref, timeout=timeout)

    # -- internals ------------------------------------------------------------------------

    def _blob_path(self, digest: Digest) -> Path:
        d = _check_digest(digest)
        return self._blobs / d.algorithm / d.encoded

    def _ingest_dir(self, ref: str) -> Path:
        return self._ingest / _ref_key(ref)

    def _ensure_blob_dir(self, algorithm: str) -> Path:
        directory = self._blobs / algorithm
        if not directory.is_dir():
            directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            # Make the new directories themselves durable before blobs are renamed in.
            _fsync_dir(self._blobs)
            _fsync_dir(self.root)
        return directory

    def _lock_ingest(self, ref: str, *, timeout: float, create: bool) -> _Lock:
        """Take the ingest's flock, creating the directory if ``create``.

        Without ``create`` a missing ingest is NotFound. Raises Conflict when the lock is
        still held after ``timeout`` seconds.
        """
        directory = self._ingest_dir(ref)
        lock_path = directory / "lock"
        deadline = time.monotonic() + timeout
        delay = _BACKOFF_INITIAL
        replaced = 0
        while True:
            if create:
                self._ingest.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, _DIR_MODE)
            try:
                # O_CREAT: two processes creating the ingest at once open the same file.
                fd = os.open(
                    lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _DATA_MODE
                )
            except FileNotFoundError:
                if not create:
                    raise NotFound(f"ingest {ref!r}: not found") from None
                # The directory was removed between mkdir and open: again.
                replaced += 1
                if replaced > _REPLACED_RETRIES:
                    break
                continue
            try:
                _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Conflict(
                        f"ingest {ref!r} is being written by another writer"
                        + (f" (waited {timeout:g} s)" if timeout else "")
                    ) from None
                # Jitter keeps several waiters from polling in lock-step.
                jitter = random.uniform(0.5, 1.0)  # noqa: S311 - not a secret
                _backoff_sleep(min(delay * jitter, left))
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            except BaseException:
                os.close(fd)
                raise
            # The lock is ours, but is it still the ingest's lock? The holder before us
            # may have removed the directory (commit/abort) between our open and our
            # flock; then we hold a lock on a file nobody else will ever look at.
            if _same_file(fd, lock_path):
                return _Lock(directory, fd)
            os.close(fd)
            if not create and not directory.exists():
                raise NotFound(f"ingest {ref!r}: not found")
            replaced += 1
            if replaced > _REPLACED_RETRIES:
                break
        raise Conflict(f"ingest {ref!r} keeps being replaced by another process")

    def _remove_ingest_dir(self, directory: Path) -> None:
        """Remove an ingest whose lock the caller holds.

        Renaming first makes the removal atomic for everyone else: the ingest is gone
        from its path in one step, and a newcomer creates a fresh directory instead of
        finding a half-deleted one.
        """
        trash = self._ingest / f".trash-{directory.name}-{secrets.token_hex(8)}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _status(self, directory: Path, ref: str, meta: _Meta) -> IngestStatus:
        try:
            dst = os.stat(directory, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFound(f"ingest {ref!r}: not found") from None
        try:
            st = os.stat(directory / "data", follow_symlinks=False)
            offset, data_mtime = st.st_size, st.st_mtime
        except FileNotFoundError:
            offset, data_mtime = 0, 0.0
        started = meta.started_at if meta.started_at is not None else dst.st_mtime
        updated = max(meta.updated_at or 0.0, data_mtime, started)
        return IngestStatus(
            ref=ref,
            offset=offset,
            total=meta.total,
            expected=meta.expected,
            started_at=started,
            updated_at=updated,
            locked=_probe_locked(directory / "lock"),
        )


class Writer:
    """Appends to one ingest while hashing; ``commit`` makes it a blob.

    Obtain one from ``ContentStore.writer``. It holds the ingest's lock until ``commit``,
    ``close`` or ``discard``. Leaving a ``with`` block without committing closes the
    writer and keeps the ingest for a later resume. Writes go straight to the file
    (no user-space buffer), so whatever ``offset`` says is in ``data``. Not thread-safe.
    """

    def __init__(
        self,
        store: ContentStore,
        ref: str,
        *,
        lock: _Lock,
        data_fd: int,
        digester: Digester,
        offset: int,
        expected: Digest | None,
        total: int | None,
    ) -> None:
        self.ref = ref
        self._store = store
        self._lock = lock
        self._fd: int | None = data_fd
        self._digester = digester
        self._offset = offset
        self._expected = expected
        self._total = total
        self._committed_new = False

    @classmethod
    def _open(
        cls,
        store: ContentStore,
        ref: str,
        lock: _Lock,
        *,
        expected: Digest | None,
        total: int | None,
    ) -> Writer:
        """Create or resume the ingest in ``lock.directory`` (whose lock we hold)."""
        directory = lock.directory
        meta = _read_meta(directory)
        fd = os.open(
            directory / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _DATA_MODE
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
                digester, offset = _rehash(fd, algorithm)
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
                _write_meta(directory, "startedat", _fmt_time(now))
                _write_meta(directory, "updatedat", _fmt_time(now))
                _set_meta(directory, "total", None if eff_total is None else str(eff_total))
                _set_meta(
                    directory, "expected", None if eff_expected is None else str(eff_expected)
                )
                # `ref` last: an ingest without it is treated as not (yet) existing.
                _write_meta(directory, "ref", ref)
            else:
                if total is not None and meta.total is None:
                    _write_meta(directory, "total", str(total))
                if expected is not None and meta.expected is None:
                    _write_meta(directory, "expected", str(expected))
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return cls(
            store,
            ref,
            lock=lock,
            data_fd=fd,
            digester=digester,
            offset=offset,
            expected=eff_expected,
            total=eff_total,
        )

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
        a resume."""
        fd = self._require_open()
        done = 0
        try:
            while done < len(view):
                done += os.write(fd, view[done:])
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._offset)
                os.lseek(fd, self._offset, os.SEEK_SET)
            raise
        self._offset += len(view)

    def truncate(self) -> None:
        """Drop everything written: back to offset 0 with a fresh hash."""
        fd = self._require_open()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        self._digester = Digester(self._digester.algorithm)
        self._offset = 0

    def commit(self, size: int, expected: Digest) -> Digest:
        """Make the ingest the blob ``expected``; returns ``expected``.

        Fsyncs the data, then checks the byte count against ``size`` (SizeMismatch) and
        the hash against ``expected`` (DigestMismatch; re-hashed if ``expected`` uses
        another algorithm than the ingest); on a mismatch the ingest is discarded. Then
        the data is made read-only and renamed into ``blobs/`` and the directory fsynced.
        If the blob already exists (another writer committed it), the ingest is discarded
        and the call returns normally (``committed_new`` tells the two apart). The writer
        is closed and the lock released in every case, even on error; an InvalidArgument
        (bad ``size`` or ``expected``) keeps the ingest. Raises FailedPrecondition if
        already closed.
        """
        fd = self._require_open()
        store = self._store
        directory = self._lock.directory
        try:
            expected = _check_digest(expected)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                # A caller bug, not bad content: keep the ingest.
                raise InvalidArgument(f"size must be a non-negative integer, not {size!r}")
            os.fsync(fd)
            digester = self._digester
            if expected.algorithm != digester.algorithm:
                digester = _rehash(fd, expected.algorithm)[0]
            try:
                check_hashed(digester, os.fstat(fd).st_size, digest=expected, size=size)
            except IntegrityError:
                store._remove_ingest_dir(directory)
                raise
            target = store._ensure_blob_dir(expected.algorithm) / expected.encoded
            if os.path.lexists(target):
                store._remove_ingest_dir(directory)
                return expected
            # Read-only and stamped before the rename: the blob appears in its final state.
            os.fchmod(fd, _BLOB_MODE)
            now = time.time()
            os.utime(fd, (now, now))
            # Two writers of different refs may both get here for one digest; the second
            # rename replaces a file with identical (verified) bytes, which readers of the
            # first cannot tell apart.
            os.rename(directory / "data", target)
            _fsync_dir(target.parent)
            self._committed_new = True
            store._remove_ingest_dir(directory)
            return expected
        finally:
            self._release()

    def discard(self) -> None:
        """Remove the ingest and release the lock (``abort`` for the lock holder).

        Raises FailedPrecondition if the writer is already closed (its lock is gone, so
        removing the ingest now could remove someone else's: use ``abort`` then).
        """
        self._require_open()
        try:
            self._store._remove_ingest_dir(self._lock.directory)
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
            _write_meta(self._lock.directory, "updatedat", _fmt_time(time.time()))
        finally:
            self._release()

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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


# -- helpers --------------------------------------------------------------------------------


def _check_digest(digest: Digest) -> Digest:
    """Paths are computed only from validated digests: re-validate whatever we were given."""
    if not isinstance(digest, Digest):
        raise InvalidArgument(f"expected a Digest, not {type(digest).__name__}")
    return Digest(digest.algorithm, digest.encoded)


def _check_ref(ref: str) -> None:
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument(f"ingest ref must be a non-empty string, not {ref!r}")
    try:
        encoded = ref.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"ingest ref {ref!r} is not valid Unicode") from None
    if len(encoded) > MAX_REF_LENGTH:
        raise InvalidArgument(f"ingest ref is longer than {MAX_REF_LENGTH} bytes")


def _ref_key(ref: str) -> str:
    # The directory is named by a hash of the ref, as containerd does: any ref string
    # (slashes, "..", NUL-free Unicode) maps to one safe, fixed-length name.
    return hashlib.sha256(ref.encode("utf-8")).hexdigest()


def _same_file(fd: int, path: Path) -> bool:
    held = os.fstat(fd)
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _probe_locked(lock_path: Path) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _rehash(fd: int, algorithm: str) -> tuple[Digester, int]:
    """Hash the whole file behind ``fd`` through one reused buffer: (digester, size)."""
    d = Digester(algorithm)
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    pos = 0
    while n := os.preadv(fd, [buf], pos):
        d.update(view[:n])
        pos += n
    return d, pos


def _fmt_time(t: float) -> str:
    return f"{t:.9f}"


def _read_small(path: Path) -> str | None:
    """A metadata file's text; None if missing. ValueError if oversized or not UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        raw = os.read(fd, _META_LIMIT + 1)
    finally:
        os.close(fd)
    if len(raw) > _META_LIMIT:
        raise ValueError(f"{path} is larger than {_META_LIMIT} bytes")
    return raw.decode("utf-8")


def _read_meta(directory: Path) -> _Meta:
    damaged = False
    values: dict[str, str | None] = {}
    for name in ("ref", "total", "expected", "startedat", "updatedat"):
        try:
            values[name] = _read_small(directory / name)
        except (OSError, ValueError):
            values[name], damaged = None, True
    total: int | None = None
    expected: Digest | None = None
    times: dict[str, float | None] = {"startedat": None, "updatedat": None}
    try:
        if (t := values["total"]) is not None:
            total = int(t)
            if total < 0:
                raise ValueError(t)
        if (e := values["expected"]) is not None:
            expected = Digest.parse(e)
        for name in times:
            if (v := values[name]) is not None:
                times[name] = float(v)
    except ValueError:  # InvalidDigest is a ValueError too
        damaged = True
    return _Meta(
        ref=values["ref"],
        total=total,
        expected=expected,
        started_at=times["startedat"],
        updated_at=times["updatedat"],
        damaged=damaged,
    )


def _write_meta(directory: Path, name: str, text: str) -> None:
    """Replace a metadata file atomically (callers hold the ingest lock)."""
    tmp = directory / f".{name}.tmp"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, _DATA_MODE
    )
    try:
        data = text.encode("utf-8")
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
    finally:
        os.close(fd)
    os.replace(tmp, directory / name)


def _set_meta(directory: Path, name: str, text: str | None) -> None:
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
    else:
        _write_meta(directory, name, text)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
