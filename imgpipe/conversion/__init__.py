"""Image conversion: recompress, re-type, encrypt and decrypt images, store or registry.

::

    report = imgpipe.convert("docker://reg/app:1", "docker://reg/app:1-zstd", compression="zstd")
    report.destination_digest, report.layers[0].after.digest

    with imgpipe.conversion.Converter(options=TransportOptions()) as c:   # many images,
        for tag in tags:                                               # one connection pool
            c.convert(f"reg/app:{tag}", f"reg/app:{tag}-zstd", ConvertOptions(compression="zstd"))

What a conversion does (containerd's converter and imgcrypt are the models):

* **layers**, each through the processor registry (:mod:`imgpipe.conversion.layers`):
  gzip, zstd or uncompressed (``compression``), encrypted for ``recipients`` (the layers
  ``encrypt_layers`` picks, default all), decrypted with ``decrypt_keys``. A layer
  already in the target form passes through byte for byte, never recompressed. A
  recompressed layer is decoded to its tar on the way, and the tar's digest is checked
  against the config's DiffID before the destination commits the layer;
* **manifests**: new layer descriptors (digest, size, media type; ocicrypt annotations
  added on encrypt and removed on decrypt). The config blob is never rewritten: only
  compression and encryption change, so its DiffIDs stay valid. zstd and encrypted
  layers exist only in OCI manifests, so a Docker manifest that gets one becomes OCI, as
  with ``oci=True`` (Docker -> OCI media types for the manifest, config and layers; the
  config's bytes stay). A manifest whose descriptors did not change keeps its bytes;
* **indexes**: rebuilt for the platforms kept (``platforms``, exact os/arch/variant after
  normalisation; default: every platform the source has; entries without a platform
  are kept), in their order; a Docker list with an OCI child becomes an OCI index.

Sources and destinations: ``docker://REF``, ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``
(and ``docker-archive:FILE`` as a source), ``local:NAME`` for the store, and bare names:

* a bare **source** is the local image of that name when the store has one, else the
  registry reference (``docker://`` forces the registry);
* a bare **destination** is a registry reference when its first component is a host
  (has a ``.`` or ``:``, or is ``localhost``: ``127.0.0.1:5000/app:zstd``), else a local
  name (``app:zstd``); ``local:`` forces the store.

Registry to registry needs no store and no root: each layer streams from the source
through the decoders and encoders into an upload whose digest is named only at the end
(``PUT ?digest=``), ``jobs`` layers at once. Blobs passed through are first looked up
(HEAD) or mounted from the source repository on the same registry; a converted layer
whose result this :class:`Converter` already knows (same source digest, target and
levels) is looked up or mounted too instead of being converted again. The manifests,
the index and last the tag are written only after every blob is in, so a failure never
leaves a tag pointing at half an image (blobs already uploaded stay, untagged, for the
registry's garbage collection).

Reproducibility: the same input and options give the same digests when the encoders
are deterministic, which ours are by default: gzip (zlib-ng, level pinned, fixed header)
and zstd with ``zstd_threads=0``. zstd with worker threads and encryption (a fresh
random key and nonce per layer, by design) are not reproducible.

Errors (exit codes in parentheses): InvalidArgument / InvalidReference (3) for bad
options, MalformedDocument (4), DigestMismatch (8) / SizeMismatch (9) for a corrupt
source (a blob, or a layer whose tar is not what the config says), NotFound (5),
Unauthorized (12) for refused credentials and for encrypted layers without a key that
opens them (NoDecryptionKey), :class:`PushRejected` (13, an Unavailable) when the
destination registry refused or failed the push, Unavailable (13) for an unreachable
source.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal

from imgpipe.formats.config import parse_config
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    DigestMismatch,
    InvalidArgument,
    NotFound,
    SizeMismatch,
    Unavailable,
)
from imgpipe.formats.manifest import Index, Manifest, parse_document
from imgpipe.formats.mediatype import (
    DOCKER_CONFIG,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    MediaType,
)
from imgpipe.formats.platform import Platform, PlatformMatcher
from imgpipe.formats.reference import TransportRef, parse_reference, parse_transport
from imgpipe.metadata.labels import index_child_labels, manifest_child_labels
from imgpipe.pipeline import PROGRESS_INTERVAL, Context, Event, EventKind, Observer
from imgpipe.processors import GZIP_LEVEL, ZSTD_LEVEL, ZSTD_THREADS, ProcessorParams
from imgpipe.transports import TransportOptions, open_sink, open_source

from .ends import (
    Destination,
    PushRejected,
    RegistryDestination,
    RegistrySourceEnd,
    SinkDestination,
    Source,
    StoreDestination,
    StoreSource,
    TransportSourceEnd,
)
from .layers import Compression, LayerKind, LayerPlan, open_converted

if TYPE_CHECKING:
    from imgpipe.processors import ProcessorRegistry
    from imgpipe.remote.client import RegistryClient
    from imgpipe.store import Store

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_JOBS",
    "LAYER_ATTEMPTS",
    "LOCAL_PREFIX",
    "BlobInfo",
    "Convert",
    "ConvertOptions",
    "ConvertReport",
    "Converter",
    "LayerReport",
    "ManifestReport",
    "PushRejected",
    "convert",
]

#: Layers converted at once. Compression is CPU-bound and releases the GIL (zlib-ng,
#: zstd, hashing, AES), so about one per core plus one waiting on the network.
DEFAULT_JOBS: Final = 3
#: The compressions a conversion can ask for; "none" writes uncompressed tars.
COMPRESSIONS: Final = ("gzip", "zstd", "none")
#: Attempts per converted layer when the destination failed mid-upload (5xx, dropped
#: connection): a streamed upload cannot be replayed, so the layer is converted again.
LAYER_ATTEMPTS: Final = 2
#: The prefix that names an image in the local store whatever it looks like.
LOCAL_PREFIX: Final = "local:"

_ENC_ANNOTATION_PREFIX: Final = "org.opencontainers.image.enc."
_TRANSPORT_PREFIXES: Final = ("docker://", "oci:", "oci-archive:", "docker-archive:")

Root = str | os.PathLike[str] | None


# -- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertOptions:
    """What to change. The defaults change nothing (a copy that verifies every blob).

    ``compression``: "gzip", "zstd", "none" (uncompressed) or None (keep each layer's).
    ``level``: for the compression asked (gzip 0-9, default GZIP_LEVEL; zstd up to 22,
    default ZSTD_LEVEL). ``zstd_threads``: zstd workers per layer (0 = in-line, the only
    reproducible mode). ``oci``: Docker media types become OCI. ``recipients``: encrypt for
    these (``"jwe:PUB.pem"`` strings or loaded Recipients); ``encrypt_layers``: the layer
    indexes to encrypt (negative counts from the top; None = all). ``decrypt_keys``:
    ``"FILE[:PASSWORD]"`` strings or loaded DecryptKeys. ``platforms``: keep only these
    manifests of an index (empty = all). ``jobs``: layers converted at once.
    Raises InvalidArgument for values out of range; NotFound / InvalidArgument when a
    key file is missing or unreadable.
    """

    compression: str | None = None
    level: int | None = None
    zstd_threads: int = ZSTD_THREADS
    oci: bool = False
    recipients: Sequence[Any] = ()
    encrypt_layers: Sequence[int] | None = None
    decrypt_keys: Sequence[Any] = ()
    platforms: Sequence[Platform | str] = ()
    jobs: int = DEFAULT_JOBS

    def __post_init__(self) -> None:
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise InvalidArgument(
                f"compression {self.compression!r}: want one of {', '.join(COMPRESSIONS)}"
            )
        if self.level is not None and self.compression not in ("gzip", "zstd"):
            raise InvalidArgument("a compression level needs gzip or zstd compression")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise InvalidArgument(f"jobs must be an integer of at least 1, not {self.jobs!r}")
        if self.encrypt_layers is not None and not self.recipients:
            raise InvalidArgument("encrypt_layers needs recipients to encrypt for")
        set_ = object.__setattr__
        set_(self, "platforms", tuple(_platform(p) for p in self.platforms))
        set_(self, "recipients", tuple(_recipient(r) for r in self.recipients))
        set_(self, "decrypt_keys", tuple(_key(k) for k in self.decrypt_keys))
        if self.encrypt_layers is not None:
            set_(self, "encrypt_layers", tuple(int(i) for i in self.encrypt_layers))
        self.params()  # level and thread checks, once, here

    def params(self) -> ProcessorParams:
        """The processor parameters these options mean."""
        return ProcessorParams(
            decrypt_keys=self.decrypt_keys,
            recipients=self.recipients,
            gzip_level=self.level
            if self.level is not None and self.compression == "gzip"
            else GZIP_LEVEL,
            zstd_level=self.level
            if self.level is not None and self.compression == "zstd"
            else ZSTD_LEVEL,
            zstd_threads=self.zstd_threads,
        )


def _platform(p: Platform | str) -> Platform:
    return Platform.parse(p) if isinstance(p, str) else p


def _recipient(r: Any) -> Any:
    if not isinstance(r, str):
        return r
    from imgpipe.processors.ocicrypt import load_recipient  # noqa: PLC0415 (cryptography)

    return load_recipient(r)


def _key(k: Any) -> Any:
    if not isinstance(k, str):
        return k
    from imgpipe.processors.ocicrypt import load_private_key  # noqa: PLC0415 (cryptography)

    return load_private_key(k)


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A descriptor's essentials, for the report."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def of(cls, desc: Descriptor) -> BlobInfo:
        return cls(str(desc.media_type), str(desc.digest), desc.size)

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


Action = Literal["converted", "copied", "exists", "mounted"]


@dataclass(frozen=True, slots=True)
class LayerReport:
    """One layer of one manifest: before, after, and what was done.

    ``action``: "converted" (through processors), "copied" (bytes unchanged, uploaded),
    "exists" (the destination had it) or "mounted" (from another repository).
    ``diff_id`` is set when the layer was decoded (and then checked against the config).
    """

    manifest: str
    index: int
    before: BlobInfo
    after: BlobInfo
    action: Action
    seconds: float
    diff_id: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {
            "manifest": self.manifest,
            "index": self.index,
            "action": self.action,
            "seconds": round(self.seconds, 6),
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }
        if self.diff_id:
            out["diffID"] = self.diff_id
        return out


@dataclass(frozen=True, slots=True)
class ManifestReport:
    """One image manifest, before and after; ``platform`` from the index entry, if any."""

    platform: str
    before: BlobInfo
    after: BlobInfo

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion did; ``to_json()`` is what ``--report FILE`` writes."""

    source: str
    destination: str
    before: BlobInfo
    after: BlobInfo
    manifests: tuple[ManifestReport, ...]
    layers: tuple[LayerReport, ...]
    seconds: float

    @property
    def source_digest(self) -> str:
        return self.before.digest

    @property
    def destination_digest(self) -> str:
        return self.after.digest

    def totals(self) -> dict[str, Any]:
        """Counts by action, bytes before and after (each blob once), seconds."""
        seen: dict[str, LayerReport] = {}
        for layer in self.layers:
            seen.setdefault(layer.before.digest + layer.after.digest, layer)
        unique = list(seen.values())
        out: dict[str, Any] = {"layers": len(self.layers)}
        for action in ("converted", "copied", "exists", "mounted"):
            out[action] = sum(1 for r in unique if r.action == action)
        out["bytesBefore"] = sum(r.before.size for r in unique)
        out["bytesAfter"] = sum(r.after.size for r in unique)
        out["layerSeconds"] = round(sum(r.seconds for r in unique), 6)
        out["seconds"] = round(self.seconds, 6)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "sourceDigest": self.before.digest,
            "destinationDigest": self.after.digest,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "manifests": [m.to_json() for m in self.manifests],
            "layers": [layer.to_json() for layer in self.layers],
            "totals": self.totals(),
        }


# -- where things are ------------------------------------------------------------------------


def _has_host(text: str) -> bool:
    first, sep, _ = text.partition("/")
    return bool(sep) and (any(c in first for c in ".:") or first == "localhost")


Location = tuple[Literal["store"], str] | tuple[Literal["transport"], TransportRef]


def locate(
    text: str | TransportRef, *, source: bool, local_exists: Callable[[str], bool]
) -> Location:
    """Where ``text`` points: ``("store", name)`` or ``("transport", TransportRef)``.

    The rules are in the module docstring. Raises InvalidReference for bad syntax.
    """
    if isinstance(text, TransportRef):
        return ("transport", text)
    if text.startswith(LOCAL_PREFIX):
        return ("store", str(parse_reference(text.removeprefix(LOCAL_PREFIX))))
    if text.startswith(_TRANSPORT_PREFIXES):
        return ("transport", parse_transport(text))
    ref = parse_reference(text)
    if source:
        if local_exists(str(ref)):
            return ("store", str(ref))
        return ("transport", TransportRef("docker", reference=ref))
    if _has_host(text):
        return ("transport", TransportRef("docker", reference=ref))
    return ("store", str(ref))


# -- the plan of one conversion ----------------------------------------------------------------


@dataclass
class _ManifestNode:
    desc: Descriptor
    manifest: Manifest
    oci: bool
    config_type: MediaType
    layers: list[LayerPlan]
    out: Descriptor | None = None
    raw: bytes = b""


@dataclass
class _IndexNode:
    desc: Descriptor
    index: Index
    children: list[tuple[Descriptor, _ManifestNode | _IndexNode]]
    oci: bool = False
    out: Descriptor | None = None
    raw: bytes = b""


_Node = _ManifestNode | _IndexNode


@dataclass
class _Result:
    desc: Descriptor
    action: Action
    seconds: float
    diff_id: str = ""


@dataclass
class _CacheEntry:
    digest: Digest
    size: int
    diff_id: str
    places: set[tuple[str, str]] = field(default_factory=set)


def _blob_key(plan: LayerPlan) -> tuple[Any, ...]:
    return (
        str(plan.source.digest),
        plan.target_type.base,
        plan.decrypt,
        plan.recompress,
        plan.compression,
        plan.encrypt,
    )


def _json_bytes(obj: Any) -> bytes:
    # Compact, key order as read: a function of the input, so conversions reproduce.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _merge_desc(orig: Mapping[str, Any], new: Descriptor) -> dict[str, Any]:
    """The original descriptor object with the new one's fields (unknown fields kept)."""
    out = {k: v for k, v in orig.items() if k != "annotations"}
    out.update(new.to_json())
    return out


class _Progress(io.RawIOBase):
    """Source bytes read, as BLOB_PROGRESS events (no ``annotations``: it is the source)."""

    def __init__(self, raw: BinaryIO, emit: Observer, desc: Descriptor) -> None:
        super().__init__()
        self._raw = raw
        self._emit = emit
        self._desc = desc
        self._offset = 0
        self._last = 0.0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = bytes(self._raw.read(-1 if size is None else size))
        if data:
            self._offset += len(data)
            now = time.monotonic()
            if now - self._last >= PROGRESS_INTERVAL or self._offset >= self._desc.size:
                self._last = now
                d = self._desc
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
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                super().close()


class _Run:
    """One conversion: plan the documents, convert the blobs, write documents, tag."""

    def __init__(
        self,
        *,
        source: Source,
        dest: Destination,
        spec: ConvertOptions,
        registry: ProcessorRegistry,
        observer: Observer,
        cache: dict[tuple[str, ...], _CacheEntry],
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
        self.results: dict[tuple[Any, ...], _Result] = {}
        self.layer_reports: list[LayerReport] = []
        self.manifest_reports: list[ManifestReport] = []

    # planning ---------------------------------------------------------------------------

    def plan(self, desc: Descriptor, depth: int = 0) -> _Node:
        if depth > 8:
            raise InvalidArgument(f"image index nesting deeper than 8 at {desc.digest}")
        doc = parse_document(self.source.document(desc), desc.media_type)
        if isinstance(doc, Manifest):
            return self._plan_manifest(desc, doc)
        children: list[tuple[Descriptor, _Node]] = []
        for entry in doc.manifests:
            if not (entry.media_type.is_index() or entry.media_type.is_manifest()):
                continue  # an artifact blob listed in an index: not ours to convert
            if not self.source.present(entry):
                continue  # a platform the store never pulled
            if self.spec.platforms and entry.platform is not None:
                wanted = self.spec.platforms
                assert all(isinstance(p, Platform) for p in wanted)
                if not any(
                    PlatformMatcher(p, strict=True).match(entry.platform)  # type: ignore[arg-type]
                    for p in wanted
                ):
                    continue
            children.append((entry, self.plan(entry, depth + 1)))
        if not children:
            want = ", ".join(str(p) for p in self.spec.platforms) or "any"
            raise NotFound(f"{self.source.name}: index {desc.digest} has no manifest for {want}")
        oci = self.spec.oci or not doc.media_type.is_docker() or any(n.oci for _, n in children)
        return _IndexNode(desc, doc, children, oci)

    def _plan_manifest(self, desc: Descriptor, m: Manifest) -> _ManifestNode:
        spec = self.spec
        n = len(m.layers)
        selected: set[int] | None = None
        if spec.encrypt_layers is not None:
            selected = set()
            for i in spec.encrypt_layers:
                if not -n <= i < n:
                    raise InvalidArgument(f"encrypt layer {i}: manifest {m.digest} has {n} layers")
                selected.add(i % n)
        kinds: list[tuple[LayerKind | None, LayerKind | None, bool, bool]] = []
        for i, layer in enumerate(m.layers):
            kinds.append(self._layer_kind(i, layer, m, selected))
        oci = (
            spec.oci
            or not m.media_type.is_docker()
            or any(out is not None and out.needs_oci() for _, out, _, _ in kinds)
        )
        need_diff_ids = any(
            k_in is not None and k_out is not None and k_in.compression != k_out.compression
            for k_in, k_out, _, _ in kinds
        )
        diff_ids: tuple[Digest, ...] = ()
        if need_diff_ids and m.config.media_type.is_config():
            config = parse_config(self.source.document(m.config))
            if len(config.diff_ids) != n:
                raise InvalidArgument(
                    f"{self.source.name}: manifest {m.digest} has {n} layers, its config "
                    f"{len(config.diff_ids)} DiffIDs"
                )
            diff_ids = config.diff_ids
        plans = []
        for i, (layer, (k_in, k_out, decrypt, encrypt)) in enumerate(
            zip(m.layers, kinds, strict=True)
        ):
            if k_in is None or k_out is None:
                plans.append(LayerPlan(layer, layer.media_type))
                continue
            recompress = k_in.compression != k_out.compression
            plans.append(
                LayerPlan(
                    layer,
                    k_out.media_type(oci=oci),
                    decrypt=decrypt,
                    recompress=recompress,
                    compression=k_out.compression,
                    encrypt=encrypt,
                    diff_id=diff_ids[i] if recompress and diff_ids else None,
                )
            )
        config_type = m.config.media_type
        if oci and config_type.base == DOCKER_CONFIG:
            config_type = OCI_CONFIG
        return _ManifestNode(desc, m, oci, config_type, plans)

    def _layer_kind(
        self, i: int, layer: Descriptor, m: Manifest, selected: set[int] | None
    ) -> tuple[LayerKind | None, LayerKind | None, bool, bool]:
        """(kind in, kind out, decrypt, encrypt) of layer ``i``; out None = untouched."""
        spec = self.spec
        k_in = LayerKind.parse(layer.media_type)
        if k_in is None:
            return None, None, False, False
        want_enc = bool(spec.recipients) and (selected is None or i in selected)
        comp: Compression = k_in.compression
        if spec.compression is not None:
            comp = "" if spec.compression == "none" else spec.compression  # type: ignore[assignment]
        decrypt = False
        if k_in.encrypted:
            if spec.decrypt_keys:
                from imgpipe.processors.ocicrypt import check_authorization  # noqa: PLC0415

                # unwrap only, before any byte moves: a wrong key fails fast
                check_authorization(layer.annotations, keys=spec.decrypt_keys)
                decrypt = True
            elif want_enc or comp != k_in.compression:
                from imgpipe.processors.ocicrypt import NoDecryptionKey  # noqa: PLC0415

                why = "re-encrypt" if want_enc else "recompress"
                raise NoDecryptionKey(
                    f"layer {i} ({layer.digest}) of manifest {m.digest} is encrypted: "
                    f"give a decryption key to {why} it"
                )
            else:
                return k_in, k_in, False, False  # stays as it is
        encrypt = want_enc
        out = LayerKind(
            k_in.family, k_in.nondistributable, comp, encrypt or (k_in.encrypted and not decrypt)
        )
        return k_in, out, decrypt, encrypt

    # blobs ------------------------------------------------------------------------------

    def tasks(self, node: _Node) -> Iterator[tuple[tuple[Any, ...], LayerPlan]]:
        if isinstance(node, _IndexNode):
            for _, child in node.children:
                yield from self.tasks(child)
            return
        cfg = node.manifest.config
        yield ("config", str(cfg.digest), node.config_type.base), LayerPlan(cfg, node.config_type)
        for plan in node.layers:
            yield _blob_key(plan), plan

    def run_blob(self, plan: LayerPlan) -> _Result:
        """Copy or convert one blob into the destination (or find it there)."""
        try:
            return self._run_blob(plan)
        except (DigestMismatch, SizeMismatch) as e:
            if self.source.name in str(e):
                raise
            # the verifying reader knows bytes, not where they came from: say it
            where = f"{self.source.name}: blob {plan.source.digest}: {e}"
            if isinstance(e, DigestMismatch):
                raise DigestMismatch(where, expected=e.expected, actual=e.actual) from None
            raise SizeMismatch(where, expected=e.expected, actual=e.actual) from None

    def _run_blob(self, plan: LayerPlan) -> _Result:
        start = time.monotonic()
        src = plan.source
        emit = self.emit
        if plan.passthrough:
            out = replace(src, media_type=plan.target_type)
            if self.dest.has_blob(out):
                emit(
                    Event(
                        EventKind.BLOB_EXISTS,
                        out.digest,
                        out.media_type,
                        out.size,
                        "already exists",
                    )
                )
                return _Result(out, "exists", time.monotonic() - start)
            origin = self.dest.mount_blob(out, self.source.registry_repo())
            if origin:
                emit(
                    Event(
                        EventKind.BLOB_EXISTS,
                        out.digest,
                        out.media_type,
                        out.size,
                        f"mounted from {origin}",
                    )
                )
                return _Result(out, "mounted", time.monotonic() - start)
            emit(Event(EventKind.BLOB_START, src.digest, src.media_type, src.size, "copying"))
            self.dest.copy_blob(out, _progress(self.source.open_blob(src), emit, src))
            emit(Event(EventKind.BLOB_DONE, out.digest, out.media_type, out.size, "done"))
            return _Result(out, "copied", time.monotonic() - start)
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
                if self.dest.has_blob(out):
                    emit(
                        Event(
                            EventKind.BLOB_EXISTS,
                            out.digest,
                            out.media_type,
                            out.size,
                            "already exists",
                        )
                    )
                    return _Result(out, "exists", time.monotonic() - start, hit.diff_id)
                for place in sorted(hit.places):
                    origin = self.dest.mount_blob(out, place)
                    if origin:
                        detail = f"mounted from {origin}"
                        emit(
                            Event(
                                EventKind.BLOB_EXISTS, out.digest, out.media_type, out.size, detail
                            )
                        )
                        return _Result(out, "mounted", time.monotonic() - start, hit.diff_id)
        emit(Event(EventKind.BLOB_START, src.digest, src.media_type, src.size, "converting"))
        for attempt in range(LAYER_ATTEMPTS):
            stream = open_converted(
                _progress(self.source.open_blob(src), emit, src),
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
                entry = self.cache.setdefault(key, _CacheEntry(digest, size, str(diff_id or "")))
                if isinstance(self.dest, RegistryDestination):
                    entry.places.add((self.dest.ref.domain, self.dest.ref.path))
        emit(Event(EventKind.BLOB_DONE, out.digest, out.media_type, out.size, "done"))
        return _Result(out, "converted", time.monotonic() - start, str(diff_id or ""))

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

    def run_blobs(self, root: _Node) -> None:
        todo: dict[tuple[Any, ...], LayerPlan] = {}
        for key, plan in self.tasks(root):
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
        futures: dict[Future[_Result], tuple[Any, ...]] = {}
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

    # documents --------------------------------------------------------------------------

    def write_documents(self, node: _Node) -> Descriptor:
        """Write ``node``'s documents children first; its new descriptor."""
        if isinstance(node, _ManifestNode):
            return self._write_manifest(node)
        entries: list[Descriptor] = []
        for entry, child in node.children:
            out = self.write_documents(child)
            entries.append(
                replace(entry, media_type=out.media_type, digest=out.digest, size=out.size)
            )
        idx = node.index
        media_type = OCI_INDEX if node.oci else idx.media_type
        kept = [e for e, _ in node.children]
        unchanged = media_type == idx.media_type and entries == list(idx.manifests)
        if unchanged and kept == list(idx.manifests):
            raw = idx.raw
        else:
            obj = json.loads(idx.raw)
            originals = {
                str(d.digest): o for d, o in zip(idx.manifests, obj["manifests"], strict=True)
            }
            obj["manifests"] = [
                _merge_desc(originals[str(old.digest)], new)
                for (old, _), new in zip(node.children, entries, strict=True)
            ]
            if "mediaType" in obj or media_type != idx.media_type:
                obj["mediaType"] = str(media_type)
            raw = _json_bytes(obj)
        out = Descriptor(media_type=media_type, digest=Digest.from_bytes(raw), size=len(raw))
        self.dest.write_document(out, raw, index_child_labels(entries))
        node.out, node.raw = out, raw
        return out

    def _write_manifest(self, node: _ManifestNode) -> Descriptor:
        m = node.manifest
        cfg_result = self.results[("config", str(m.config.digest), node.config_type.base)]
        config = replace(m.config, media_type=node.config_type)
        layers: list[Descriptor] = []
        for i, plan in enumerate(node.layers):
            res = self.results[_blob_key(plan)]
            layers.append(res.desc)
            self.layer_reports.append(
                LayerReport(
                    manifest=str(m.digest),
                    index=i,
                    before=BlobInfo.of(plan.source),
                    after=BlobInfo.of(res.desc),
                    action=res.action,
                    seconds=res.seconds,
                    diff_id=res.diff_id,
                )
            )
        del cfg_result  # the config is the same blob; the lookup asserts it was written
        media_type = OCI_MANIFEST if node.oci else m.media_type
        unchanged = media_type == m.media_type and config == m.config and layers == list(m.layers)
        if unchanged:
            raw = m.raw
        else:
            obj = json.loads(m.raw)
            obj["mediaType"] = str(media_type)
            obj["config"] = _merge_desc(obj["config"], config)
            obj["layers"] = [
                _merge_desc(o, new) for o, new in zip(obj["layers"], layers, strict=True)
            ]
            raw = _json_bytes(obj)
        out = Descriptor(media_type=media_type, digest=Digest.from_bytes(raw), size=len(raw))
        self.dest.write_document(out, raw, manifest_child_labels(config, layers))
        node.out, node.raw = out, raw
        platform = node.desc.platform
        self.manifest_reports.append(
            ManifestReport(
                str(platform) if platform is not None else "",
                BlobInfo.of(node.desc),
                BlobInfo.of(out),
            )
        )
        return out


def _progress(raw: BinaryIO, emit: Observer, desc: Descriptor) -> BinaryIO:
    return _Progress(raw, emit, desc)  # type: ignore[return-value]


def _ignore(_event: Event) -> None:
    pass


# -- the Converter ---------------------------------------------------------------------------


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
        self._cache: dict[tuple[str, ...], _CacheEntry] = {}
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
                run = _Run(
                    source=src,
                    dest=dest,
                    spec=spec,
                    registry=self._processors(),
                    observer=emit,
                    cache=self._cache,
                    cache_lock=self._cache_lock,
                )
                ok = False
                try:
                    tree = run.plan(root_in)
                    run.run_blobs(tree)
                    root_out = run.write_documents(tree)
                    dest.write_root(root_out)
                    ok = True
                finally:
                    dest.finish(ok)
                    if store_dest is not None:
                        created = list(store_dest.created)
                emit(
                    Event(
                        EventKind.EXPORTED,
                        root_out.digest,
                        root_out.media_type,
                        root_out.size,
                        shown_dst,
                    )
                )
        except BaseException:
            if created and store_dest is not None:
                from imgpipe.metadata.gc import collect  # noqa: PLC0415

                # the lease is gone: what only this conversion wrote goes again
                collect(store_dest.store.db, store_dest.store.content, only=set(created))
            raise
        return ConvertReport(
            source=shown_src,
            destination=shown_dst,
            before=BlobInfo.of(root_in),
            after=BlobInfo.of(root_out),
            manifests=tuple(run.manifest_reports),
            layers=tuple(run.layer_reports),
            seconds=time.monotonic() - started,
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


class Convert:
    """The conversion as a pipeline stage: ``run(source, ctx) -> ConvertReport``.

    The source is a location string or TransportRef; the context's store serves the
    local names and its observer gets the events. Pass a ``converter`` to share
    connections with other stages or calls.
    """

    name = "convert"

    def __init__(
        self,
        destination: str | TransportRef,
        spec: ConvertOptions | None = None,
        *,
        options: TransportOptions | None = None,
        converter: Converter | None = None,
    ) -> None:
        self.destination = destination
        self.spec = spec or ConvertOptions()
        self.options = options
        self.converter = converter

    def run(self, item: str | TransportRef, ctx: Context) -> ConvertReport:
        if self.converter is not None:
            return self.converter.convert(item, self.destination, self.spec, observer=ctx.observer)
        with Converter(options=self.options, store=ctx.store) as c:
            return c.convert(item, self.destination, self.spec, observer=ctx.observer)
