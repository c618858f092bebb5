"""The per-blob work of a conversion: find, mount, copy or convert each blob, ``jobs`` at once.

A blob passed through (a config, a layer already in the target form) is looked up in
the destination (HEAD) or mounted from the source repository before it is copied byte
for byte. A layer to convert goes through :func:`~imgpipe.conversion.layers.open_converted`
into the destination's ``write_converted``; its result is remembered in the Converter's
cache so the same layer of another image is found or mounted instead of converted again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import DigestMismatch, SizeMismatch, Unavailable
from imgpipe.image.keys import in_layer
from imgpipe.pipeline import PROGRESS_INTERVAL, Event, EventKind, Observer
from imgpipe.processors.streams import PassThrough

from .destinations import Destination, PushRejected, RegistryDestination
from .layers import LayerPlan, open_converted
from .options import ConvertOptions
from .plan import BlobKey
from .report import Action
from .sources import Source

if TYPE_CHECKING:
    from imgpipe.processors import ProcessorRegistry

__all__ = ["LAYER_ATTEMPTS", "BlobWork", "CacheEntry", "Result"]

#: Attempts per converted layer when the destination failed mid-upload (5xx, dropped
#: connection): a streamed upload cannot be replayed, so the layer is converted again.
LAYER_ATTEMPTS: Final = 2

_ENC_ANNOTATION_PREFIX: Final = "org.opencontainers.image.enc."


@dataclass
class Result:
    desc: Descriptor
    action: Action
    seconds: float
    diff_id: str = ""


@dataclass
class CacheEntry:
    digest: Digest
    size: int
    diff_id: str
    places: set[tuple[str, str]] = field(default_factory=set)


class _Progress(PassThrough):
    """Source bytes read, as BLOB_PROGRESS events (no ``annotations``: it is the source)."""

    def __init__(self, raw: BinaryIO, emit: Observer, desc: Descriptor) -> None:
        super().__init__(raw)
        self._emit = emit
        self._desc = desc
        self._offset = 0
        self._last = 0.0

    def _seen(self, chunk: bytes | memoryview) -> None:
        self._offset += len(chunk)
        now = time.monotonic()
        d = self._desc
        if now - self._last >= PROGRESS_INTERVAL or self._offset >= d.size:
            self._last = now
            self._emit(
                Event(
                    EventKind.BLOB_PROGRESS,
                    d.digest,
                    d.media_type,
                    d.size,
                    "converting",
                    self._offset,
                )
            )


def _progress(raw: BinaryIO, emit: Observer, desc: Descriptor) -> BinaryIO:
    return _Progress(raw, emit, desc)  # type: ignore[return-value]


class BlobWork:
    """The blobs of one conversion, into ``dest``; ``results`` by :func:`blob_key`."""

    def __init__(
        self,
        *,
        source: Source,
        dest: Destination,
        spec: ConvertOptions,
        registry: ProcessorRegistry,
        observer: Observer,
        cache: dict[tuple[str, ...], CacheEntry],
        cache_lock: threading.Lock,
    ) -> None:
        self.source = source
        self.dest = dest
        self.spec = spec
        self.params = spec.params()
        self.registry = registry
        self.emit = observer
        self.cache = cache
        self.cache_lock = cache_lock
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
            out = replace(src, media_type=plan.target_type)
            if found := self._found(out, [self.source.registry_repo()], start):
                return found
            emit(Event(EventKind.BLOB_START, src.digest, src.media_type, src.size, "copying"))
            self.dest.copy_blob(out, _progress(plan.layer.open_compressed(), emit, src))
            emit(Event(EventKind.BLOB_DONE, out.digest, out.media_type, out.size, "done"))
            return Result(out, "copied", time.monotonic() - start)
        key = plan.cache_key(self.params)
        if key is not None:
            with self.cache_lock:
                hit = self.cache.get(key)
            if hit is not None and plan.diff_id is not None and hit.diff_id != str(plan.diff_id):
                # The same blob, but this image's config promises another tar: convert it
                # again so the DiffID check runs (and fails) as it would on a fresh run.
                hit = None
            if hit is not None:
                out = self._descriptor(plan, hit.digest, hit.size, {})
                if found := self._found(out, sorted(hit.places), start, hit.diff_id):
                    return found
        emit(Event(EventKind.BLOB_START, src.digest, src.media_type, src.size, "converting"))
        for attempt in range(LAYER_ATTEMPTS):
            stream = open_converted(
                _progress(plan.layer.open_compressed(), emit, src),
                plan,
                self.registry,
                self.params,
                what=f"{self.source.name}: layer {src.digest}",
            )
            try:
                with stream:
                    digest, size = self.dest.write_converted(stream, str(plan.target_type))  # type: ignore[arg-type]
                    annotations = stream.annotations() if plan.encrypt else {}
                    diff_id = stream.diff_id
            except PushRejected as e:
                if attempt + 1 < LAYER_ATTEMPTS and isinstance(e.__cause__, Unavailable):
                    continue  # 5xx or a dropped connection: the layer is produced again
                raise
            break
        out = self._descriptor(plan, digest, size, annotations)
        if diff_id is not None:
            self.dest.label_layer(digest, diff_id)
        if key is not None:
            with self.cache_lock:
                entry = self.cache.setdefault(key, CacheEntry(digest, size, str(diff_id or "")))
                if isinstance(self.dest, RegistryDestination):
                    entry.places.add((self.dest.ref.domain, self.dest.ref.path))
        emit(Event(EventKind.BLOB_DONE, out.digest, out.media_type, out.size, "done"))
        return Result(out, "converted", time.monotonic() - start, str(diff_id or ""))

    def _found(
        self,
        out: Descriptor,
        places: Sequence[tuple[str, str] | None],
        start: float,
        diff_id: str = "",
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
        return Result(out, action, time.monotonic() - start, diff_id)

    def _descriptor(
        self, plan: LayerPlan, digest: Digest, size: int, added: Mapping[str, str]
    ) -> Descriptor:
        annotations = dict(plan.source.annotations)
        if plan.decrypt or plan.encrypt:
            annotations = {
                k: v for k, v in annotations.items() if not k.startswith(_ENC_ANNOTATION_PREFIX)
            }
        annotations.update(added)
        return replace(
            plan.source,
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
        items = list(todo.items())
        for _, plan in items[self.spec.jobs :]:
            d = plan.source
            self.emit(Event(EventKind.BLOB_WAITING, d.digest, d.media_type, d.size, "waiting"))
        workers = min(self.spec.jobs, len(items))
        if workers <= 1:
            for key, plan in items:
                self.results[key] = self.run_blob(plan)
            return
        pool = ThreadPoolExecutor(workers, thread_name_prefix="convert")
        futures: dict[Future[Result], BlobKey] = {}
        try:
            futures = {pool.submit(self.run_blob, plan): key for key, plan in items}
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for f in futures:
            if not f.cancelled() and (exc := f.exception()) is not None:
                raise exc
        for f, key in futures.items():
            self.results[key] = f.result()
