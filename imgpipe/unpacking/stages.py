"""The unpack stages, each with one typed input and output.

* :class:`FindImage` ``str -> ImageRecord``: a stored image by name;
* :class:`Unpack` ``ImageRecord -> UnpackResult``: its layers into snapshots;
* :class:`FetchUnpack` ``ImagePlan -> Unpacked``: pull --unpack's fetch and apply at once;
* :class:`RecordUnpacked` ``Unpacked -> (ImageRecord, UnpackResult)``: then name it;
* :class:`PrepareRootfs` ``UnpackResult -> list[Mount]``: an active snapshot on top.

So ``Pipeline.pull().insert_after("record", Unpack())`` pulls then unpacks, and
``Pipeline([FindImage(), Unpack()])`` unpacks a stored image.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from imgpipe.decode import default_registry
from imgpipe.errors import InvalidArgument
from imgpipe.formats._record import FrozenValue, Value
from imgpipe.formats.platform import Platform
from imgpipe.image import ImagePlan
from imgpipe.metadata import ImageRecord
from imgpipe.metadata.labels import LABEL_GC_ROOT
from imgpipe.pipeline import (
    DEFAULT_MAX_CONCURRENT,
    Context,
    FetchBlobs,
    Record,
    Stage,
    normalize_name,
)
from imgpipe.processors import ProcessorRegistry
from imgpipe.snapshots import Mount, Snapshotter

from .apply import Aborted, unpack_target
from .result import DEFAULT_SNAPSHOTTER, UnpackResult
from .snapshotters import open_store_snapshotter
from .target import as_platform, choose, load_keys, stored_target

if TYPE_CHECKING:
    from imgpipe.processors.ocicrypt import DecryptKey


class FindImage:
    """A stored image by name (normalised as the CLI does): NotFound if there is none."""

    name = "find-image"

    def run(self, item: str, ctx: Context) -> ImageRecord:
        rec = ctx.store.db.get_image(normalize_name(item))
        if "org.imgpipe.lazy.source" in rec.labels:  # pulled lazily: fetch what it lacks
            from imgpipe.lazy.pulling import complete_lazy  # noqa: PLC0415

            rec = complete_lazy(rec, ctx)
        return rec


# Hand-written classes, not dataclasses: every pull --unpack defines them (~1.5 ms each).
class _Options(Value):
    """What both unpack stages take. ``snapshotter``: a name (None: the root's default)
    or one the caller opened and keeps using; ``decrypt_keys``: ``FILE[:PASSWORD]`` specs
    or loaded keys; ``registry``: the decoders (default: configured, entry points,
    built-ins)."""

    __slots__ = ("decrypt_keys", "platform", "registry", "snapshotter")
    snapshotter: str | Snapshotter | None
    platform: str | Platform | None
    decrypt_keys: Sequence[str | DecryptKey]
    registry: ProcessorRegistry | None

    def __init__(
        self,
        *,
        snapshotter: str | Snapshotter | None = DEFAULT_SNAPSHOTTER,
        platform: str | Platform | None = None,
        decrypt_keys: Sequence[str | DecryptKey] = (),
        registry: ProcessorRegistry | None = None,
    ) -> None:
        self.snapshotter, self.platform = snapshotter, platform
        self.decrypt_keys, self.registry = decrypt_keys, registry

    def _open(self, ctx: Context) -> tuple[Snapshotter, list[DecryptKey], ProcessorRegistry]:
        """What can fail without reading a layer, opened before any layer moves."""
        sn = self.snapshotter
        if sn is None or isinstance(sn, str):
            sn = open_store_snapshotter(ctx.store, sn)
        reg = self.registry if self.registry is not None else default_registry()
        return sn, load_keys(self.decrypt_keys), reg


class Unpack(_Options):
    """A stored image -> :class:`UnpackResult`: the manifest for ``platform`` (default:
    this host's) applied into snapshots, reusing those already committed.

    Runs under the pipeline's lease.
    """

    __slots__ = ()
    name = "unpack"

    def run(self, item: ImageRecord, ctx: Context) -> UnpackResult:
        sn, keys, reg = self._open(ctx)
        target = stored_target(ctx.store, item, as_platform(self.platform), reg, ctx.protect)
        return unpack_target(ctx.store, sn, ctx.lease, target, keys, emit=ctx.emit)


class Unpacked(NamedTuple):
    """What :class:`FetchUnpack` hands on: the plan it fetched (for the record) and the
    unpack of its manifest."""

    plan: ImagePlan
    result: UnpackResult


class FetchUnpack(_Options):
    """The stage of ``pull --unpack``, in place of ``fetch-blobs``: fetch the plan's
    blobs and unpack its layers at the same time -> :class:`Unpacked`.

    As containerd's unpacker would if it could: the blobs download on worker threads
    (``max_concurrent`` at once, configs first, then layers in order) while this thread
    applies the layers strictly in order (*k* is prepared on the committed *k-1*), each
    one *while its blob downloads*: the layer's stream reads the blob's ingest file as
    the download writes it (:meth:`~imgpipe.pipeline.BlobFetch.open_blob`, an
    :class:`~imgpipe.content.feed.IngestFeed`), blocking for bytes not yet written, and
    reads the stored blob once it is stored. So applying layer *k* costs no time after
    its last byte arrives but the tail of the decode.

    Why applying unverified bytes is safe: they only ever go into layer *k*'s *active*
    snapshot, which is nothing until committed, and the applier's rules (nothing written
    outside the snapshot, bounded decompression) hold for any input, verified or not (a
    verified blob can be just as hostile). Layer *k*'s snapshot is committed only once
    (1) the whole decoded stream hashed to its DiffID, (2) the compressed stream reached
    its verified end (the follower gives EOF only after the download's commit checked
    size and digest; the verified read over it checks the digest once more), and (3) the
    fetch says blob *k* is stored. Decryption and external processors follow too: they
    only read a stream, and the end of the stream is gated the same way.

    Failures: a failed download (dropped, truncated, corrupt: the writer lets go
    unverified) is raised by the reads of its blob at once, and any failure stops every
    read waiting for bytes; the apply stops, its active snapshot is removed, no layer
    whose blob failed is committed, and the fetch's first error is raised. A failed apply
    cancels the downloads (queued ones never start, running ones stop at their next
    read; Ctrl-C does the same, and first wakes a decode waiting for bytes). Either way
    the first error is raised after the workers are joined, so the pipeline's lease keeps
    every blob this run committed; a download cut short keeps its ingest for a resume.

    The stage returns only when every blob is stored *and* the unpack succeeded, so
    :class:`RecordUnpacked` after it names the image only then: a failed ``pull
    --unpack`` records nothing, as containerd's pull does (it waits for the unpacker
    before creating the image). The blobs it fetched and the lower layers committed
    before the failure stay under the run's lease until it expires: the next pull reuses
    them, ``gc`` after the expiry removes them.
    """

    __slots__ = ("_fetch", "max_concurrent")
    _unshown = frozenset({"_fetch"})
    name = "fetch-unpack"
    max_concurrent: int
    _fetch: FetchBlobs

    def __init__(
        self,
        *,
        snapshotter: str | Snapshotter | None = DEFAULT_SNAPSHOTTER,
        platform: str | Platform | None = None,
        decrypt_keys: Sequence[str | DecryptKey] = (),
        registry: ProcessorRegistry | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        super().__init__(
            snapshotter=snapshotter, platform=platform, decrypt_keys=decrypt_keys, registry=registry
        )
        self.max_concurrent = max_concurrent
        self._fetch = FetchBlobs(max_concurrent=max_concurrent)

    def run(self, item: ImagePlan, ctx: Context) -> Unpacked:
        if not item.name:
            raise InvalidArgument("unpack: the plan names no image")
        sn, keys, reg = self._open(ctx)
        configs = [img.manifest.config.digest for img in item.images(ctx.store.content)]
        with self._fetch.start(item, ctx, first=configs) as fetch:
            for c in configs:
                fetch.wait(c)
            # the model reads its blobs through the fetch: a layer follows its download
            images = item.images(fetch, registry=reg)
            target = choose(item.name, ctx.store, images, as_platform(self.platform))
            try:
                result = unpack_target(
                    ctx.store, sn, ctx.lease, target, keys, emit=ctx.emit, fetch=fetch
                )
            except Aborted:
                fetch.cancel()
                fetch.close()  # joined: the failure that stopped the apply is recorded
                fetch.check()  # the download's error, not the interrupted apply's
                raise AssertionError("apply aborted without a fetch error") from None
            fetch.finish()
        return Unpacked(item, result)


class RecordUnpacked:
    """After :class:`FetchUnpack`: name the image (:class:`~imgpipe.pipeline.Record`)
    -> ``(record, unpack result)``."""

    name = "record"

    def __init__(self, image_name: str = "") -> None:
        self._record = Record(image_name)

    def run(self, item: Unpacked, ctx: Context) -> tuple[ImageRecord, UnpackResult]:
        return self._record.run(item.plan, ctx), item.result


class PrepareRootfs(FrozenValue):
    """After :class:`Unpack` into ``snapshotter``: the active snapshot (``read_only``:
    a view) ``key`` on the image's top layer -> the mounts that show it.

    The snapshot is labelled ``containerd.io/gc.root`` (and ``labels``), so garbage
    collection leaves it and the layers under it alone while it exists; the key is
    leased before it exists, so a concurrent ``gc`` cannot take it before that label
    does. AlreadyExists if ``key`` is taken.
    """

    __slots__ = ("key", "labels", "read_only", "snapshotter")
    name = "prepare-rootfs"
    snapshotter: Snapshotter
    key: str
    read_only: bool
    labels: dict[str, str]

    def __init__(
        self,
        *,
        snapshotter: Snapshotter,
        key: str,
        read_only: bool = False,
        labels: dict[str, str] | None = None,
    ) -> None:
        self._set(
            snapshotter=snapshotter,
            key=key,
            read_only=read_only,
            labels={} if labels is None else labels,
        )

    def run(self, item: UnpackResult, ctx: Context) -> list[Mount]:
        if ctx.lease is not None:
            ctx.lease.add_snapshot(self.snapshotter.name, self.key)
        labels = {LABEL_GC_ROOT: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **self.labels}
        make = self.snapshotter.view if self.read_only else self.snapshotter.prepare
        return make(self.key, str(item.chain_id), labels=labels)


def rootfs_stages(
    sn: Snapshotter,
    key: str,
    *,
    platform: str | Platform | None = None,
    decrypt_keys: Sequence[str] = (),
    read_only: bool = False,
    labels: dict[str, str] | None = None,
) -> list[Stage[Any, Any]]:
    """A stored image's name -> the mounts of a fresh rootfs ``key`` in ``sn``:
    :class:`FindImage`, :class:`Unpack` (if needed), :class:`PrepareRootfs`."""
    return [
        FindImage(),
        Unpack(snapshotter=sn, platform=platform, decrypt_keys=decrypt_keys),
        PrepareRootfs(snapshotter=sn, key=key, read_only=read_only, labels=labels or {}),
    ]
