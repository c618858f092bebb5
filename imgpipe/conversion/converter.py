"""The :class:`Converter`: one conversion's pieces put together, connections kept across calls.

One call: locate both ends and open them, then the stages Resolve (:mod:`.plan`) ->
MapLayers (:mod:`.blobs`) -> Write (:mod:`.documents`: the documents, the root, last
the tag). A failure into the store removes what only this conversion wrote (the
scheduler's rollback, once the lease is released).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import NotFound
from imgpipe.formats.mediatype import MediaType
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef
from imgpipe.pipeline import Event, EventKind, Observer, Root, rollback
from imgpipe.processors import ZSTD_THREADS
from imgpipe.transports import TransportOptions, open_sink, open_source

from .blobs import CacheEntry, MapLayers
from .destinations import Destination, RegistryDestination, SinkDestination, StoreDestination
from .documents import Write
from .flow import Emits, Ends
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


def _ignore(_event: Event) -> None:
    pass


class _Events:
    """A stage context of an observer only (see flow.Emits): a conversion between
    registries has no store, so no pipeline Context."""

    def __init__(self, observer: Observer) -> None:
        self.emit = observer


def _run(stages: tuple[Resolve, MapLayers, Write], ends: Ends, ctx: Emits) -> ConvertReport:
    """Convert = Resolve -> MapLayers -> Write, each stage's output the next one's input."""
    resolve, map_layers, write = stages
    return write.run(map_layers.run(resolve.run(ends, ctx), ctx), ctx)


class Converter:
    """Converts images, reusing registry connections and conversion results across calls.

    ``options`` says how to reach registries (one RegistryClient, created on first use,
    serves every call); ``store`` (or ``root``) is the local store for ``local:`` and
    bare local names, opened only when a conversion involves it (registry to registry
    never creates a root). ``registry`` chooses the stream processors (default:
    configured, entry points, built-ins). Thread-safe for concurrent ``convert`` calls
    as long as they do not write the same destination. Close it (or use ``with``).
    """

    def __init__(
        self,
        *,
        options: TransportOptions | None = None,
        store: Store | None = None,
        root: Root = None,
        registry: ProcessorRegistry | None = None,
    ) -> None:
        self.options = options or TransportOptions()
        self._store = store
        self._own_store = False
        self._root = root
        self._registry = registry
        self._client: RegistryClient | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], CacheEntry] = {}
        self._cache_lock = threading.Lock()

    def __enter__(self) -> Converter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the registry connections and the store if this Converter opened it."""
        if self._client is not None:
            self._client.close()
            self._client = None
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

    def _open_source(self, loc: Location, shown: str, stack: contextlib.ExitStack) -> Source:
        if loc[0] == "store":
            return StoreSource(self.store(), loc[1])
        ref = loc[1]
        if ref.transport == "docker":
            assert ref.reference is not None
            return RegistrySourceEnd(self._registry_client().repository(ref.reference), shown)
        # closed by the caller's stack, through TransportSourceEnd.close
        return TransportSourceEnd(open_source(ref, options=self.options), shown)

    def _open_dest(
        self, loc: Location, shown: str, image_name: str, stack: contextlib.ExitStack
    ) -> Destination:
        if loc[0] == "store":
            store = self.store()
            lease = stack.enter_context(store.db.lease())
            return StoreDestination(store, loc[1], lease)
        ref = loc[1]
        if ref.transport == "docker":
            assert ref.reference is not None
            repo = self._registry_client().repository(ref.reference, push=True)
            return RegistryDestination(repo, ref.reference, shown)
        sink = open_sink(ref, image_name=image_name, options=self.options)
        return SinkDestination(sink, shown)

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
        spec = spec or ConvertOptions()
        emit = observer or _ignore
        started = time.monotonic()
        src_loc = locate(source, source=True, local_exists=self._local_exists)
        dst_loc = locate(destination, source=False, local_exists=self._local_exists)
        shown_src, shown_dst = str(source), str(destination)
        created: list[Digest] = []
        store_dest: StoreDestination | None = None
        try:
            with contextlib.ExitStack() as stack:
                src = self._open_source(src_loc, shown_src, stack)
                stack.callback(src.close)
                root_in = src.root()
                emit(
                    Event(
                        EventKind.RESOLVED,
                        root_in.digest,
                        root_in.media_type,
                        root_in.size,
                        shown_src,
                    )
                )
                image_name = ""  # a layout records no local name for a converted image
                dest = self._open_dest(dst_loc, shown_dst, str(image_name), stack)
                if isinstance(dest, StoreDestination):
                    store_dest = dest
                ends = Ends(src, dest, root_in, (shown_src, shown_dst), started)
                registry = self._processors()
                stages = (
                    Resolve(spec, registry),
                    MapLayers(spec, registry, self._cache, self._cache_lock),
                    Write(),
                )
                ok = False
                try:
                    report = _run(stages, ends, _Events(emit))
                    ok = True
                finally:
                    dest.finish(ok)
                    if store_dest is not None:
                        created = list(store_dest.created)
                root_out = report.after
                emit(
                    Event(
                        EventKind.EXPORTED,
                        Digest.parse(root_out.digest),
                        MediaType(root_out.media_type),
                        root_out.size,
                        shown_dst,
                    )
                )
        except BaseException:
            if created and store_dest is not None:
                # the lease is gone: what only this conversion wrote goes again
                rollback(store_dest.store, created)
            raise
        return report


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
    )
    if converter is not None:
        return converter.convert(source, destination, spec, observer=observer)
    with Converter(options=options, store=store, root=root) as c:
        return c.convert(source, destination, spec, observer=observer)
