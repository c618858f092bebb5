"""Fetching into the store: documents, then blobs (all at once, or in the background).

Every blob goes in through the store's verified ingest
(:meth:`~imgpipe.content.ContentStore.ingest_blob`: size and digest checked while
read, one hash pass, rename on success); the stages here add progress, leases,
cancellation and the labels containerd keeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO, cast

from imgpipe.content.feed import IngestFeed, IngestFollower
from imgpipe.content.verify import BlobReader
from imgpipe.events import Event, EventKind
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    DigestMismatch,
    InvalidArgument,
    MalformedDocument,
    ResourceLimit,
    SizeMismatch,
    Unsupported,
)
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index, Manifest
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef
from imgpipe.image import ImagePlan, check_plan_configs, read_document, walk_image
from imgpipe.metadata.labels import (
    LABEL_DISTRIBUTION_SOURCE,
    MAX_LABEL_SIZE,
    index_child_labels,
    manifest_child_labels,
)

from .context import Context, Stage
from .resolve import Resolved
from .scheduler import (
    DEFAULT_MAX_CONCURRENT,
    Background,
    Cancelled,
    ProgressReader,
    announce_waiting,
    run_concurrently,
)

__all__ = ["BlobFetch", "FetchBlobs", "FetchDocuments", "store_blob"]

_Job = Callable[[threading.Event], object]


class _Progress:
    """``source`` as a BlobReader whose streams report progress (and stop on cancel)."""

    def __init__(self, source: BlobReader, ctx: Context, cancel: threading.Event | None) -> None:
        self._source = source
        self._ctx = ctx
        self._cancel = cancel

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        raw = self._source.open_blob(desc)
        return ProgressReader(raw, self._ctx.emit, desc, "downloading", cancel=self._cancel)


def store_blob(
    ctx: Context,
    source: BlobReader,
    desc: Descriptor,
    *,
    origin: TransportRef | None = None,
    protect: bool = True,
    cancel: threading.Event | None = None,
    feed: IngestFeed | None = None,
) -> bool:
    """Copy one blob from ``source`` into the store, verified. True if it was written.

    ``origin`` names the source in messages. ``protect=False`` when the caller has
    already leased ``desc`` (worker threads do not touch the database). ``cancel``
    (default: the run's, ``ctx.cancel``): once set, the transfer stops at its next read,
    and what it wrote stays in its ingest for a resume. ``feed``: the ingest's
    writer publishes its progress there (``pull --unpack`` follows the download).
    """
    content = ctx.store.content
    if cancel is None:
        cancel = ctx.cancel
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"transfer of {desc.digest} cancelled")
    if protect:
        ctx.protect(desc.digest)
    if content.exists(desc.digest):
        ctx.emit(
            Event(EventKind.BLOB_EXISTS, desc.digest, desc.media_type, desc.size, "already exists")
        )
        return False
    ctx.emit(Event(EventKind.BLOB_START, desc.digest, desc.media_type, desc.size, "downloading"))
    # The ingest is the verifying reader: bytes past ``size`` are refused and size and
    # digest are checked before the rename, hashed once. The ref is the digest, so two
    # processes importing one blob share one ingest.
    what = f"{_kind(desc)} {desc.digest}" + (f" from {origin}" if origin else "")
    try:
        written = content.ingest_blob(_Progress(source, ctx, cancel), desc, feed=feed)
    except DigestMismatch as e:
        raise DigestMismatch(
            f"{what}: content hashes to {e.actual}", expected=e.expected, actual=e.actual
        ) from None
    except SizeMismatch as e:
        raise SizeMismatch(
            f"{what}: expected {desc.size} bytes, "
            + (f"got {e.actual}" if e.actual >= 0 else "got another size"),
            expected=e.expected,
            actual=e.actual,
        ) from None
    if written:
        ctx.created.append(desc.digest)
    ctx.emit(Event(EventKind.BLOB_DONE, desc.digest, desc.media_type, desc.size, "done"))
    return written


def _kind(desc: Descriptor) -> str:
    """What a descriptor names, for messages: a manifest's mismatch is not a "blob"'s."""
    mt = desc.media_type
    if mt.is_index():
        return "index"
    return "manifest" if mt.is_manifest() else "blob"


def _source_labels(ctx: Context, origin: TransportRef | None, digest: Digest) -> dict[str, str]:
    """containerd's distribution-source label for a blob pulled from a registry.

    ``containerd.io/distribution.source.<host>`` = the repositories on that registry the
    blob is known to be in, comma-separated; the push side reads it to mount the blob
    instead of uploading it. Empty when the source is not a registry, or when adding the
    repository would pass the 4 KiB label limit (as containerd skips it).
    """
    if origin is None or origin.transport != "docker" or origin.reference is None:
        return {}
    key = f"{LABEL_DISTRIBUTION_SOURCE}.{origin.reference.domain}"
    repo = origin.reference.path
    have = ctx.store.db.content_labels(digest).get(key, "")
    repos = [r for r in have.split(",") if r]
    if repo in repos:
        return {}
    value = ",".join([*repos, repo])
    if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
        return {}
    return {key: value}


def _label_sources(ctx: Context, origin: TransportRef | None, blobs: Iterable[Descriptor]) -> None:
    # Where the blobs came from, for cross-repository mounts on a later push; on the
    # calling thread, after every blob is in (a failed pull labels nothing); all of
    # them in one transaction.
    if origin is None or origin.transport != "docker":
        return
    with ctx.store.db.transaction():
        for desc in blobs:
            if labels := _source_labels(ctx, origin, desc.digest):
                ctx.store.db.set_content_labels(desc.digest, labels)


def _protect_all(ctx: Context, blobs: Iterable[Descriptor]) -> None:
    """Lease every blob (one transaction), on the calling thread: the workers never
    open database connections of their own."""
    if ctx.lease is None:
        return
    with ctx.store.db.transaction():
        for desc in blobs:
            ctx.protect(desc.digest)


class FetchDocuments(Stage[Resolved, ImagePlan]):
    """Fetch, verify and store the index and manifests; choose the platforms to follow.

    Each document is stored (and labelled with its children, as containerd does) before
    it is parsed, and parsed from the verified stored bytes. The plan carries the open
    source on to FetchBlobs.
    """

    name = "fetch-documents"

    def __init__(self, *, platform: Platform | None = None, all_platforms: bool = False) -> None:
        self.platform = platform
        self.all_platforms = all_platforms

    def run(self, item: Resolved, ctx: Context) -> ImagePlan:
        source = item.source
        if source is None:
            raise InvalidArgument("fetch-documents needs a source: run resolve first")
        content = ctx.store.content

        def read(desc: Descriptor) -> Manifest | Index:
            if desc.size <= MAX_DOCUMENT_SIZE:  # read_document refuses the others
                store_blob(ctx, source, desc, origin=item.ref)
            try:
                doc = read_document(content, desc)
            except (MalformedDocument, ResourceLimit, Unsupported) as e:
                # the document's own message says what is wrong; say whose it is
                raise type(e)(f"{item.ref}: {_kind(desc)} {desc.digest}: {e}") from None
            if isinstance(doc, Index):
                labels = index_child_labels(doc.manifests)
            else:
                labels = manifest_child_labels(doc.config, doc.layers)
            ctx.store.db.set_content_labels(
                desc.digest, {**labels, **_source_labels(ctx, item.ref, desc.digest)}
            )
            return doc

        # The documents' names are made durable once, when the walk ends.
        with content.deferred_dir_sync():
            plan = walk_image(
                item.root, read, platform=self.platform, all_platforms=self.all_platforms
            )
        return plan.replace(name=item.name, source=source, origin=item.ref)


class FetchBlobs(Stage[ImagePlan, ImagePlan]):
    """Fetch, verify and store every config and layer of the plan not yet stored.

    Up to ``max_concurrent`` blobs move at once, each on a worker thread; the observer is
    called from those threads. The first failure stops the rest (running transfers
    finish or fail on their own; queued ones never start) and is raised.

    Refused at once (NoSpace) when the blobs not yet stored cannot fit on the disk. The
    image configs come first and are checked (``check_plan_configs``: JSON, one
    DiffID per layer, the index entry's platform) before a layer moves: a bad config is
    MalformedDocument, and no layer of that image is downloaded.
    """

    name = "fetch-blobs"

    def __init__(self, *, max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> None:
        if max_concurrent < 1:
            raise InvalidArgument(f"max_concurrent must be at least 1, not {max_concurrent}")
        self.max_concurrent = max_concurrent

    def run(self, item: ImagePlan, ctx: Context) -> ImagePlan:
        source = _source_of(item, "fetch-blobs")
        content = ctx.store.content
        content.check_space(item.blobs, str(item.origin or item.name or "the image"))
        configs = _config_digests(item)
        # Each blob's data is fsynced before its rename; the directory that holds the
        # names once, when every blob is in (before anything records the image).
        with content.deferred_dir_sync():
            self._fetch(ctx, source, [d for d in item.blobs if d.digest in configs], item.origin)
            check_plan_configs(item, content)
            self._fetch(
                ctx, source, [d for d in item.blobs if d.digest not in configs], item.origin
            )
        _label_sources(ctx, item.origin, item.blobs)
        return item

    def _fetch(
        self,
        ctx: Context,
        source: BlobReader,
        blobs: Sequence[Descriptor],
        origin: TransportRef | None,
    ) -> None:
        if self.max_concurrent == 1 or len(blobs) < 2:
            for desc in blobs:
                store_blob(ctx, source, desc, origin=origin)
            return
        _protect_all(ctx, blobs)
        run_concurrently(
            ctx.emit,
            blobs,
            self.max_concurrent,
            "fetch",
            lambda d: store_blob(ctx, source, d, origin=origin, protect=False),
            cancel=ctx.cancel,
        )

    def start(self, item: ImagePlan, ctx: Context, *, first: Iterable[Digest] = ()) -> BlobFetch:
        """Start fetching the plan's blobs in the background and return at once.

        What :meth:`run` does, but the caller keeps its thread: ``pull --unpack`` applies
        layer *k* as soon as :meth:`BlobFetch.wait` says blob *k* is stored, while later
        blobs still download. Blobs in ``first`` are queued before the others (the
        configs, which say what to unpack); the rest keep plan order. Every blob is
        leased here, on the calling thread. Use the result as a context manager: leaving
        it cancels what is still queued or running (on an error) and joins the workers.
        """
        source = _source_of(item, "fetch-blobs")
        ctx.store.content.check_space(item.blobs, str(item.origin or item.name or "the image"))
        front = set(first)
        order = [d for d in item.blobs if d.digest in front]
        order += [d for d in item.blobs if d.digest not in front]
        _protect_all(ctx, order)
        return BlobFetch(ctx, source, order, self.max_concurrent, origin=item.origin, plan=item)


def _config_digests(plan: ImagePlan) -> set[Digest]:
    """The digests of the image configs of the plan's manifests."""
    out = set()
    for desc in plan.manifests:
        doc = plan.documents[desc.digest]
        if isinstance(doc, Manifest) and doc.config.media_type.is_config():
            out.add(doc.config.digest)
    return out


def _source_of(plan: ImagePlan, stage: str) -> BlobReader:
    if plan.source is None:
        raise InvalidArgument(f"{stage} needs a source: run resolve first")
    return plan.source


class BlobFetch(Background[Digest]):
    """Blobs of a plan moving into the store on worker threads (:meth:`FetchBlobs.start`).

    Per-blob completion: :meth:`wait` returns once that blob is stored. The first
    failure of any transfer cancels the rest (queued ones never start, running ones stop
    at their next read) and is raised by every later :meth:`wait`, :meth:`check` and
    :meth:`finish`. A transfer stalled inside a read stops when the transport's read
    timeout ends it. Workers touch no database; :meth:`finish` labels on the caller's
    thread. Waiting for an image config checks it (``check_plan_configs``), so
    ``pull --unpack``, which waits for the configs first, refuses a bad one before a
    layer is applied.

    It is also a BlobReader (:meth:`open_blob`): a blob still downloading is read from
    its ingest as it arrives (an :class:`~imgpipe.content.feed.IngestFeed` per blob,
    which the transfer's writer publishes into), EOF only once its commit verified it; a
    transfer's failure is raised by the reads of its blob, and any failure, or
    :meth:`stop_following`, stops every read waiting for bytes.
    """

    def __init__(
        self,
        ctx: Context,
        source: BlobReader,
        descs: Sequence[Descriptor],
        workers: int,
        *,
        origin: TransportRef | None = None,
        plan: ImagePlan | None = None,
    ) -> None:
        self._ctx = ctx
        self._descs = tuple(descs)
        self._origin = origin
        self._plan = plan
        self._unchecked = _config_digests(plan) if plan is not None else set()
        self._feeds = {d.digest: IngestFeed() for d in self._descs}
        self._following: set[Digest] = set()
        self._feeds_lock = threading.Lock()
        self._failing = False
        announce_waiting(ctx.emit, self._descs[workers:])

        def job(d: Descriptor) -> tuple[Digest, _Job]:
            return d.digest, lambda cancel: self._transfer(source, d, cancel)

        super().__init__([job(d) for d in self._descs], workers, "fetch", cancel=ctx.cancel)
        for d in self._descs:  # never submitted (cancelled meanwhile): nothing will end them
            if d.digest not in self._futures:
                self._feeds[d.digest].end(Cancelled("the blob fetch was cancelled"))

    def _transfer(self, source: BlobReader, d: Descriptor, cancel: threading.Event) -> bool:
        """One job: :func:`store_blob`, its writer publishing into the blob's feed."""
        feed = self._feeds[d.digest]
        try:
            written = store_blob(
                self._ctx, source, d, origin=self._origin, protect=False, cancel=cancel, feed=feed
            )
        except BaseException as e:
            if not isinstance(e, Cancelled):
                self._failing = True  # before any reader wakes: they see why
                for other in self._feeds.values():
                    if other is not feed:
                        other.stop(Cancelled(f"the transfer of {d.digest} failed"))
            feed.end(e)
            raise
        feed.end(None)
        with self._feeds_lock:
            if d.digest not in self._following:
                feed.close()  # stored: a later open_blob reads the blob
        return written

    @property
    def failing(self) -> bool:
        """True once a transfer failed (set before its readers are woken, so a read that
        raised because of it can tell; :attr:`error` follows once the job is done)."""
        return self._failing or self.error is not None

    def fetches(self, digest: Digest) -> bool:
        """Whether ``digest`` is one of the blobs this fetch moves."""
        return digest in self._feeds

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The blob's bytes, unverified (a BlobReader: read it through ``open_verified``):
        from its ingest while this fetch still moves it, else the stored blob."""
        content = self._ctx.store.content
        feed = self._feeds.get(desc.digest)
        with self._feeds_lock:
            if feed is None or feed.closed:
                return content.open_blob(desc)
            self._following.add(desc.digest)
        return cast(BinaryIO, IngestFollower(feed, lambda: content.open_blob(desc)))

    def followed(self, digest: Digest) -> int:
        """How many bytes of the blob :meth:`open_blob` handed out before its commit
        verified them (0 if it was not followed)."""
        feed = self._feeds.get(digest)
        return feed.early if feed is not None else 0

    def stop_following(self) -> None:
        """Every read of :meth:`open_blob` waiting for bytes, and every later one,
        raises Cancelled (the reader is being closed: it must not wait for a download)."""
        for feed in self._feeds.values():
            feed.stop(Cancelled("the blob fetch's readers were stopped"))

    def cancel(self) -> None:
        super().cancel()
        self.stop_following()  # jobs that never start would never end their feeds

    def close(self, *, interrupted: bool = False) -> None:
        try:
            super().close(interrupted=interrupted)
        finally:
            for feed in self._feeds.values():
                feed.close()

    def wait(self, key: Digest) -> None:
        """Block until the blob ``key`` is stored (see :class:`Background`); an image
        config is then checked, once (MalformedDocument)."""
        super().wait(key)
        if key in self._unchecked and self._plan is not None:
            check_plan_configs(self._plan, self._ctx.store.content, config=key)
            self._unchecked.discard(key)

    def finish(self) -> None:
        """Wait for every blob (checking the configs), raise the first failure, then
        label the blobs with where they came from (on this thread)."""
        self.wait_all()
        _label_sources(self._ctx, self._origin, self._descs)

    def __enter__(self) -> BlobFetch:
        return self
