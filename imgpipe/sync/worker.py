"""The per-image work, idempotent: :func:`run_item`, what every executor runs.

For one plan item:

1. HEAD the source: its digest S (the conversion then reads ``source@S``, so a tag that
   moves meanwhile cannot mix two images);
2. GET the destination's manifest (404: not there). A *copy* (no conversion options)
   is done when that manifest's digest is S. A conversion is done when the manifest's
   annotations name S (:data:`SOURCE_ANNOTATION`) and this item's fingerprint
   (:data:`FINGERPRINT_ANNOTATION`): skipped, nothing converted or uploaded;
3. else convert, writing those annotations into the destination's root (OCI documents
   only; a Docker-typed result cannot carry them and is converted again next time, its
   blobs found by HEAD, not uploaded). The tag is written last, so a crash leaves none.

The function takes and returns plain data (a :class:`PlanItem`, :class:`WorkerSettings`,
an :class:`ItemResult`): it runs the same in a thread, a process pool or a Dask worker.
Failures are *returned* with their exit code and whether they may pass (Unavailable:
a registry down, 5xx and 429 after the HTTP retries), never raised, so an engine's own
retries (Dask's ``retries=``) never repeat a 404. Each process keeps one Converter per
set of connection options (its connection pool, its token cache, its layer results).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import ImgpipeError, Unavailable
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE
from imgpipe.formats.reference import parse_reference
from imgpipe.remote.client import RegistryClient
from imgpipe.remote.http import read_limited
from imgpipe.remote.options import TransportOptions
from imgpipe.remote.resolve import MANIFEST_ACCEPT
from imgpipe.remote.responses import error_for

from .plan import PlanItem
from .result import ItemResult
from .spec import CONVERT_KEYS

if TYPE_CHECKING:
    from imgpipe.conversion import Converter, ConvertOptions

__all__ = [
    "FINGERPRINT_ANNOTATION",
    "SOURCE_ANNOTATION",
    "WorkerSettings",
    "close_converters",
    "ends_for",
    "registry_client",
    "run_item",
]

#: The source manifest (or index) digest a converted image was made from.
SOURCE_ANNOTATION: Final = "org.imgpipe.source.digest"
#: The fingerprint of the conversion options it was made with (see :mod:`.plan`).
FINGERPRINT_ANNOTATION: Final = "org.imgpipe.convert.fingerprint"


def _unclassified(error: BaseException) -> int:
    return 1


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker converts: connection options, layers at once, whether to skip
    finished images (``skip=False`` converts everything again), and ``classify``, the
    exit code of an error (the CLI passes its table; a module-level function, so it
    pickles)."""

    options: TransportOptions = field(default_factory=TransportOptions)
    jobs: int | None = None  # layers at once per image (None: the conversion's default)
    skip: bool = True
    classify: Callable[[BaseException], int] = _unclassified
    #: (host, K): on a Dask worker, at most K items touching host at once on the whole
    #: cluster, whoever submitted them (a ``distributed.Semaphore`` per host, held by
    #: the scheduler: several drivers, or shards, sharing one cluster share the bound)
    cluster_limits: tuple[tuple[str, int], ...] = ()


class _Ends:
    """One process's registry client and Converter for one set of connection options:
    kept for the process's life, so the pool, the tokens and the layer results serve
    every item that lands there. The Converter (and the conversion code) is loaded only
    when an item needs converting: a no-op re-run only checks."""

    def __init__(self, options: TransportOptions) -> None:
        self.options = options
        self.client = RegistryClient(options)
        self._converter: Converter | None = None
        self._lock = threading.Lock()

    def converter(self) -> Converter:
        with self._lock:
            if self._converter is None:
                from imgpipe.conversion import Converter  # noqa: PLC0415 (see above)

                self._converter = Converter(options=self.options, client=self.client)
            return self._converter

    def close(self) -> None:
        if self._converter is not None:
            self._converter.close()
        self.client.close()


_ends: dict[TransportOptions, _Ends] = {}
_ends_lock = threading.Lock()


def ends_for(options: TransportOptions) -> _Ends:
    """This process's client and Converter for ``options`` (made on first use)."""
    with _ends_lock:
        ends = _ends.get(options)
        if ends is None:
            ends = _ends[options] = _Ends(options)
        return ends


def registry_client(options: TransportOptions) -> RegistryClient:
    """This process's registry client for ``options`` (planning lists with it)."""
    return ends_for(options).client


def close_converters() -> None:
    """Close this process's clients and Converters (a driver that ran items itself)."""
    with _ends_lock:
        for ends in _ends.values():
            ends.close()
        _ends.clear()


def run_item(item: PlanItem, settings: WorkerSettings) -> ItemResult:
    """Convert one plan item unless it is done already; see the module docstring."""
    started = time.monotonic()
    try:
        with _host_leases(item, settings.cluster_limits):
            return _run(item, settings, started)
    except ImgpipeError as e:
        message = " ".join(str(e).split()) or type(e).__name__
        return ItemResult.failure(
            item,
            message,
            settings.classify(e),
            retryable=isinstance(e, Unavailable),
            seconds=time.monotonic() - started,
        )


@contextlib.contextmanager
def _host_leases(item: PlanItem, limits: tuple[tuple[str, int], ...]) -> Iterator[None]:
    hosts = {parse_reference(item.source).domain, parse_reference(item.target).domain}
    wanted = sorted((h, k) for h, k in limits if h in hosts)  # one order: no deadlock
    if not wanted:
        yield
        return
    # only on a Dask worker, which has it; untyped, so held as Any
    distributed: Any = importlib.import_module("distributed")
    with contextlib.ExitStack() as stack:
        for host, k in wanted:
            stack.enter_context(distributed.Semaphore(max_leases=k, name=f"imgpipe:host:{host}"))
        yield


def convert_options(convert: Mapping[str, Any], **extra: Any) -> ConvertOptions:
    """The ConvertOptions a plan item's ``convert`` mapping means."""
    from imgpipe.conversion import ConvertOptions  # noqa: PLC0415 (see _Ends)

    return ConvertOptions(**{CONVERT_KEYS[k]: v for k, v in convert.items()}, **extra)


def _run(item: PlanItem, settings: WorkerSettings, started: float) -> ItemResult:
    ends = ends_for(settings.options)
    src_ref = parse_reference(item.source)
    source = ends.client.repository(src_ref).resolve()
    copy = not item.convert
    done_at = _destination(ends.client, item, str(source.digest), copy) if settings.skip else ""
    if done_at:
        return ItemResult(
            item.id,
            item.source,
            item.target,
            "skipped",
            item.fingerprint,
            str(source.digest),
            done_at,
            time.monotonic() - started,
        )
    annotations = (
        {}
        if copy
        else {SOURCE_ANNOTATION: str(source.digest), FINGERPRINT_ANNOTATION: item.fingerprint}
    )
    jobs = {"jobs": settings.jobs} if settings.jobs else {}
    spec = convert_options(item.convert, annotations=annotations, **jobs)
    pinned = src_ref.with_digest(source.digest)
    report = ends.converter().convert(
        f"docker://{pinned.name}@{source.digest}", f"docker://{item.target}", spec
    )
    return ItemResult(
        item.id,
        item.source,
        item.target,
        "converted",
        item.fingerprint,
        str(source.digest),
        report.destination_digest,
        time.monotonic() - started,
        totals=report.totals(),
    )


def _destination(client: RegistryClient, item: PlanItem, source_digest: str, copy: bool) -> str:
    """The destination's digest when it already holds this item's result, else ""."""
    ref = parse_reference(item.target)
    repo = client.repository(ref, push=True)
    ep = repo.endpoints[-1]
    resp = repo.request("GET", f"manifests/{ref.tag}", ep=ep, headers={"Accept": MANIFEST_ACCEPT})
    if resp.status == 404:
        read_limited(resp, 1 << 16)
        return ""
    if resp.status != 200:
        raise error_for(resp, f"{item.target}: checking the destination")
    raw = read_limited(resp, MAX_DOCUMENT_SIZE)
    digest = str(Digest.from_bytes(raw))
    if copy:
        return digest if digest == source_digest else ""
    try:
        doc = json.loads(raw)
    except ValueError:
        return ""  # not ours to judge: converting again overwrites it
    notes = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(notes, dict):
        return ""
    ours = notes.get(SOURCE_ANNOTATION) == source_digest
    if ours and notes.get(FINGERPRINT_ANNOTATION) == item.fingerprint:
        return digest
    return ""
