"""The local content store: blobs kept exactly as served, addressed by digest.

``ContentStore`` reads committed blobs (it is a ``BlobReader``: ``open_blob``), walks,
verifies and deletes them, and lets blobs in only through ingests: ``ingest_blob`` copies
one from any ``BlobReader`` through ``open_verified``, resuming a partial ingest, and
``writer`` hands out the ``Writer`` of one ingest for bytes made here. The paths are in
``layout``, the per-ingest lock in ``locks``, the ingest's files in ``meta``, the writer
in ``writer``.

Errors: NotFound, AlreadyExists, Conflict (ref locked), SizeMismatch, DigestMismatch,
ResourceLimit, InvalidArgument, FailedPrecondition (a blob path that is not a regular
file, a closed writer), all from ``imgpipe.formats.errors``; StorageError (NoSpace,
ReadOnlyStore) when the disk refuses a write (``space``); OSError for other disk errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, NamedTuple

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import ALGORITHMS, Digest
from imgpipe.formats.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    InvalidDigest,
    NotFound,
    ResourceLimit,
)
from imgpipe.formats.mediatype import MediaType

from .layout import Layout, check_digest, check_ref, check_size, ref_key
from .locks import DEFAULT_LOCK_TIMEOUT, lock_ingest, probe_locked
from .meta import IngestMeta, read_meta
from .space import ensure_space, refused
from .verify import BlobReader, VerifyingReader, digest_stream, open_verified

if TYPE_CHECKING:
    from .feed import IngestFeed
    from .writer import Writer

__all__ = ["ContentStore", "Info", "IngestStatus", "VerifyProblem"]

# What ``ingest`` calls a stream it is handed without a descriptor.
_OCTET_STREAM: Final = MediaType("application/octet-stream")


# A NamedTuple, not a frozen dataclass: the same equality, hash, repr and immutability, and
# ~0.2 ms to define instead of ~1.2 ms, on the start-up of every verb that imports it.
class Info(NamedTuple):
    """A committed blob. ``created_at`` is the commit time (mtime), ``updated_at`` the
    access time (atime), as containerd's local store reports them."""

    digest: Digest
    size: int
    created_at: float
    updated_at: float


class IngestStatus(NamedTuple):
    """An in-progress write. ``offset`` is the size of its data so far; ``locked`` says
    whether a writer holds it at the time of the call."""

    ref: str
    offset: int
    total: int | None
    expected: Digest | None
    started_at: float
    updated_at: float
    locked: bool


class VerifyProblem(NamedTuple):
    """A blob whose bytes are not what its name promises, with a sentence saying why."""

    digest: Digest
    problem: str


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
        self._layout = Layout(self.root)

    def __repr__(self) -> str:
        return f"ContentStore({str(self.root)!r})"

    # -- committed blobs ------------------------------------------------------------------

    def info(self, digest: Digest) -> Info:
        """Size and times of a committed blob.

        Raises NotFound if there is no such blob, FailedPrecondition if its path holds
        something other than a regular file. Idempotent.
        """
        path = self._layout.blob_path(digest)
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
        path = self._layout.blob_path(digest)
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
                entries = os.scandir(self._layout.blobs / alg)
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
        path = self._layout.blob_path(digest)
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
        feed: IngestFeed | None = None,
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
        timeout. Use the writer as a context manager. With ``feed``, the writer
        publishes its progress there for a reader on another thread (:mod:`.feed`).
        """
        check_ref(ref)
        if expected is not None:
            expected = check_digest(expected)
        if total is not None:
            check_size(total, "total")
        if not timeout >= 0:  # also refuses NaN
            raise InvalidArgument(f"timeout must be >= 0, not {timeout!r}")
        if expected is not None and self.exists(expected):
            raise AlreadyExists(f"content {expected}: already exists")
        try:
            return self._open_writer(
                ref, expected=expected, total=total, timeout=timeout, feed=feed
            )
        except OSError as e:
            what = f"blob {expected}" if expected is not None else f"ingest {ref!r}"
            needed = -1 if total is None else total
            if err := refused(e, self._layout.ingest_dir(ref), what, needed=needed):
                raise err from e
            raise

    def _open_writer(
        self,
        ref: str,
        *,
        expected: Digest | None,
        total: int | None,
        timeout: float,
        feed: IngestFeed | None,
    ) -> Writer:
        lock = lock_ingest(self._layout, ref, timeout=timeout, create=True)
        try:
            if expected is not None and self.exists(expected):
                # Committed by the writer we waited for. A directory we only just
                # created for this call is ours to clean; a real ingest stays.
                if not (lock.directory / "ref").exists():
                    self._layout.remove_ingest_dir(lock.directory)
                raise AlreadyExists(f"content {expected}: already exists")
            from .writer import Writer  # noqa: PLC0415 (reading the store does not load it)

            return Writer._open(self._layout, ref, lock, expected=expected, total=total, feed=feed)
        except BaseException:
            lock.release()
            raise

    def ingests(self) -> Iterator[IngestStatus]:
        """The status of every ingest, in no particular order (see ``ingest_status``)."""
        try:
            entries = os.scandir(self._layout.ingest)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                # Only names we create: 64 hex characters. Trash and strays are skipped.
                if len(entry.name) != 64 or entry.name.strip("0123456789abcdef"):
                    continue
                directory = Path(entry.path)
                meta = read_meta(directory)
                if meta.ref is None or ref_key(meta.ref) != entry.name:
                    continue
                with contextlib.suppress(NotFound):
                    yield self._status(directory, meta.ref, meta)

    def ingest_status(self, ref: str) -> IngestStatus:
        """Where the ingest ``ref`` stands. Raises NotFound if there is none.

        ``locked`` is found by briefly taking a shared flock; a writer polling for the
        lock at that very moment just polls once more.
        """
        check_ref(ref)
        directory = self._layout.ingest_dir(ref)
        meta = read_meta(directory)
        if meta.ref != ref:
            raise NotFound(f"ingest {ref!r}: not found")
        return self._status(directory, ref, meta)

    def abort(self, ref: str) -> None:
        """Remove the ingest ``ref`` and its data.

        Raises NotFound if there is none, Conflict if a writer holds it (it does not
        wait: the holder may be about to commit). Not idempotent: a second call raises
        NotFound.
        """
        check_ref(ref)
        directory = self._layout.ingest_dir(ref)
        if not directory.is_dir():
            raise NotFound(f"ingest {ref!r}: not found")
        lock = lock_ingest(self._layout, ref, timeout=0, create=False)
        try:
            self._layout.remove_ingest_dir(lock.directory)
        finally:
            lock.release()

    def deferred_dir_sync(self) -> AbstractContextManager[None]:
        """A block whose commits fsync ``blobs/`` once at its end, not once per blob.

        Every blob committed inside (from any thread) has its data fsynced before its
        rename, as always, so a name never points at bytes that are not on the disk;
        the directory fsyncs that make the names themselves durable are batched and done
        when the block ends, also on an error (see ``layout.DirSync``). Use it around
        many commits that nothing durable refers to before the block ends (a fetch,
        before the image is recorded). Blocks may nest and run in parallel.
        """
        return self._layout.dirs.deferred()

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
        feed: IngestFeed | None = None,
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
        before its last chunk is written) and the ingest is discarded. Any other error (the
        stream failing mid-way, a cancel, Ctrl-C) keeps the ingest for a later resume,
        unless not a byte was written. ``feed``: as for :meth:`writer`. Raises Conflict as
        ``writer`` does after waiting ``timeout`` seconds; NoSpace before reading the source
        if the rest of the blob cannot fit (``space.ensure_space``), and a StorageError if
        the disk refuses a write (the ingest kept).
        """
        ref = ref if ref is not None else f"import-{desc.digest}"
        # Refused before anything is created or read when the rest cannot fit.
        what = f"blob {desc.digest} ({desc.size} bytes)"
        ensure_space(self._layout.ingest, self._missing_bytes(desc, ref), what)
        try:
            w = self.writer(ref, expected=desc.digest, total=desc.size, timeout=timeout, feed=feed)
        except AlreadyExists:
            return False
        with w:
            try:
                with open_verified(source, desc, resume=w) as reader:
                    w._copy_verified(reader)
            except IntegrityError:
                w.discard()
                raise
            except BaseException:
                if w.offset == 0 and not w.closed:
                    w.discard()  # stopped before a byte arrived: nothing to resume
                raise
            w.commit(desc.size, desc.digest)  # fsync, then rename into blobs/
            return w.committed_new

    def check_space(self, descs: Iterable[Descriptor], what: str) -> None:
        """NoSpace, before anything moves, unless the blobs of ``descs`` that are not
        stored yet (less what their ingests already hold) fit on the disk, leaving
        :data:`~imgpipe.content.space.KEEP_FREE` bytes. ``what`` names them in the
        message. A check, not a reservation: concurrent writers may still fill the disk."""
        missing = [(d, self._missing_bytes(d, f"import-{d.digest}")) for d in descs]
        missing = [(d, n) for d, n in missing if n > 0]
        if missing:
            needed = sum(n for _, n in missing)
            ensure_space(self._layout.ingest, needed, f"{what} ({len(missing)} blobs to fetch)")

    def _missing_bytes(self, desc: Descriptor, ref: str) -> int:
        """Bytes of ``desc`` still to write: 0 if it is stored, less what the ingest
        ``ref`` already holds."""
        if self.exists(desc.digest):
            return 0
        try:
            have = self.ingest_status(ref).offset
        except NotFound:
            have = 0
        return max(desc.size - have, 0)

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
        check_size(size, "size")
        desc = Descriptor(media_type=_OCTET_STREAM, digest=check_digest(digest), size=size)
        return self.ingest_blob(_OneStream(stream), desc, ref=ref, timeout=timeout)

    # -- internals ------------------------------------------------------------------------

    def _status(self, directory: Path, ref: str, meta: IngestMeta) -> IngestStatus:
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
            locked=probe_locked(directory / "lock"),
        )
