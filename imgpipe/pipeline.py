"""Stages and pipelines: the Python API everything else is built from.

A *stage* is a small object with one job: ``run(item, ctx)`` takes the previous stage's
output and returns its own. A :class:`Pipeline` runs stages in order inside one
:class:`Context`, which carries the store, the lease that protects what the run writes
from a concurrent ``gc``, the open transports, and the observer that receives progress
events. Library code never prints: it emits :class:`Event` values to the observer.

The built-in stages for moving images::

    Resolve         TransportRef -> Resolved      open the source, find the root descriptor
    FetchDocuments  Resolved     -> ImagePlan     fetch + verify index/manifests, pick platforms
    FetchBlobs      ImagePlan    -> ImagePlan     fetch + verify configs and layers not yet stored
    Record          ImagePlan    -> ImageRecord   name the image in the metadata database
    LoadImage       str          -> ImagePlan     an image already in the store, by name
    Export          ImagePlan    -> Descriptor    write every blob, then the root, to a sink

``imgpipe.pull`` is ``Pipeline([Resolve(), FetchDocuments(), FetchBlobs(), Record(name)])``.
A user stage goes anywhere its input type fits; for example a size check between
FetchDocuments and FetchBlobs refuses an image before a single layer is downloaded::

    class MaxSize:
        name = "max-size"
        def run(self, plan: ImagePlan, ctx: Context) -> ImagePlan:
            if plan.total_size() > LIMIT:
                raise imgpipe.ResourceLimit(f"image is {plan.total_size()} bytes")
            return plan

    Pipeline.pull(name="x").insert_after("fetch-documents", MaxSize()).run(ref, store=s)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, BinaryIO, Final, Protocol, TypeVar, cast

from imgpipe.events import Event, EventKind, Observer
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    InvalidReference,
    NotFound,
    ResourceLimit,
    SizeMismatch,
)
from imgpipe.formats.layout import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index, Manifest, parse_document
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef, parse_reference
from imgpipe.image import ImagePlan, walk_image
from imgpipe.metadata import ImageRecord, Lease
from imgpipe.metadata.gc import collect
from imgpipe.metadata.labels import (
    LABEL_DISTRIBUTION_SOURCE,
    MAX_LABEL_SIZE,
    index_child_labels,
    manifest_child_labels,
)
from imgpipe.store import Store
from imgpipe.transports import (
    ConcurrentSink,
    ImageSink,
    ImageSource,
    TransportOptions,
    open_sink,
    open_source,
)

__all__ = [
    "BlobFetch",
    "Context",
    "Event",
    "EventKind",
    "Export",
    "FetchBlobs",
    "FetchDocuments",
    "ImagePlan",
    "LoadImage",
    "Observer",
    "Pipeline",
    "Record",
    "Resolve",
    "Resolved",
    "Stage",
    "normalize_name",
    "suggested_name",
    "walk_image",
]


# Event, EventKind and Observer live in imgpipe.events (light to import, for the CLI).


def _ignore(_event: Event) -> None:
    pass


class Context:
    """What one pipeline run shares between its stages.

    ``resources`` closes transports and other handles when the run ends, whatever
    happened. ``lease`` protects every blob the run writes from a concurrent ``gc``.
    ``created`` lists the blobs this run committed, so a failed run can take them back.
    """

    def __init__(self, store: Store, *, observer: Observer | None = None) -> None:
        self.store = store
        self.observer: Observer = observer or _ignore
        self.resources = contextlib.ExitStack()
        self.lease: Lease | None = None
        self.source: ImageSource | None = None
        self.source_name = ""  # the transport string of the source, for messages
        self.source_ref: TransportRef | None = None  # where the source is (labels)
        self.created: list[Digest] = []

    def emit(self, event: Event) -> None:
        self.observer(event)

    def protect(self, digest: Digest) -> None:
        """Lease ``digest`` before it is written or relied on (see imgpipe.metadata.gc)."""
        if self.lease is not None:
            self.lease.add_content(digest)


In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)


class Stage(Protocol[In_contra, Out_co]):
    """One step of a pipeline: a name and ``run(item, ctx) -> item``.

    ``run`` may raise any ImgpipeError; the pipeline stops there, and what the run
    committed is released (and removed by the pipeline unless something else holds it).
    """

    name: str

    def run(self, item: In_contra, ctx: Context) -> Out_co: ...


@dataclass(frozen=True, slots=True)
class Resolved:
    """A source, the root descriptor it names, and the local name to record it under."""

    ref: TransportRef
    root: Descriptor
    name: str = ""


#: A blob's BLOB_PROGRESS events are at least this many seconds apart (the last one,
#: all bytes in, is always sent): a display needs a few updates a second, not one per
#: 1 MiB read at 700 MB/s.
PROGRESS_INTERVAL: Final = 0.1


class _ProgressReader:
    """Pass-through reader that reports bytes read as BLOB_PROGRESS events.

    Seeking is passed on (the content store seeks past what a resumed ingest already has,
    and the registry stream turns that into a Range request); the offset reported is the
    stream position, so a resumed transfer's bar starts where it left off.
    """

    def __init__(
        self,
        raw: BinaryIO,
        ctx: Context,
        desc: Descriptor,
        verb: str,
        cancel: threading.Event | None = None,
    ) -> None:
        self._raw = raw
        self._ctx = ctx
        self._desc = desc
        self._verb = verb
        self._cancel = cancel
        self._offset = 0
        self._last = 0.0

    def _report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        d = self._desc
        state = "verifying" if final else self._verb
        self._ctx.emit(
            Event(EventKind.BLOB_PROGRESS, d.digest, d.media_type, d.size, state, self._offset)
        )

    def read(self, n: int = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            # a background fetch that was called off: stop at the next read, not at the end
            raise _Cancelled(f"transfer of {self._desc.digest} cancelled")
        data = self._raw.read(n)
        if data:
            self._offset += len(data)
            self._report(final=self._offset >= self._desc.size)
        return data

    def readable(self) -> bool:
        return True

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

    def close(self) -> None:
        self._raw.close()


def _with_progress(
    raw: BinaryIO, ctx: Context, desc: Descriptor, verb: str, cancel: threading.Event | None = None
) -> BinaryIO:
    return cast(BinaryIO, _ProgressReader(raw, ctx, desc, verb, cancel))


class _Cancelled(Exception):
    """A background transfer stopped because its :class:`BlobFetch` was cancelled.

    Never reaches the caller: the error that caused the cancellation (or Ctrl-C) does.
    """


def _store_blob(
    ctx: Context,
    source: ImageSource,
    desc: Descriptor,
    *,
    protect: bool = True,
    cancel: threading.Event | None = None,
) -> bool:
    """Copy one blob from ``source`` into the store, verified. True if it was written.

    ``protect=False`` when the caller has already leased ``desc`` (worker threads do not
    touch the database). ``cancel``: once set, the transfer stops at its next read.
    """
    content = ctx.store.content
    if cancel is not None and cancel.is_set():
        raise _Cancelled(f"transfer of {desc.digest} cancelled")
    if protect:
        ctx.protect(desc.digest)
    if content.exists(desc.digest):
        ctx.emit(
            Event(EventKind.BLOB_EXISTS, desc.digest, desc.media_type, desc.size, "already exists")
        )
        return False
    ctx.emit(Event(EventKind.BLOB_START, desc.digest, desc.media_type, desc.size, "downloading"))
    # The ingest is the verifying reader here: the writer refuses bytes past ``size`` and
    # commit checks size and digest before the rename, so the bytes are hashed once.
    # The ref is the digest, so two processes importing one blob share one ingest.
    try:
        with source.open_blob(desc) as raw:
            written = content.ingest(
                f"import-{desc.digest}",
                _with_progress(raw, ctx, desc, "downloading", cancel),
                digest=desc.digest,
                size=desc.size,
            )
    except DigestMismatch as e:
        raise DigestMismatch(
            f"blob {desc.digest} from {ctx.source_name}: content hashes to {e.actual}",
            expected=e.expected,
            actual=e.actual,
        ) from None
    except SizeMismatch as e:
        raise SizeMismatch(
            f"blob {desc.digest} from {ctx.source_name}: expected {desc.size} bytes, "
            + (f"got {e.actual}" if e.actual >= 0 else "got another size"),
            expected=e.expected,
            actual=e.actual,
        ) from None
    if written:
        ctx.created.append(desc.digest)
    ctx.emit(Event(EventKind.BLOB_DONE, desc.digest, desc.media_type, desc.size, "done"))
    return written


def _source_labels(ctx: Context, digest: Digest) -> dict[str, str]:
    """containerd's distribution-source label for a blob pulled from a registry.

    ``containerd.io/distribution.source.<host>`` = the repositories on that registry the
    blob is known to be in, comma-separated; the push side reads it to mount the blob
    instead of uploading it. Empty when the source is not a registry, or when adding the
    repository would pass the 4 KiB label limit (as containerd skips it).
    """
    ref = ctx.source_ref
    if ref is None or ref.transport != "docker" or ref.reference is None:
        return {}
    key = f"{LABEL_DISTRIBUTION_SOURCE}.{ref.reference.domain}"
    repo = ref.reference.path
    have = ctx.store.db.content_labels(digest).get(key, "")
    repos = [r for r in have.split(",") if r]
    if repo in repos:
        return {}
    value = ",".join([*repos, repo])
    if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
        return {}
    return {key: value}


def _read_stored_document(ctx: Context, desc: Descriptor) -> Manifest | Index:
    if desc.size > MAX_DOCUMENT_SIZE:
        raise ResourceLimit(
            f"{desc.media_type} {desc.digest} is {desc.size} bytes; "
            f"documents over {MAX_DOCUMENT_SIZE} bytes are refused"
        )
    raw = ctx.store.content.read_bytes(desc.digest, limit=MAX_DOCUMENT_SIZE)
    return parse_document(raw, desc.media_type)


def normalize_name(name: str) -> str:
    """The stored form of an image name: ``alpine`` -> ``docker.io/library/alpine:latest``."""
    return str(parse_reference(name))


def suggested_name(ref: TransportRef, root: Descriptor) -> str:
    """The local name for an image from ``ref`` when the caller gave none, or "".

    As containerd's importer does: the registry reference; else the full name the layout
    or archive recorded (``io.containerd.image.name``); else the tag asked for; else the
    entry's ``org.opencontainers.image.ref.name``.
    """
    if ref.reference is not None:
        return str(ref.reference)
    # The full name a layout or archive recorded wins over the tag, so an image that
    # went out with `push NAME oci:DIR:latest` comes back as NAME, not as "latest".
    for c in (
        root.annotations.get(ANNOTATION_IMAGE_NAME, ""),
        ref.tag,
        root.annotations.get(ANNOTATION_REF_NAME, ""),
    ):
        if c:
            try:
                return normalize_name(c)
            except InvalidReference:
                continue
    return ""


class Resolve:
    """Open the source a TransportRef names and find its root descriptor.

    ``name`` (normalised) is what Record will call the image; without it the name comes
    from the source (see :func:`suggested_name`).
    """

    name = "resolve"

    def __init__(
        self,
        *,
        name: str | None = None,
        require_name: bool = False,
        options: TransportOptions | None = None,
    ) -> None:
        self.image_name = normalize_name(name) if name else ""
        self.require_name = require_name
        self.options = options

    def run(self, item: TransportRef, ctx: Context) -> Resolved:
        source = ctx.resources.enter_context(open_source(item, options=self.options))
        ctx.source = source
        ctx.source_name = str(item)
        ctx.source_ref = item
        root = source.resolve()
        ctx.emit(Event(EventKind.RESOLVED, root.digest, root.media_type, root.size, str(item)))
        name = self.image_name or suggested_name(item, root)
        if self.require_name and not name:
            # before any blob moves, rather than after the whole image has
            raise InvalidArgument(f"{item} names no image: give a name (--name)")
        return Resolved(item, root, name)


class FetchDocuments:
    """Fetch, verify and store the index and manifests; choose the platforms to follow.

    Each document is stored (and labelled with its children, as containerd does) before
    it is parsed, and parsed from the verified stored bytes.
    """

    name = "fetch-documents"

    def __init__(self, *, platform: Platform | None = None, all_platforms: bool = False) -> None:
        self.platform = platform
        self.all_platforms = all_platforms

    def run(self, item: Resolved, ctx: Context) -> ImagePlan:
        source = ctx.source
        if source is None:
            raise InvalidArgument("fetch-documents needs a source: run resolve first")

        def read(desc: Descriptor) -> Manifest | Index:
            if desc.size > MAX_DOCUMENT_SIZE:
                raise ResourceLimit(
                    f"{desc.media_type} {desc.digest} is {desc.size} bytes; "
                    f"documents over {MAX_DOCUMENT_SIZE} bytes are refused"
                )
            _store_blob(ctx, source, desc)
            doc = _read_stored_document(ctx, desc)
            if isinstance(doc, Index):
                labels = index_child_labels(doc.manifests)
            else:
                labels = manifest_child_labels(doc.config, doc.layers)
            ctx.store.db.set_content_labels(
                desc.digest, {**labels, **_source_labels(ctx, desc.digest)}
            )
            return doc

        plan = walk_image(item.root, read, platform=self.platform, all_platforms=self.all_platforms)
        return replace(plan, name=item.name)


#: Blobs transferred at once, as ``docker pull`` and containerd default to. Hashing,
#: file I/O and (later) sockets release the GIL, so threads use both cores.
DEFAULT_MAX_CONCURRENT: Final = 3


class FetchBlobs:
    """Fetch, verify and store every config and layer of the plan not yet stored.

    Up to ``max_concurrent`` blobs move at once, each on a worker thread; the observer is
    called from those threads. The first failure stops the rest (running transfers
    finish or fail on their own; queued ones never start) and is raised.
    """

    name = "fetch-blobs"

    def __init__(self, *, max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> None:
        if max_concurrent < 1:
            raise InvalidArgument(f"max_concurrent must be at least 1, not {max_concurrent}")
        self.max_concurrent = max_concurrent

    def run(self, item: ImagePlan, ctx: Context) -> ImagePlan:
        source = ctx.source
        if source is None:
            raise InvalidArgument("fetch-blobs needs a source: run resolve first")
        if self.max_concurrent == 1 or len(item.blobs) < 2:
            for desc in item.blobs:
                _store_blob(ctx, source, desc)
        else:
            # Lease every blob here, on the calling thread: the workers never open
            # database connections of their own.
            for desc in item.blobs:
                ctx.protect(desc.digest)
            _run_concurrently(
                ctx,
                item.blobs,
                self.max_concurrent,
                "fetch",
                lambda d: _store_blob(ctx, source, d, protect=False),
            )
        _label_sources(ctx, item.blobs)
        return item

    def start(self, item: ImagePlan, ctx: Context, *, first: Iterable[Digest] = ()) -> BlobFetch:
        """Start fetching the plan's blobs in the background and return at once.

        What :meth:`run` does, but the caller keeps its thread: ``pull --unpack`` applies
        layer *k* as soon as :meth:`BlobFetch.wait` says blob *k* is stored, while later
        blobs still download. Blobs in ``first`` are queued before the others (the
        configs, which say what to unpack); the rest keep plan order. Every blob is
        leased here, on the calling thread. Use the result as a context manager: leaving
        it cancels what is still queued or running (on an error) and joins the workers.
        """
        source = ctx.source
        if source is None:
            raise InvalidArgument("fetch-blobs needs a source: run resolve first")
        front = set(first)
        order = [d for d in item.blobs if d.digest in front]
        order += [d for d in item.blobs if d.digest not in front]
        for desc in order:
            ctx.protect(desc.digest)
        return BlobFetch(ctx, source, order, self.max_concurrent)


def _label_sources(ctx: Context, blobs: Iterable[Descriptor]) -> None:
    # Where the blobs came from, for cross-repository mounts on a later push; on the
    # calling thread, after every blob is in (a failed pull labels nothing).
    for desc in blobs:
        if labels := _source_labels(ctx, desc.digest):
            ctx.store.db.set_content_labels(desc.digest, labels)


#: How long one wait of :class:`BlobFetch` blocks before it looks again at the other
#: transfers (a failure anywhere is seen within this) and lets signals in.
WAIT_SLICE: Final = 0.05


class BlobFetch:
    """Blobs of a plan moving into the store on worker threads (:meth:`FetchBlobs.start`).

    Per-blob completion: :meth:`wait` returns once that blob is stored. The first
    failure of any transfer cancels the rest (queued ones never start, running ones stop
    at their next read) and is raised by every later :meth:`wait`, :meth:`check` and
    :meth:`finish`. A transfer stalled inside a read stops when the transport's read
    timeout ends it. Workers touch no database; :meth:`finish` labels on the caller's
    thread.
    """

    def __init__(
        self, ctx: Context, source: ImageSource, descs: Sequence[Descriptor], workers: int
    ) -> None:
        self._ctx = ctx
        self._descs = tuple(descs)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._futures: dict[Digest, Future[bool]] = {}
        for d in self._descs[workers:]:
            ctx.emit(Event(EventKind.BLOB_WAITING, d.digest, d.media_type, d.size, "waiting"))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        try:
            for d in self._descs:
                with self._lock:
                    if self._cancel.is_set():
                        break
                    f = self._pool.submit(
                        _store_blob, ctx, source, d, protect=False, cancel=self._cancel
                    )
                    self._futures[d.digest] = f
                # outside the lock: a future already done runs the callback right here
                f.add_done_callback(self._on_done)
        except BaseException:
            self.close()
            raise

    def _on_done(self, f: Future[bool]) -> None:
        if f.cancelled():
            return
        exc = f.exception()
        if exc is None or isinstance(exc, _Cancelled):
            return
        with self._lock:
            if self._error is None:
                self._error = exc
        self.cancel()

    @property
    def error(self) -> BaseException | None:
        """The first transfer's failure, or None."""
        return self._error

    def check(self) -> None:
        """Raise the first failure, if a transfer failed; FailedPrecondition if the
        fetch was cancelled without one."""
        if self._error is not None:
            raise self._error
        if self._cancel.is_set():
            raise FailedPrecondition("the blob fetch was cancelled")

    def done(self, digest: Digest) -> bool:
        """True once ``digest`` is stored (fetched now or already there)."""
        f = self._futures.get(digest)
        return f is not None and f.done() and not f.cancelled() and f.exception() is None

    def wait(self, digest: Digest) -> None:
        """Block until ``digest`` is stored; raise as :meth:`check` does if any
        transfer fails first. NotFound if the plan has no such blob."""
        if digest not in (d.digest for d in self._descs):
            raise NotFound(f"blob {digest} is not part of this fetch")
        while True:
            self.check()
            f = self._futures.get(digest)
            if f is None:  # never submitted: cancelled meanwhile
                continue
            # in slices: a failure of another transfer is seen promptly, Ctrl-C gets in
            finished, _ = wait([f], timeout=WAIT_SLICE)
            if finished and self.done(digest):
                return

    def finish(self) -> None:
        """Wait for every blob, raise the first failure, then label the blobs with
        where they came from (on this thread)."""
        for d in self._descs:
            self.wait(d.digest)
        self.close()
        _label_sources(self._ctx, self._descs)

    def cancel(self) -> None:
        """Stop: queued transfers never start, running ones stop at their next read."""
        self._cancel.set()
        with self._lock:
            futures = list(self._futures.values())
        for f in futures:
            f.cancel()

    def close(self) -> None:
        """Join the workers (after :meth:`cancel`, they stop early)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BlobFetch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.cancel()
        self.close()


def _run_concurrently(
    ctx: Context,
    descs: Sequence[Descriptor],
    workers: int,
    name: str,
    job: Callable[[Descriptor], object],
) -> None:
    """Run ``job`` on each descriptor, ``workers`` at a time; raise the first failure.

    Queued descriptors are announced as BLOB_WAITING. On a failure or Ctrl-C, queued
    jobs never start; running ones finish or fail on their own.
    """
    for d in descs[workers:]:
        ctx.emit(Event(EventKind.BLOB_WAITING, d.digest, d.media_type, d.size, "waiting"))
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    try:
        futures = [pool.submit(job, d) for d in descs]
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for f in futures:
        if not f.cancelled() and (exc := f.exception()) is not None:
            raise exc


class Record:
    """Name the image: write ``name -> root descriptor`` to the metadata database.

    The name is ``image_name`` if given, else the plan's (from Resolve).
    """

    name = "record"

    def __init__(self, image_name: str = "") -> None:
        self.image_name = normalize_name(image_name) if image_name else ""

    def run(self, item: ImagePlan, ctx: Context) -> ImageRecord:
        name = self.image_name or item.name
        if not name:
            raise InvalidArgument("the source names no image: give a name (--name)")
        rec = ctx.store.db.put_image(name, item.root)
        ctx.emit(
            Event(
                EventKind.IMAGE_RECORDED,
                item.root.digest,
                item.root.media_type,
                item.root.size,
                name,
            )
        )
        return rec


class LoadImage:
    """An image already in the store, by its (normalised) name.

    Index entries whose manifests are not in the store (platforms never pulled) are
    left out of the plan; the index itself is kept byte for byte.
    """

    name = "load-image"

    def run(self, item: str, ctx: Context) -> ImagePlan:
        rec = ctx.store.db.get_image(item)

        def read(desc: Descriptor) -> Manifest | Index | None:
            if desc is not rec.target and not ctx.store.content.exists(desc.digest):
                return None
            ctx.protect(desc.digest)
            return _read_stored_document(ctx, desc)

        return replace(walk_image(rec.target, read, all_platforms=True), name=rec.name)


class Export:
    """Write every blob of the plan, children first, and then its root, to a sink.

    Configs and layers go first; with a :class:`~imgpipe.transports.ConcurrentSink` (a
    registry) up to its ``max_concurrent`` at once, each offered to ``mount_blob`` with
    its content labels before it is uploaded. Then the manifests and indexes, one by
    one, children before parents, as registries require; then the root.
    """

    name = "export"

    def __init__(
        self, ref: TransportRef, *, image_name: str = "", options: TransportOptions | None = None
    ) -> None:
        self.ref = ref
        self.image_name = image_name
        self.options = options

    def run(self, item: ImagePlan, ctx: Context) -> Descriptor:
        sink: ImageSink = ctx.resources.enter_context(
            open_sink(self.ref, image_name=self.image_name, options=self.options)
        )
        if isinstance(sink, ConcurrentSink):
            # Labels are read here, on the calling thread: workers touch no database.
            labels = {d.digest: ctx.store.db.content_labels(d.digest) for d in item.blobs}
            workers = min(sink.max_concurrent, len(item.blobs))
            if workers > 1:
                _run_concurrently(
                    ctx,
                    item.blobs,
                    workers,
                    "push",
                    lambda d: _export_blob(ctx, sink, d, labels[d.digest]),
                )
            else:
                for desc in item.blobs:
                    _export_blob(ctx, sink, desc, labels[desc.digest])
        else:
            for desc in item.blobs:
                _export_blob(ctx, sink, desc, None)
        for desc in reversed(item.document_descriptors):
            _export_blob(ctx, sink, desc, None)
        sink.write_root(item.root)
        ctx.emit(
            Event(
                EventKind.EXPORTED,
                item.root.digest,
                item.root.media_type,
                item.root.size,
                str(self.ref),
            )
        )
        return item.root


def _export_blob(
    ctx: Context, sink: ImageSink, desc: Descriptor, labels: Mapping[str, str] | None
) -> None:
    """Write one blob to ``sink`` unless it has it (or mounts it), with events."""
    if sink.has_blob(desc):
        ctx.emit(
            Event(EventKind.BLOB_EXISTS, desc.digest, desc.media_type, desc.size, "already exists")
        )
        return
    if labels is not None and isinstance(sink, ConcurrentSink):
        origin = sink.mount_blob(desc, labels)
        if origin:
            detail = f"mounted from {origin}"
            ctx.emit(Event(EventKind.BLOB_EXISTS, desc.digest, desc.media_type, desc.size, detail))
            return
    ctx.emit(Event(EventKind.BLOB_START, desc.digest, desc.media_type, desc.size, "uploading"))
    with ctx.store.content.open(desc.digest) as f:
        sink.write_blob(desc, _with_progress(f, ctx, desc, "uploading"))
    ctx.emit(Event(EventKind.BLOB_DONE, desc.digest, desc.media_type, desc.size, "done"))


class Pipeline:
    """Stages run in order in one Context, under one lease.

    ``run`` returns the last stage's output. If a stage raises, the lease is released and
    the blobs this run committed are removed again unless something else (an image,
    another lease) holds them, so a failed pull leaves the store as it was.
    """

    def __init__(self, stages: Sequence[Stage[Any, Any]]) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"stage names must be unique: {names}")
        self.stages: tuple[Stage[Any, Any], ...] = tuple(stages)

    @classmethod
    def pull(
        cls,
        *,
        name: str | None = None,
        platform: Platform | None = None,
        all_platforms: bool = False,
        options: TransportOptions | None = None,
    ) -> Pipeline:
        """The import/pull pipeline: resolve, fetch documents, fetch blobs, record.

        ``options`` says how to reach registries and how many blobs move at once.
        """
        concurrent = options.max_concurrent if options is not None else DEFAULT_MAX_CONCURRENT
        return cls(
            [
                Resolve(name=name, require_name=True, options=options),
                FetchDocuments(platform=platform, all_platforms=all_platforms),
                FetchBlobs(max_concurrent=concurrent),
                Record(),
            ]
        )

    @classmethod
    def export(
        cls, ref: TransportRef, *, image_name: str = "", options: TransportOptions | None = None
    ) -> Pipeline:
        """The export/push pipeline: load an image by name, write it to ``ref``."""
        return cls([LoadImage(), Export(ref, image_name=image_name, options=options)])

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def _index(self, name: str) -> int:
        try:
            return self.names().index(name)
        except ValueError:
            raise NotFound(f"no stage named {name!r} (have: {', '.join(self.names())})") from None

    def insert_after(self, name: str, stage: Stage[Any, Any]) -> Pipeline:
        """A new pipeline with ``stage`` right after the stage called ``name``."""
        i = self._index(name) + 1
        return Pipeline([*self.stages[:i], stage, *self.stages[i:]])

    def replace(self, name: str, stage: Stage[Any, Any]) -> Pipeline:
        """A new pipeline with ``stage`` in place of the stage called ``name``."""
        i = self._index(name)
        return Pipeline([*self.stages[:i], stage, *self.stages[i + 1 :]])

    def insert_before(self, name: str, stage: Stage[Any, Any]) -> Pipeline:
        """A new pipeline with ``stage`` right before the stage called ``name``."""
        i = self._index(name)
        return Pipeline([*self.stages[:i], stage, *self.stages[i:]])

    def run(self, item: Any, *, store: Store, observer: Observer | None = None) -> Any:
        ctx = Context(store, observer=observer)
        try:
            with ctx.resources, store.db.lease() as lease:
                ctx.lease = lease
                for stage in self.stages:
                    item = stage.run(item, ctx)
                return item
        except BaseException:
            # The lease is gone by now; what this run committed and nothing else holds
            # is removed, so a failed pull leaves the store as it was.
            if ctx.created:
                _rollback(store, ctx.created)
            raise


def _rollback(store: Store, created: Sequence[Digest]) -> None:
    """Remove blobs a failed run committed, unless something else holds them now."""
    collect(store.db, store.content, only=set(created))
