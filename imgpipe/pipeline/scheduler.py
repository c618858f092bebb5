"""The one scheduler: bounded concurrency, progress, cancellation, rollback.

Every verb that moves or makes blobs uses these, so the knobs and the failure rules are
the same everywhere:

* :func:`run_concurrently` -- a job per item, ``workers`` at a time; the first failure
  stops what has not started and is raised (pull's blobs, push's uploads, conversion).
* :class:`Background` -- the same, started in the background with per-item waits and
  cancellation (``pull --unpack`` applies a layer as soon as its blob is in).
* :class:`ProgressReader` -- a pass-through that reports bytes read as BLOB_PROGRESS
  and stops a cancelled transfer at its next read.
* :func:`rollback` -- what a failed run committed goes again, unless something else
  holds it by now (pipelines no longer call it: their lease is left to expire instead).

Cancellation is one ``threading.Event`` per run (``Context.cancel``): the first failure
or Ctrl-C sets it, every ProgressReader given it stops at its next read (reads are at
most :data:`CANCEL_READ_SIZE` then, so a slow link stops within a fraction of a
second), queued jobs never start, and the workers are joined before the error goes on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, BinaryIO, Final, Generic, TypeVar, cast

from imgpipe.events import Event, EventKind, Observer
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import FailedPrecondition, NotFound
from imgpipe.processors.streams import PassThrough
from imgpipe.store import Store

__all__ = [
    "CANCEL_GRACE",
    "CANCEL_READ_SIZE",
    "DEFAULT_MAX_CONCURRENT",
    "PROGRESS_INTERVAL",
    "WAIT_SLICE",
    "Background",
    "Cancelled",
    "ProgressReader",
    "announce_waiting",
    "rollback",
    "run_concurrently",
]

#: Blobs transferred at once, as ``docker pull`` and containerd default to. Hashing,
#: file I/O and (later) sockets release the GIL, so threads use both cores.
DEFAULT_MAX_CONCURRENT: Final = 3

#: A blob's BLOB_PROGRESS events are at least this many seconds apart (the last one,
#: all bytes in, is always sent): a display needs a few updates a second, not one per
#: 1 MiB read at 700 MB/s.
PROGRESS_INTERVAL: Final = 0.1

#: A ProgressReader that can be cancelled reads at most this much at a time: the cancel
#: check runs between reads, so this bounds how long a cancelled transfer runs on (0.2 s
#: at 1.3 MB/s, a third of a 4 MB/s link; 0.4 ms at 700 MB/s, where the extra calls
#: cost nothing measurable).
CANCEL_READ_SIZE: Final = 256 * 1024

#: Seconds an interrupted run waits for its running transfers to stop (a 256 KiB read
#: takes 0.2 s at 1.3 MB/s). One still inside a read by then (a stalled connection: no
#: byte for up to the 60 s read timeout) is left behind, cancelled, so Ctrl-C is never
#: held hostage by a silent server; the command exits without it (what it wrote so far
#: is a consistent ingest; only its unfinished read is lost).
CANCEL_GRACE: Final = 0.5

#: How long one wait of :class:`Background` blocks before it looks again at the other
#: jobs (a failure anywhere is seen within this) and lets signals in.
WAIT_SLICE: Final = 0.05

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


class Cancelled(Exception):
    """A background job stopped because its :class:`Background` was cancelled.

    Never reaches the caller: the error that caused the cancellation (or Ctrl-C) does.
    """


class ProgressReader(PassThrough, BinaryIO):
    """Pass-through reader that reports bytes read as BLOB_PROGRESS events.

    ``detail`` is ``verb`` ("downloading", "uploading", "converting"), and ``final`` on
    the event of the last byte. Seeking is passed on (the content store seeks past what
    a resumed ingest already has, and the registry stream turns that into a Range
    request); the offset reported is the stream position, so a resumed transfer's bar
    starts where it left off. Once ``cancel`` is set the next read raises Cancelled
    (before it asks for bytes, and after: what that read brought is not passed on); with
    a ``cancel`` a read asks for at most :data:`CANCEL_READ_SIZE` bytes.
    """

    def __init__(
        self,
        raw: BinaryIO,
        emit: Observer,
        desc: Descriptor,
        verb: str,
        *,
        final: str = "verifying",
        cancel: threading.Event | None = None,
    ) -> None:
        super().__init__(raw)
        self._emit = emit
        self._desc = desc
        self._verb = verb
        self._final = final
        self._cancel = cancel
        self._offset = 0
        self._last = 0.0

    def _report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        d = self._desc
        state = self._final if final else self._verb
        self._emit(
            Event(EventKind.BLOB_PROGRESS, d.digest, d.media_type, d.size, state, self._offset)
        )

    def _check(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            # a transfer that was called off: stop now, not at the end
            raise Cancelled(f"transfer of {self._desc.digest} cancelled")

    def readinto(self, buffer: Any) -> int:
        self._check()
        if self._cancel is not None:
            buffer = memoryview(buffer).cast("B")[:CANCEL_READ_SIZE]
        return super().readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        if self._cancel is not None and size is not None and size > CANCEL_READ_SIZE:
            size = CANCEL_READ_SIZE  # read() to the end stays what it says
        return super().read(size)

    def _seen(self, chunk: bytes | memoryview) -> None:
        self._check()
        self._offset += len(chunk)
        self._report(final=self._offset >= self._desc.size)

    def seekable(self) -> bool:
        try:
            return bool(self._raw.seekable())
        except (AttributeError, OSError, ValueError):
            return False

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._offset = self._raw.seek(offset, whence)
        self._report()
        return self._offset

    def tell(self) -> int:
        return self._offset


def announce_waiting(emit: Observer, descs: Iterable[Descriptor]) -> None:
    """BLOB_WAITING for each of ``descs``: queued behind other transfers."""
    for d in descs:
        emit(Event(EventKind.BLOB_WAITING, d.digest, d.media_type, d.size, "waiting"))


def _identity(d: Any) -> Descriptor:
    return cast(Descriptor, d)


def run_concurrently(
    emit: Observer,
    items: Sequence[T],
    workers: int,
    name: str,
    job: Callable[[T], R],
    *,
    describe: Callable[[T], Descriptor] = _identity,
    cancel: threading.Event | None = None,
) -> list[R]:
    """``job`` on each item, ``workers`` at a time; the results in item order.

    Items past the first ``workers`` are announced as BLOB_WAITING (``describe`` says an
    item's descriptor; default: the item is one). With ``workers`` <= 1 the jobs run
    here, in order. On a failure or Ctrl-C, queued jobs never start and ``cancel`` is
    set, so running jobs whose streams watch it (ProgressReader) stop at their next
    read; the workers are joined, then the first failure (or the KeyboardInterrupt) is
    raised. A job that stopped because of the cancel (Cancelled) is not the failure.
    """
    announce_waiting(emit, (describe(i) for i in items[workers:]))
    if workers <= 1:
        out = []
        for i in items:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled before the next job")
            out.append(job(i))
        return out
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    futures: list[Future[R]] = []
    interrupted = False
    try:
        futures = [pool.submit(job, i) for i in items]
        # in slices, so Ctrl-C gets in however the platform's lock waits behave
        while True:
            done, pending = wait(futures, timeout=WAIT_SLICE, return_when=FIRST_EXCEPTION)
            if not pending or any(not f.cancelled() and f.exception() for f in done):
                break
    except BaseException:
        interrupted = True
        if cancel is not None:
            cancel.set()
        raise
    finally:
        if cancel is not None and any(
            f.done() and not f.cancelled() and f.exception() for f in futures
        ):
            cancel.set()  # a job failed: the running ones stop at their next read
        _join(pool, futures, interrupted)
    failures = [exc for f in futures if not f.cancelled() and (exc := f.exception()) is not None]
    for exc in failures:
        if not isinstance(exc, Cancelled):
            raise exc
    if failures:
        raise failures[0]
    return [f.result() for f in futures]


class Background(Generic[K]):
    """Jobs running on ``workers`` threads, each known by a key, started at once.

    :meth:`wait` returns once that job is done. The first failure of any job cancels
    the rest (queued ones never start; running ones see :attr:`cancel_event` set, and
    a ProgressReader given it stops at its next read) and is raised by every later
    :meth:`wait` and :meth:`check`. Use it as a context manager: leaving it on an
    error cancels, and it always joins the workers.
    """

    def __init__(
        self,
        jobs: Sequence[tuple[K, Callable[[threading.Event], object]]],
        workers: int,
        name: str,
        *,
        cancel: threading.Event | None = None,
    ) -> None:
        self._keys = tuple(k for k, _ in jobs)
        # a run's own event (Context.cancel) when given: Ctrl-C anywhere stops these too
        self._cancel = cancel if cancel is not None else threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._futures: dict[K, Future[object]] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        try:
            for key, job in jobs:
                with self._lock:
                    if self._cancel.is_set():
                        break
                    f = self._pool.submit(job, self._cancel)
                    self._futures[key] = f
                # outside the lock: a future already done runs the callback right here
                f.add_done_callback(self._on_done)
        except BaseException:
            self.close()
            raise

    def _on_done(self, f: Future[object]) -> None:
        if f.cancelled():
            return
        exc = f.exception()
        if exc is None or isinstance(exc, Cancelled):
            return
        with self._lock:
            if self._error is None:
                self._error = exc
        self.cancel()

    @property
    def cancel_event(self) -> threading.Event:
        """Set once the jobs are called off."""
        return self._cancel

    @property
    def error(self) -> BaseException | None:
        """The first job's failure, or None."""
        return self._error

    def check(self) -> None:
        """Raise the first failure, if a job failed; FailedPrecondition if the jobs
        were cancelled without one."""
        if self._error is not None:
            raise self._error
        if self._cancel.is_set():
            raise FailedPrecondition("the blob fetch was cancelled")

    def done(self, key: K) -> bool:
        """True once the job ``key`` has finished without an error."""
        f = self._futures.get(key)
        return f is not None and f.done() and not f.cancelled() and f.exception() is None

    def wait(self, key: K) -> None:
        """Block until the job ``key`` is done; raise as :meth:`check` does if any job
        fails first. NotFound if there is no such job."""
        if key not in self._keys:
            raise NotFound(f"blob {key} is not part of this fetch")
        while True:
            self.check()
            f = self._futures.get(key)
            if f is None:  # never submitted: cancelled meanwhile
                continue
            # in slices: a failure of another job is seen promptly, Ctrl-C gets in
            finished, _ = wait([f], timeout=WAIT_SLICE)
            if finished and self.done(key):
                return

    def wait_all(self) -> None:
        """:meth:`wait` for every job, in order, then join the workers."""
        for key in self._keys:
            self.wait(key)
        self.close()

    def cancel(self) -> None:
        """Stop: queued jobs never start, running ones see :attr:`cancel_event`."""
        self._cancel.set()
        with self._lock:
            futures = list(self._futures.values())
        for f in futures:
            f.cancel()

    def close(self, *, interrupted: bool = False) -> None:
        """Join the workers (after :meth:`cancel`, they stop early); ``interrupted``:
        for at most :data:`CANCEL_GRACE` seconds, then leave the stuck ones behind."""
        with self._lock:
            futures = list(self._futures.values())
        _join(self._pool, futures, interrupted)

    def __enter__(self) -> Background[K]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.cancel()
        self.close(interrupted=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))


def _join(pool: ThreadPoolExecutor, futures: Sequence[Future[Any]], interrupted: bool) -> None:
    """Shut ``pool`` down. Normally every worker is joined; after Ctrl-C only for
    :data:`CANCEL_GRACE` seconds (see there)."""
    if not interrupted:
        pool.shutdown(wait=True, cancel_futures=True)
        return
    pool.shutdown(wait=False, cancel_futures=True)
    wait(futures, timeout=CANCEL_GRACE)


def rollback(store: Store, created: Iterable[Digest]) -> None:
    """Remove blobs a failed run committed, unless something else (an image, a live
    lease) holds them by now. Call it after the run's lease is released."""
    from imgpipe.metadata.gc import collect  # noqa: PLC0415 (only a failed run collects)

    collect(store.db, store.content, only=set(created))
