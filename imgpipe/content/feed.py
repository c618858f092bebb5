"""An ingest read while it is written: what ``pull --unpack`` follows a download with.

A :class:`~.writer.Writer` opened with ``feed=`` (``ContentStore.writer``, ``ingest_blob``)
binds to that :class:`IngestFeed` and publishes into it: the offset it has written up to,
then either that its commit verified size and digest, or that it let go without that. The
download's producer (the fetch job around ``ContentStore.ingest_blob``) ends the feed with
its outcome. A reader on another thread calls :meth:`IngestFeed.read_into`, which reads
``data`` through a descriptor of the feed's own, opened by the writer when it bound (checked
to be the writer's file), up to the published offset, and blocks for more.

Why following is safe (the argument ``FetchUnpack`` relies on):

* Nothing is trusted early. Before the end, every byte read is unverified, exactly as
  bytes arriving from a registry are; :meth:`IngestFeed.read_into` returns 0 (EOF) only
  after the writer's commit checked the whole blob, so a reader that needs EOF (the
  verified read over it, ``open_verified``, probes for it at the declared size) cannot
  finish on bad bytes. The writer's verifying reader never writes the last chunk of a bad
  blob, so a follower never holds all of one either.
* Failures are never clean ends. A writer that lets go unverified (a dropped connection,
  a digest mismatch, a cancel) stops the feed handing out bytes; its readers then wait
  for the producer's outcome and raise that error. :meth:`IngestFeed.stop` raises in
  every waiting and later read (the reader's own owner calling it off, Ctrl-C).
* The file is the writer's. The reading descriptor is opened and compared (device and
  inode) with the writer's while the writer holds the ingest's lock; the rename into
  ``blobs/`` and a discard do not disturb an open descriptor; bytes below the published
  offset are never rewritten (a ``truncate`` that would cut them ends the feed).
* Memory stays flat: reads go straight into the caller's buffer (``preadv``).

A resumed ingest binds with the bytes it already holds published at once. If no writer
binds (the blob was stored already, or by another process first) and the producer
succeeds, :meth:`IngestFeed.read_into` says so and the reader reads the stored blob.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from imgpipe.formats.errors import FailedPrecondition

__all__ = ["IngestFeed", "IngestFollower"]


class IngestFeed:
    """One ingest as a reader on another thread sees it while a writer fills it (see the
    module docstring). Thread-safe; one :class:`threading.Condition` carries every change.

    Three parties: the :class:`Writer` bound to it (the first opened with it) publishes
    offsets, the verified commit and its release; the producer (whoever runs the download)
    calls :meth:`end` with its outcome; readers call :meth:`read_into`, and :meth:`stop`
    to call them off. :meth:`close` closes the reading descriptor (the feed's owner calls
    it when no reader needs it any more).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._fd: int | None = None  # read-only, on the bound writer's data file
        self._offset = 0  # bytes of data written so far
        self._bound = False
        self._verified = False  # the commit checked size and digest
        self._left = False  # the writer let go (or cut back) without a verified commit
        self._ended = False
        self._error: BaseException | None = None  # the producer's failure
        self._stop: BaseException | None = None
        self._closed = False
        self._reading = 0  # reads past the lock, using the descriptor
        self._early = 0

    # -- the writer's side -----------------------------------------------------------------

    def _bind(self, data_fd: int, path: Path, offset: int) -> bool:
        """Publish the writer of ``data_fd`` (at ``path``), ``offset`` bytes already in.
        False (nothing published) if another writer came first or the file cannot be
        opened again as the same file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        mine, theirs = os.fstat(fd), os.fstat(data_fd)
        with self._cond:
            if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino) and not (
                self._bound or self._closed
            ):
                self._fd, self._offset, self._bound = fd, offset, True
                self._cond.notify_all()
                return True
        os.close(fd)
        return False

    def _advance(self, offset: int) -> None:
        with self._cond:
            if offset < self._offset:
                self._left = True  # bytes a reader may have had are gone
            else:
                self._offset = offset
            self._cond.notify_all()

    def _verify(self) -> None:
        with self._cond:
            self._verified = True
            self._cond.notify_all()

    def _release(self) -> None:
        with self._cond:
            self._left = self._left or not self._verified
            self._cond.notify_all()

    # -- the producer's and the owner's side ------------------------------------------------

    def end(self, error: BaseException | None) -> None:
        """The producer is done: ``error`` is why it failed (readers raise it), None if
        the blob is stored (by the bound writer, or by someone else: then
        :meth:`read_into` says so)."""
        with self._cond:
            if not self._ended:
                self._ended, self._error = True, error
            self._cond.notify_all()

    def stop(self, error: BaseException) -> None:
        """Call the readers off: a read waiting now, and every later one, raises
        ``error`` (the first given)."""
        with self._cond:
            if self._stop is None:
                self._stop = error
            self._cond.notify_all()

    def close(self) -> None:
        """Close the reading descriptor (once no read is using it). Idempotent."""
        with self._cond:
            self._closed = True
            self._stop = self._stop or ValueError("read of a closed ingest feed")
            if not self._reading:
                self._close_fd()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    # -- the reader's side ----------------------------------------------------------------

    @property
    def early(self) -> int:
        """Bytes :meth:`read_into` handed out before the commit verified them."""
        with self._cond:
            return self._early

    def read_into(self, pos: int, view: memoryview) -> int | None:
        """Read the ingest at ``pos`` into ``view`` (not empty), blocking until there is
        something to say: the number of bytes read (more than 0), 0 at the end of a blob
        whose commit verified it, None if no writer published here and the producer
        stored the blob all the same (read the stored blob instead).

        Raises what :meth:`stop` was given, else the producer's error;
        FailedPrecondition if the writer let go unverified and the producer still
        reported success (not something ``ContentStore.ingest_blob`` does).
        """
        with self._cond:
            while True:
                if self._stop is not None:
                    raise self._stop
                if self._fd is not None and not self._left and self._offset > pos:
                    fd, n, early = self._fd, min(len(view), self._offset - pos), not self._verified
                    self._reading += 1
                    break
                if self._verified:
                    return 0
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    if not self._bound:
                        return None
                    raise FailedPrecondition("the ingest was left before its commit")
                self._cond.wait()
        got = 0
        try:
            got = os.preadv(fd, [view[:n]], pos)
        finally:
            with self._cond:
                self._reading -= 1
                self._early += got if early else 0
                if self._closed and not self._reading:
                    self._close_fd()
        if not got:  # published bytes missing: the file was cut behind the writer's back
            raise FailedPrecondition(f"the ingest ends at {pos}, {pos + n} were written")
        return got


class IngestFollower(io.RawIOBase):
    """``feed`` as a stream (the one reader of the feed): :meth:`IngestFeed.read_into`
    from 0 on, and the stored blob (``stored()``) if no writer published there and the
    blob was stored all the same. Closing it closes the feed."""

    def __init__(self, feed: IngestFeed, stored: Callable[[], BinaryIO]) -> None:
        super().__init__()
        self._feed = feed
        self._stored = stored
        self._pos = 0
        self._blob: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        if self._blob is not None:
            return self._blob.readinto(view)  # type: ignore[attr-defined,no-any-return]
        if not len(view):
            return 0
        n = self._feed.read_into(self._pos, view)
        if n is None:  # stored by another writer: nothing was handed out yet
            self._blob = self._stored()
            return self.readinto(view)
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._feed.close()
                if self._blob is not None:
                    self._blob.close()
            finally:
                super().close()
