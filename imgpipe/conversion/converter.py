"""The :class:`Converter`: one conversion's pieces put together, connections kept across calls.

One call locates both ends, then runs ``Pipeline([Resolve, MapLayers, Write])``
(:meth:`Converter.pipeline`: :mod:`.plan` opens the ends and plans, :mod:`.blobs` maps
the layers, :mod:`.documents` writes the documents, the root, last the tag). The
pipeline has a store only when the destination is the store: its lease protects what
the conversion writes, and a failure removes what only this conversion wrote.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgpipe.config import with_defaults
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import NotFound
from imgpipe.formats.mediatype import MediaType
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef
from imgpipe.pipeline import Context, Event, EventKind, Observer, Pipeline, Root
from imgpipe.processors import ZSTD_THREADS
from imgpipe.processors.estargz_params import DEFAULT_CHUNK_SIZE
from imgpipe.transports import TransportOptions, open_sink, open_source

from .blobs import CacheEntry, MapLayers
from .destinations import Destination, RegistryDestination, SinkDestination, StoreDestination
from .documents import Write
from .flow import Request
from .locate import Location, locate
from .options import DEFAULT_JOBS, ConvertOptions
from .plan import Resolve
from .report import ConvertReport
from .sources import RegistrySourceEnd, Source, StoreSource, TransportSourceEnd

if TYPE_CHECKING:
    from imgpipe.processors import ProcessorRegistry
    from imgpipe.remote.client import RegistryClient
    from imgpipe.store import Store

__all__ = ["Converter", "Root", "convert"]


class Converter:
    """Converts images, reusing registry connections and conversion results across calls.

    ``options`` says how to reach registries (one RegistryClient, created on first use,
    serves every call); ``store`` (or ``root``) is the local store for ``local:`` and
    bare local names, opened only when a conversion involves it (registry to registry
    never creates a root). ``registry`` chooses the stream processors (default:
    configured, entry points, built-ins). ``client``: a RegistryClient to use instead
    of making one (its owner closes it; a sync shares one between its checks and its
    conversions). Thread-safe for concurrent ``convert`` calls
    as long as they do not write the same destination. Close it (or use ``with``).
    """

    def __init__(
        self,
        *,
        options: TransportOptions | None = None,
        store: Store | None = None,
        root: Root = None,
        registry: ProcessorRegistry | None = None,
        client: RegistryClient | None = None,
    ) -> None:
        self.options = with_defaults(options)
        self._store = store
        self._own_store = False
        self._root = root
        self._registry = registry
        self._client: RegistryClient | None = client
        self._own_client = client is None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], CacheEntry] = {}
        self._cache_lock = threading.Lock()

    def __enter__(self) -> Converter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the registry connections and the store if this Converter opened it."""
        if self._client is not None and self._own_client:
            self._client.close()
        self._client, self._own_client = None, True
        if self._own_store and self._store is not None:
            self._store.close()
            self._store = None

    # the pieces, on first use

    def _processors(self) -> ProcessorRegistry:
        with self._lock:
            if self._registry is None:
                from imgpipe.decode import default_registry  # noqa: PLC0415

                self._registry = default_registry()
            return self._registry

    def _registry_client(self) -> RegistryClient:
        with self._lock:
            if self._client is None:
                from imgpipe.remote.client import RegistryClient  # noqa: PLC0415 (urllib3)

                self._client = RegistryClient(self.options)
            return self._client

    def store(self) -> Store:
        """The local store (opened now if this Converter was given only a root)."""
        with self._lock:
            if self._store is None:
                from imgpipe.store import Store  # noqa: PLC0415

                self._store = Store(self._root)
                self._own_store = True
            return self._store

    def _local_exists(self, name: str) -> bool:
        if self._store is None:
            from imgpipe.store import default_root  # noqa: PLC0415

            root = Path(self._root) if self._root is not None else default_root()
            # never create a root just to look: a CI job converting between registries
            # may have none, and no right to make one
            if not (root / "metadata.db").exists():
                return False
        try:
            self.store().db.get_image(name)
        except NotFound:
            return False
        return True

    def open_source(self, loc: Location, shown: str) -> Source:
        """The source end ``loc`` names (Resolve's opener; the caller closes it)."""
        if loc[0] == "store":
            return StoreSource(self.store(), loc[1])
        ref = loc[1]
        if ref.transport == "docker":
            assert ref.reference is not None
            return RegistrySourceEnd(self._registry_client().repository(ref.reference), shown)
        return TransportSourceEnd(open_source(ref, options=self.options), shown)

    def open_dest(self, loc: Location, shown: str, ctx: Context) -> Destination:
        """The destination ``loc`` names; the store is ``ctx``'s (its lease)."""
        if loc[0] == "store":
            return StoreDestination(ctx, loc[1])
        ref = loc[1]
        if ref.transport == "docker":
            assert ref.reference is not None
            repo = self._registry_client().repository(ref.reference, push=True)
            return RegistryDestination(repo, ref.reference, shown)
        # a layout records no local name for a converted image
        return SinkDestination(open_sink(ref, image_name="", options=self.options), shown)

    def pipeline(self, spec: ConvertOptions | None = None) -> Pipeline:
        """Convert = Resolve -> MapLayers -> Write, as ``spec`` says, on this Converter's
        connections, processors and cache; run it on a :meth:`request`. A stage of your
        own fits between "map-layers" and "write" (every blob in, nothing named yet)."""
        spec = spec or ConvertOptions()
        registry = self._processors()
        return Pipeline(
            [
                Resolve(spec, registry, self),
                MapLayers(spec, registry, self._cache, self._cache_lock),
                Write(dict(spec.annotations)),
            ]
        )

    def request(self, source: str | TransportRef, destination: str | TransportRef) -> Request:
        """Both ends located (the rules in the package docstring)."""
        return Request(
            locate(source, source=True, local_exists=self._local_exists),
            locate(destination, source=False, local_exists=self._local_exists),
            (str(source), str(destination)),
            time.monotonic(),
        )

    def run_pipeline(
        self, pipeline: Pipeline, request: Request, *, observer: Observer | None = None
    ) -> ConvertReport:
        """Run a conversion ``pipeline`` (see :meth:`pipeline`) on ``request``; with the
        store only when the destination is the store."""
        store = self.store() if request.dest[0] == "store" else None
        report: ConvertReport = pipeline.run(request, store=store, observer=observer)
        _exported(observer or _ignore, report)
        return report

    def convert(
        self,
        source: str | TransportRef,
        destination: str | TransportRef,
        spec: ConvertOptions | None = None,
        *,
        observer: Observer | None = None,
    ) -> ConvertReport:
        """Convert ``source`` into ``destination`` as ``spec`` says; what was done.

        See the module docstring for the locations, what changes and the errors. The
        destination's tag (or local name) is written last, only on success; a failed
        conversion into the store removes what it wrote unless something else holds it.
        """
        request = self.request(source, destination)
        return self.run_pipeline(self.pipeline(spec), request, observer=observer)

    def convert_in(
        self,
        source: str | TransportRef,
        destination: str | TransportRef,
        spec: ConvertOptions | None,
        ctx: Context,
    ) -> ConvertReport:
        """:meth:`convert` as one stage of a running pipeline: under its lease when
        the destination is its store; a destination in another store
        (this Converter's) gets a run of its own."""
        request = self.request(source, destination)
        if request.dest[0] == "store" and not (ctx.has_store and ctx.store is self.store()):
            return self.run_pipeline(self.pipeline(spec), request, observer=ctx.observer)
        report: ConvertReport = self.pipeline(spec).run_in(request, ctx)
        _exported(ctx.emit, report)
        return report


def _ignore(_event: Event) -> None:
    pass


def _exported(emit: Observer, report: ConvertReport) -> None:
    after = report.after
    emit(
        Event(
            EventKind.EXPORTED,
            Digest.parse(after.digest),
            MediaType(after.media_type),
            after.size,
            report.destination,
        )
    )


def convert(
    source: str | TransportRef,
    destination: str | TransportRef,
    *,
    compression: str | None = None,
    level: int | None = None,
    zstd_threads: int = ZSTD_THREADS,
    oci: bool = False,
    recipients: Sequence[Any] = (),
    encrypt_layers: Sequence[int] | None = None,
    decrypt_keys: Sequence[Any] = (),
    platforms: Sequence[Platform | str] = (),
    jobs: int = DEFAULT_JOBS,
    seekable: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    estargz_level: int | None = None,
    prioritized: Sequence[str] = (),
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
    options: TransportOptions | None = None,
    converter: Converter | None = None,
) -> ConvertReport:
    """Convert one image; see the module docstring and :class:`ConvertOptions`.

    ``converter`` reuses connections and results across calls (its ``options``, store
    and processors then apply, and ``store``/``root``/``options`` here are ignored).
    """
    spec = ConvertOptions(
        compression=compression,
        level=level,
        zstd_threads=zstd_threads,
        oci=oci,
        recipients=recipients,
        encrypt_layers=encrypt_layers,
        decrypt_keys=decrypt_keys,
        platforms=platforms,
        jobs=jobs,
        seekable=seekable,
        chunk_size=chunk_size,
        estargz_level=estargz_level,
        prioritized=prioritized,
    )
    if converter is not None:
        return converter.convert(source, destination, spec, observer=observer)
    with Converter(options=options, store=store, root=root) as c:
        return c.convert(source, destination, spec, observer=observer)
