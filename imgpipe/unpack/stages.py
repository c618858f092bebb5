"""The unpack stages: :class:`Unpack` (a stored image) and :class:`FetchUnpack` (pull
--unpack: fetch and apply at once)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from imgpipe.errors import InvalidArgument
from imgpipe.formats.manifest import Manifest
from imgpipe.formats.platform import Platform
from imgpipe.metadata import ImageRecord
from imgpipe.pipeline import (
    DEFAULT_MAX_CONCURRENT,
    Context,
    Event,
    FetchBlobs,
    ImagePlan,
    LoadImage,
    Observer,
    normalize_name,
)
from imgpipe.processors import ProcessorRegistry
from imgpipe.snapshots import Snapshotter
from imgpipe.store import Store

from .apply import Aborted, unpack_target
from .result import DEFAULT_SNAPSHOTTER, UnpackResult
from .snapshotters import open_store_snapshotter
from .target import as_platform, load_keys, select_target

if TYPE_CHECKING:
    from imgpipe.processors.ocicrypt import DecryptKey


def _ignore(_e: Event) -> None:
    pass


class Unpack:
    """The pipeline stage: an image (a plan, a record or a name) -> :class:`UnpackResult`.

    Runs under the pipeline's lease. ``Pipeline.pull(...).insert_after("record",
    Unpack(...))`` is ``imgpipe pull --unpack``; ``Pipeline([LoadImage(), Unpack()])``
    unpacks a stored image. ``snapshotter`` None is the default for the root;
    ``decrypt_keys`` are ``FILE[:PASSWORD]`` specs or loaded keys.
    """

    name = "unpack"

    def __init__(
        self,
        *,
        snapshotter: str | None = DEFAULT_SNAPSHOTTER,
        platform: str | Platform | None = None,
        decrypt_keys: Sequence[str | DecryptKey] = (),
        registry: ProcessorRegistry | None = None,
    ) -> None:
        self.snapshotter = snapshotter
        self.platform = as_platform(platform)
        self.decrypt_keys = tuple(decrypt_keys)
        self.registry = registry

    def run(self, item: ImagePlan | ImageRecord | str, ctx: Context) -> UnpackResult:
        return self.run_on(open_store_snapshotter(ctx.store, self.snapshotter), item, ctx)

    def run_on(
        self, sn: Snapshotter, item: ImagePlan | ImageRecord | str, ctx: Context
    ) -> UnpackResult:
        """:meth:`run` with a snapshotter the caller opened (and keeps using)."""
        plan = plan_of(item, ctx)
        target = select_target(plan, ctx.store, self.platform)
        keys = load_keys(self.decrypt_keys)
        return unpack_target(
            ctx.store,
            sn,
            ctx.lease,
            target,
            keys,
            emit=ctx.emit,
            registry=self.registry,
        )


class FetchUnpack:
    """The stage of ``pull --unpack``, in place of ``fetch-blobs``: fetch the plan's
    blobs and unpack its layers at the same time -> the plan (for Record).

    As containerd's unpacker: the blobs download on worker threads (``max_concurrent``
    at once, configs first, then layers in order) while this thread applies layer *k*
    as soon as blob *k* is stored, strictly in order (*k* is prepared on the committed
    *k-1*), DiffIDs checked. A failed download stops the apply at its next read (its
    active snapshot is removed, no layer whose blob failed is committed); a failed apply
    cancels the downloads (queued ones never start, running ones stop at their next
    read). Either way the first error is raised after the workers are joined, so the
    pipeline's rollback sees every blob this run committed.

    The stage returns only when every blob is stored *and* the unpack succeeded, so
    ``Record`` after it names the image only then: a failed ``pull --unpack`` records
    nothing and the pipeline takes back the blobs it fetched, as containerd's pull does
    (it waits for the unpacker before creating the image). Lower layers committed before
    the failure stay as unreferenced snapshots: the next pull reuses them, ``gc`` removes
    them. The :class:`UnpackResult` of the last run is :attr:`result`.
    """

    name = "fetch-unpack"

    def __init__(
        self,
        *,
        snapshotter: str | None = DEFAULT_SNAPSHOTTER,
        platform: str | Platform | None = None,
        decrypt_keys: Sequence[str | DecryptKey] = (),
        registry: ProcessorRegistry | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        self.snapshotter = snapshotter
        self.platform = as_platform(platform)
        self.decrypt_keys = tuple(decrypt_keys)
        self.registry = registry
        self.fetch = FetchBlobs(max_concurrent=max_concurrent)
        self.result: UnpackResult | None = None

    def run(self, item: ImagePlan, ctx: Context) -> ImagePlan:
        if not item.name:
            raise InvalidArgument("unpack: the plan names no image")
        # what can fail without the network fails before any layer moves
        sn = open_store_snapshotter(ctx.store, self.snapshotter)
        keys = load_keys(self.decrypt_keys)
        configs = [
            doc.config
            for m in item.manifests
            if isinstance(doc := item.documents[m.digest], Manifest)
        ]
        with self.fetch.start(item, ctx, first=[c.digest for c in configs]) as fetch:
            for c in configs:
                fetch.wait(c.digest)
            target = select_target(item, ctx.store, self.platform)
            try:
                result = unpack_target(
                    ctx.store,
                    sn,
                    ctx.lease,
                    target,
                    keys,
                    emit=ctx.emit,
                    registry=self.registry,
                    fetch=fetch,
                )
            except Aborted:
                fetch.check()  # the download's error, not the interrupted apply's
                raise AssertionError("apply aborted without a fetch error") from None
            fetch.finish()
        self.result = result
        return item


def plan_of(item: ImagePlan | ImageRecord | str, ctx: Context) -> ImagePlan:
    if isinstance(item, ImagePlan):
        if item.name:
            return item
        raise InvalidArgument("unpack: the plan names no image")
    name = item.name if isinstance(item, ImageRecord) else normalize_name(item)
    return LoadImage().run(name, ctx)


@contextlib.contextmanager
def lease_context(store: Store, observer: Observer | None) -> Iterator[Context]:
    ctx = Context(store, observer=observer)
    with ctx.resources, store.db.lease() as lease:
        ctx.lease = lease
        yield ctx
