"""Lazy pull: the documents, the configs and the TOCs now; the layers when read.

::

    Resolve -> FetchDocuments -> FetchLazy -> RecordLazy        (Pipeline.pull's first two)

:class:`FetchLazy` stores and checks the configs, chooses the one image to run (this
host's platform, or the one asked for), and asks :func:`imgpipe.lazy.lazy_plan` whether
its layers can be read by Range (every layer eStargz or zstd:chunked, TOCs fetched and
verified, the registry honouring Range). When they cannot, it says why
(:attr:`LazyPulled.fallback`) and downloads the layers in full, as ``pull`` does: the
fallback is never silent. When they can, the layers' digests are leased (so a ``gc``
keeps their caches) and nothing else of them is fetched here.

:class:`RecordLazy` names the image, labelled with :data:`LABEL_LAZY_SOURCE` (where its
missing layers come from) while layers are missing: a run or an unpack of a lazily pulled
image fetches what it lacks from there (:func:`missing_layers`, :func:`complete_source`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from imgpipe.events import Event, EventKind
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument, NotFound, Unsupported
from imgpipe.formats.manifest import Manifest
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef, parse_transport
from imgpipe.image import ImagePlan, select
from imgpipe.pipeline import Context, Stage

if TYPE_CHECKING:
    from imgpipe.events import Observer
    from imgpipe.image import Image
    from imgpipe.image.blobs import BlobReader
    from imgpipe.metadata import ImageRecord
    from imgpipe.pipeline import Root
    from imgpipe.remote.options import TransportOptions
    from imgpipe.store import Store

__all__ = [
    "ALREADY_STORED",
    "LABEL_LAZY_SOURCE",
    "FetchLazy",
    "LayerReport",
    "LazyPulled",
    "RecordLazy",
    "complete_lazy",
    "complete_source",
    "lacks_layers",
    "lazy_pull_pipeline",
    "lazy_source",
    "missing_layers",
    "not_lazy",
    "pull_lazy",
]

#: On an image whose layers are not all in the store: the source they come from (by
#: digest: ``docker://HOST/REPO@sha256:...``). Dropped once a full pull records it again.
LABEL_LAZY_SOURCE: Final = "org.imgpipe.lazy.source"

#: The fallback of an image whose layers are all stored: nothing to be lazy about.
ALREADY_STORED: Final = "every layer is in the store already"

#: Layer states, as ``pull --lazy`` and ``run --lazy`` print them.
LAZY: Final = "lazy"  # only its TOC fetched; files fetched when read
PREFETCHED: Final = "prefetched"  # the files before .prefetch.landmark in the cache too
COMPLETE: Final = "complete"  # every byte fetched, verified, committed as a blob
PULLED: Final = "pulled"  # downloaded in full (the fallback, or already stored)


@dataclass(frozen=True)
class LayerReport:
    """One layer of a lazy pull: where it stands and the compressed bytes fetched of it."""

    index: int
    digest: Digest
    size: int
    state: str
    fetched: int = 0
    error: str = ""


@dataclass(frozen=True)
class LazyPulled:
    """What a lazy pull did. ``fallback`` says why the image was pulled in full (None:
    lazily); ``lazy`` is the plan the FUSE mount is built from (None after a fallback).
    ``image`` and ``source`` stay usable until the pipeline run ends."""

    record: ImageRecord | None
    ref: TransportRef
    image: Image
    source: BlobReader
    lazy: Any  # imgpipe.lazy.LazyPlan, or None
    fallback: str | None
    layers: tuple[LayerReport, ...]

    def fetched(self) -> int:
        """Compressed layer bytes fetched so far (TOCs, prefetch)."""
        return sum(layer.fetched for layer in self.layers if layer.state != PULLED)

    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


def _choose(plan: ImagePlan, platform: Platform | None) -> Image:
    images = plan.images()
    chosen = select.pick(images, platform, lambda i: i.platform())
    if chosen is None:
        raise NotFound(f"{plan.origin}: no image for {platform or 'this host'}")
    return chosen


def lazy_source(ref: TransportRef, image: Image) -> str:
    """Where the missing layers of ``image`` come from, pinned to its manifest."""
    if ref.transport != "docker" or ref.reference is None:
        return str(ref)
    return f"docker://{ref.reference.name}@{image.descriptor.digest}"


class FetchLazy(Stage[ImagePlan, "_Fetched"]):
    """The configs (stored, checked), the image chosen, and its layers either planned
    for lazy reading (leased, not fetched) or, when they cannot be, downloaded in full.

    ``prefetch``: also fetch the files before each layer's ``.prefetch.landmark`` into
    the layer caches now (``pull --lazy``; a lazy run's mount does it itself)."""

    name = "fetch-lazy"

    def __init__(
        self,
        *,
        platform: Platform | None = None,
        max_concurrent: int | None = None,
        prefetch: bool = False,
    ) -> None:
        self.platform, self.max_concurrent, self.prefetch = platform, max_concurrent, prefetch

    def run(self, item: ImagePlan, ctx: Context) -> _Fetched:
        from imgpipe.image.validate import check_plan_configs  # noqa: PLC0415
        from imgpipe.pipeline.fetch import FetchBlobs, store_blob  # noqa: PLC0415

        if item.source is None or item.origin is None:
            raise InvalidArgument("fetch-lazy needs a source: run resolve first")
        for desc in item.manifests:
            doc = item.documents[desc.digest]
            if isinstance(doc, Manifest) and doc.config.media_type.is_config():
                store_blob(ctx, item.source, doc.config, origin=item.origin)
        check_plan_configs(item, ctx.store.content)
        image = _choose(item, self.platform)
        descs = [layer.descriptor for layer in image.layers()]
        stored = [ctx.store.content.exists(d.digest) for d in descs]
        plan = None
        fallback = ALREADY_STORED if all(stored) else not_lazy(descs)
        if fallback is None:
            from . import lazy_plan  # noqa: PLC0415 (FUSE and ctypes: only when lazy)

            plan = lazy_plan(image, item.source)
            if plan.fallback is not None:
                fallback = f"{plan.fallback} ({plan.detail})" if plan.detail else plan.fallback
        if fallback is not None:
            only = item.replace(manifests=(image.descriptor,), blobs=tuple(descs))
            kw = {} if self.max_concurrent is None else {"max_concurrent": self.max_concurrent}
            FetchBlobs(**kw).run(only, ctx)
            reports = tuple(
                LayerReport(n, d.digest, d.size, COMPLETE if had else PULLED, 0 if had else d.size)
                for n, (d, had) in enumerate(zip(descs, stored, strict=True))
            )
            return _Fetched(item, image, None, fallback, reports)
        for d in descs:
            ctx.protect(d.digest)  # held by this run, then by the image: gc keeps the caches
        done = _prefetch(ctx, plan, item.source) if self.prefetch else []
        reports = tuple(
            LayerReport(
                n,
                d.digest,
                d.size,
                COMPLETE if had else (done[n].state if done else LAZY),
                _fetched(plan, n) + (done[n].fetched if done else 0),
                done[n].error if done else "",
            )
            for n, (d, had) in enumerate(zip(descs, stored, strict=True))
        )
        return _Fetched(item, image, plan, None, reports)


def lazy_pull_pipeline(
    *,
    name: str | None = None,
    platform: Platform | None = None,
    options: Any = None,
    prefetch: bool = False,
) -> Any:
    """``Resolve -> FetchDocuments -> FetchLazy -> RecordLazy``: the lazy pull, for
    ``pull --lazy`` (``prefetch``) and for a lazy run (its mount prefetches)."""
    from imgpipe.pipeline import Pipeline  # noqa: PLC0415
    from imgpipe.pipeline.fetch import FetchDocuments  # noqa: PLC0415
    from imgpipe.pipeline.resolve import Resolve  # noqa: PLC0415

    concurrent = getattr(options, "max_concurrent", None)
    return Pipeline(
        [
            Resolve(name=name, require_name=True, options=options),
            FetchDocuments(platform=platform),
            FetchLazy(platform=platform, max_concurrent=concurrent, prefetch=prefetch),
            RecordLazy(),
        ]
    )


def not_lazy(layers: Sequence[Descriptor]) -> str | None:
    """Why layers of these descriptors cannot be read lazily (None: they may be; their
    TOCs and the registry's Range decide), from media types and annotations alone."""
    from imgpipe.image.tocfetch import layer_format  # noqa: PLC0415

    if not layers:
        return "the image has no layers"
    why = []
    for n, desc in enumerate(layers):
        try:
            layer_format(desc, what=f"layer {n}")
        except Unsupported:
            why.append((n, desc))
    if len(why) == len(layers):
        return f"no layer is eStargz or zstd:chunked (layer 0 is {layers[0].media_type})"
    if why:
        n, desc = why[0]
        return (
            f"layer {n} ({desc.digest}) is {desc.media_type}, not eStargz or zstd:chunked "
            "(a lazy rootfs needs every layer in one of them)"
        )
    return None


def _fetched(plan: Any, n: int) -> int:
    layer = plan.layers[n]
    return int(layer.fetcher.bytes_fetched) if layer is not None else 0


def _prefetch(ctx: Context, plan: Any, source: BlobReader) -> list[Any]:
    """The files before each layer's prefetch landmark, into the layer caches."""
    from imgpipe.image.tocfetch import range_reader  # noqa: PLC0415

    from .completing import converge  # noqa: PLC0415

    return converge(ctx.store, plan, range_reader(source), background=False)


@dataclass(frozen=True)
class _Fetched:
    plan: ImagePlan
    image: Image
    lazy: Any
    fallback: str | None
    layers: tuple[LayerReport, ...]


class RecordLazy(Stage[_Fetched, LazyPulled]):
    """Name the image (Record's rule), labelled :data:`LABEL_LAZY_SOURCE` while layers
    are missing."""

    name = "record"

    def __init__(self, *, record: bool = True) -> None:
        self.record = record

    def run(self, item: _Fetched, ctx: Context) -> LazyPulled:
        plan = item.plan
        assert plan.origin is not None and plan.source is not None
        rec = None
        if self.record:
            if not plan.name:
                raise InvalidArgument("the source names no image: give a name (--name)")
            labels = {}
            if item.lazy is not None:
                labels[LABEL_LAZY_SOURCE] = lazy_source(plan.origin, item.image)
            rec = ctx.store.db.put_image(plan.name, plan.root, labels)
            root = plan.root
            ctx.emit(
                Event(EventKind.IMAGE_RECORDED, root.digest, root.media_type, root.size, plan.name)
            )
        return LazyPulled(
            rec, plan.origin, item.image, plan.source, item.lazy, item.fallback, item.layers
        )


def lacks_layers(store: Store, record: ImageRecord) -> bool:
    """Whether a stored manifest of the image names a layer the content store lacks."""
    from imgpipe.image import BlobIndex, load  # noqa: PLC0415

    top = load(store.content, record.target)
    images = top.manifests(skip_missing=True) if isinstance(top, BlobIndex) else (top,)
    return any(
        not store.content.exists(layer.descriptor.digest)
        for image in images
        for layer in image.layers()
    )


def complete_lazy(
    record: ImageRecord,
    ctx: Context,
    *,
    platform: Platform | None = None,
    options: Any = None,
) -> ImageRecord:
    """A lazily pulled image (:data:`LABEL_LAZY_SOURCE`) made whole for an ordinary run
    or unpack: the layers the store lacks pulled from the source its label names (a pull
    by digest, in the caller's context: its lease), then the label dropped. The record
    as it is for an image with no such label."""
    from imgpipe.pipeline import Pipeline  # noqa: PLC0415

    source = complete_source(record)
    if source is None:
        return record
    if lacks_layers(ctx.store, record):
        Pipeline.pull(name=record.name, platform=platform, options=options).run_in(source, ctx)
    labels = {k: v for k, v in record.labels.items() if k != LABEL_LAZY_SOURCE}
    return ctx.store.db.put_image(record.name, record.target, labels)


def missing_layers(store: Store, layers: Sequence[Digest]) -> list[Digest]:
    """The digests of ``layers`` the content store does not hold."""
    return [d for d in layers if not store.content.exists(d)]


def complete_source(record: ImageRecord) -> TransportRef | None:
    """Where to fetch the missing layers of a lazily pulled image from (None: the image
    was not pulled lazily, so nothing says where)."""
    text = record.labels.get(LABEL_LAZY_SOURCE)
    return parse_transport(text) if text else None


def pull_lazy(
    source: str | TransportRef,
    *,
    name: str | None = None,
    platform: str | Platform | None = None,
    background: bool = True,
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
    options: TransportOptions | None = None,
) -> LazyPulled:
    """``pull --lazy``: the index, manifest and config, each layer's TOC and the files
    before its ``.prefetch.landmark``; the image is named at once, and its layers are
    fetched when read (``run --lazy``), by the background completion (``background``, a
    detached process: :mod:`imgpipe.lazy.completing`), or by the next run or unpack.

    An image that cannot be pulled lazily (a layer neither eStargz nor zstd:chunked, a
    registry that ignores Range) is pulled in full, and ``fallback`` says why. The
    result says per layer ``lazy``, ``prefetched``, ``complete`` or ``pulled``, and the
    bytes fetched. Raises what :func:`imgpipe.pull` raises.
    """
    from imgpipe.pipeline import opened_store  # noqa: PLC0415

    from .completing import spawn_completion  # noqa: PLC0415

    ref = source if isinstance(source, TransportRef) else parse_transport(source)
    plat = Platform.parse(platform) if isinstance(platform, str) else platform
    pipeline = lazy_pull_pipeline(name=name, platform=plat, options=options, prefetch=True)
    with opened_store(store, root) as s:
        result: LazyPulled = pipeline.run(ref, store=s, observer=observer)
        if background and result.lazy is not None and result.record is not None:
            spawn_completion(
                s.root,
                lazy_source(result.ref, result.image),
                result.record.name,
                result.image.descriptor.digest,
                options,
            )
        return result
