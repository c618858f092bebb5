"""The per-blob work of a conversion: find, mount, copy or convert each blob, ``jobs`` at once.

A blob passed through (a config, a layer already in the target form) is looked up in
the destination (HEAD) or mounted from the source repository before it is copied byte
for byte. A layer to convert goes through :func:`~imgpipe.conversion.layers.open_converted`
into the destination's ``write_converted``; its result is remembered in the Converter's
cache so the same layer of another image is found or mounted instead of converted again.

Each source Layer becomes a Layer of the destination (:class:`~.flow.MappedLayer`): the
new descriptor, the checked DiffID, its bytes readable again by a later stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import DigestMismatch, SizeMismatch, Unavailable
from imgpipe.image.keys import in_layer
from imgpipe.pipeline import Event, EventKind, Observer
from imgpipe.pipeline.context import Context, Stage
from imgpipe.pipeline.scheduler import ProgressReader, run_concurrently
from imgpipe.processors.estargz_params import ANNOTATIONS as SEEKABLE_ANNOTATIONS

from .destinations import PushRejected, RegistryDestination
from .flow import Ends, Mapped, MappedLayer, Planned, Result
from .layers import LayerPlan, open_converted
from .options import ConvertOptions
from .plan import BlobKey
from .report import Action

if TYPE_CHECKING:
    from imgpipe.processors import ProcessorRegistry

__all__ = ["LAYER_ATTEMPTS", "BlobWork", "CacheEntry", "MapLayers"]

#: Attempts per converted layer when the destination failed mid-upload (5xx, dropped
#: connection): a streamed upload cannot be replayed, so the layer is converted again.
LAYER_ATTEMPTS: Final = 2

#: The progress events' detail while a blob is read, to the last byte.
VERB: Final = "converting"

_ENC_ANNOTATION_PREFIX: Final = "org.opencontainers.image.enc."


@dataclass
class CacheEntry:
    """A converted layer's result: ``diff_id`` is the output's, ``source_diff_id`` the
    tar read from the source (they differ for eStargz), ``annotations`` the new ones."""

    digest: Digest
    size: int
    diff_id: str
    places: set[tuple[str, str]] = field(default_factory=set)
    source_diff_id: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)


class BlobWork:
    """The blobs of one conversion (one run of ``stage``), into ``ends.dest``;
    ``results`` by :func:`~imgpipe.conversion.plan.blob_key`."""

    def __init__(
        self, stage: MapLayers, ends: Ends, emit: Observer, cancel: threading.Event | None = None
    ) -> None:
        self.stage = stage
        # the run's (Context.cancel): Ctrl-C or a failed layer stops the others' streams
        self.cancel = cancel if cancel is not None else threading.Event()
        self.source = ends.source
        self.dest = ends.dest
        self.params = stage.spec.params()
        self.emit = emit
        self.results: dict[BlobKey, Result] = {}

    def run_blob(self, plan: LayerPlan) -> Result:
        """Copy or convert one blob into the destination (or find it there)."""
        try:
            return self._run_blob(plan)
        except (DigestMismatch, SizeMismatch) as e:
            if self.source.name in str(e):
                raise
            # the verifying reader knows bytes, not where they came from: say it
            raise in_layer(e, f"{self.source.name}: blob {plan.source.digest}") from None

    def _run_blob(self, plan: LayerPlan) -> Result:
        start = time.monotonic()
        src = plan.source
        emit = self.emit
        if plan.passthrough:
            out = src.replace(media_type=plan.target_type)
            if found := self._found(plan, out, [self.source.registry_repo()], start):
                return found
            emit(Event(EventKind.BLOB_START, src.digest, src.media_type, src.size, "copying"))
            self.dest.copy_blob(out, self._progress(plan, src))
            emit(Event(EventKind.BLOB_DONE, out.digest, out.media_type, out.size, "done"))
            return Result(self._layer(plan, out), "copied", time.monotonic() - start)
        key = plan.cache_key(self.params)
        if key is not None:
            with self.stage.cache_lock:
                hit = self.stage.cache.get(key)
            if (
                hit is not None
                and plan.diff_id is not None
                and (hit.source_diff_id or hit.diff_id) != str(plan.diff_id)
            ):
                # The same blob, but this image's config promises another tar: convert it
                # again so the DiffID check runs (and fails) as it would on a fresh run.
                hit = None
            if hit is not None:
                out = self._descriptor(plan, hit.digest, hit.size, hit.annotations)
                places = sorted(hit.places)
                if found := self._found(plan, out, places, start, hit.diff_id, hit.source_diff_id):
                    return found
        emit(Event(EventKind.BLOB_START, src.digest, src.media_type, src.size, "converting"))
        for attempt in range(LAYER_ATTEMPTS):
            stream = open_converted(
                self._progress(plan, src),
                plan,
                self.stage.registry,
                self.params,
                what=f"{self.source.name}: layer {src.digest}",
            )
            try:
                with stream:
                    digest, size = self.dest.write_converted(stream, str(plan.target_type))  # type: ignore[arg-type]
                    annotations = stream.annotations()
                    diff_id = stream.diff_id
                    source_diff_id = stream.source_diff_id
            except PushRejected as e:
                if attempt + 1 < LAYER_ATTEMPTS and isinstance(e.__cause__, Unavailable):
                    continue  # 5xx or a dropped connection: the layer is produced again
                raise
            break
        out = self._descriptor(plan, digest, size, annotations)
        if diff_id is not None:
            self.dest.label_layer(digest, diff_id)
        if key is not None:
            with self.stage.cache_lock:
                entry = self.stage.cache.setdefault(
                    key,
                    CacheEntry(
                        digest,
                        size,
                        str(diff_id or ""),
                        source_diff_id=str(source_diff_id or ""),
                        annotations=annotations,
                    ),
                )
                if isinstance(self.dest, RegistryDestination):
                    entry.places.add((self.dest.ref.domain, self.dest.ref.path))
        emit(Event(EventKind.BLOB_DONE, out.digest, out.media_type, out.size, "done"))
        layer = self._layer(plan, out, diff_id)
        return Result(
            layer,
            "converted",
            time.monotonic() - start,
            str(diff_id or ""),
            str(source_diff_id or ""),
        )

    def _progress(self, plan: LayerPlan, src: Descriptor) -> ProgressReader:
        """The source layer's bytes, with progress, stopping once the run is cancelled."""
        return ProgressReader(
            plan.layer.open_compressed(), self.emit, src, VERB, final=VERB, cancel=self.cancel
        )

    def _layer(
        self, plan: LayerPlan, out: Descriptor, diff_id: Digest | None = None
    ) -> MappedLayer:
        """The Layer ``plan``'s source is now: bytes unchanged are read from the source
        (the destination may be a layout being written), new ones from the destination."""
        reader = self.source if out.digest == plan.source.digest else self.dest
        return MappedLayer(reader, out, plan.layer, diff_id, self.stage.registry)

    def _found(  # noqa: PLR0917 (the two DiffIDs travel together)
        self,
        plan: LayerPlan,
        out: Descriptor,
        places: Sequence[tuple[str, str] | None],
        start: float,
        diff_id: str = "",
        source_diff_id: str = "",
    ) -> Result | None:
        """``out`` found in the destination (HEAD) or mounted there from one of ``places``
        (registry, repository); None when it has to be written."""
        action: Action = "exists"
        detail = "already exists"
        if not self.dest.has_blob(out):
            origin = next(filter(None, (self.dest.mount_blob(out, p) for p in places)), "")
            if not origin:
                return None
            action, detail = "mounted", f"mounted from {origin}"
        self.emit(Event(EventKind.BLOB_EXISTS, out.digest, out.media_type, out.size, detail))
        checked = Digest.parse(diff_id) if diff_id else None
        layer = self._layer(plan, out, checked)
        return Result(layer, action, time.monotonic() - start, diff_id, source_diff_id)

    def _descriptor(
        self, plan: LayerPlan, digest: Digest, size: int, added: Mapping[str, str]
    ) -> Descriptor:
        annotations = dict(plan.source.annotations)
        if plan.recompress:
            # what the source's eStargz / zstd:chunked TOC said is false of new bytes
            annotations = {k: v for k, v in annotations.items() if k not in SEEKABLE_ANNOTATIONS}
        if plan.decrypt or plan.encrypt:
            annotations = {
                k: v for k, v in annotations.items() if not k.startswith(_ENC_ANNOTATION_PREFIX)
            }
        annotations.update(added)
        return plan.source.replace(
            media_type=plan.target_type,
            digest=digest,
            size=size,
            annotations=annotations,
        )

    def run_blobs(self, tasks: Iterable[tuple[BlobKey, LayerPlan]]) -> None:
        """Run every task once (the first plan of each key), ``spec.jobs`` at once."""
        todo: dict[BlobKey, LayerPlan] = {}
        for key, plan in tasks:
            todo.setdefault(key, plan)
        plans = list(todo.values())
        done = run_concurrently(
            self.emit,
            plans,
            min(self.stage.spec.jobs, len(plans)),
            "convert",
            self.run_blob,
            describe=_source,
            cancel=self.cancel,
        )
        self.results.update(zip(todo, done, strict=True))


def _source(plan: LayerPlan) -> Descriptor:
    return plan.source


class MapLayers(Stage[Planned, Mapped]):
    """The stage ``Planned -> Mapped``: every blob of the plan into the destination,
    ``spec.jobs`` at once, each source Layer mapped to the destination's Layer; results
    of converted layers kept in ``cache`` for the next conversion (a Converter's)."""

    name = "map-layers"

    def __init__(
        self,
        spec: ConvertOptions,
        registry: ProcessorRegistry,
        cache: dict[tuple[str, ...], CacheEntry],
        cache_lock: threading.Lock,
    ) -> None:
        self.spec = spec
        self.registry = registry
        self.cache = cache
        self.cache_lock = cache_lock

    def run(self, item: Planned, ctx: Context) -> Mapped:
        work = BlobWork(self, item.ends, ctx.emit, ctx.cancel)
        work.run_blobs(item.tasks)
        return Mapped(item, work.results)
