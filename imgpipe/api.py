"""The high-level functions: thin compositions of stages, what the CLI calls.

Each function takes ``store=`` (an open :class:`Store`, reused across calls by a script
that does many things) or ``root=`` (opened and closed for the call). Progress goes to
``observer``; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, NamedTuple

from imgpipe.formats._record import FrozenValue
from imgpipe.formats.errors import ImgpipeError, NotFound
from imgpipe.pipeline.context import Root, opened_store

# What each function needs beyond the store is imported in it: `imgpipe images` and
# `inspect` load no transport, registry client or garbage collector, `gc` no image model.
if TYPE_CHECKING:
    from imgpipe.content import Info, IngestStatus, VerifyProblem
    from imgpipe.events import Observer
    from imgpipe.formats.config import ImageConfig
    from imgpipe.formats.descriptor import Descriptor
    from imgpipe.formats.digest import Digest
    from imgpipe.formats.manifest import Index, Manifest
    from imgpipe.formats.platform import Platform
    from imgpipe.formats.reference import TransportRef
    from imgpipe.lazy.layercaches import CacheInfo as LazyCacheInfo
    from imgpipe.metadata import GCResult, ImageRecord, LeaseRecord
    from imgpipe.store import Store
    from imgpipe.transports import TransportOptions

__all__ = [
    "ImageDetails",
    "IngestDetails",
    "LeaseDetails",
    "ManifestDetails",
    "RemovedImages",
    "SourceDetails",
    "content_caches",
    "content_ingests",
    "content_list",
    "content_remove",
    "content_verify",
    "gc",
    "images",
    "inspect",
    "inspect_source",
    "lease_remove",
    "leases",
    "pull",
    "push",
    "remove_image",
    "remove_images",
    "tag",
]


def _as_transport(ref: str | TransportRef) -> TransportRef:
    from imgpipe.formats.reference import TransportRef, parse_transport  # noqa: PLC0415

    return ref if isinstance(ref, TransportRef) else parse_transport(ref)


def pull(
    source: str | TransportRef,
    *,
    name: str | None = None,
    platform: str | Platform | None = None,
    all_platforms: bool = False,
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
    options: TransportOptions | None = None,
) -> ImageRecord:
    """Import an image into the store, verifying every blob, and name it.

    ``source`` is a transport string (``oci:DIR[:TAG]``, ``oci-archive:``,
    ``docker-archive:``, ``docker://REF`` or a bare registry reference). ``platform``
    picks one manifest of an index (default: this host's); ``all_platforms`` keeps them
    all. ``options`` says how to reach registries and how many blobs move at once.
    Raises NotFound, DigestMismatch, SizeMismatch, MalformedDocument, Unsupported
    (schema 1), ResourceLimit, and for registries Unauthorized and Unavailable; on any
    error nothing is named, and what was fetched (blobs, and a partly downloaded blob as
    a resumable ingest) stays under the run's expiring lease for the next attempt.
    Ctrl-C raises :class:`~imgpipe.errors.Interrupted`, saying what was kept.
    """
    from imgpipe.formats.platform import Platform  # noqa: PLC0415
    from imgpipe.pipeline.pipeline import Pipeline  # noqa: PLC0415

    ref = _as_transport(source)
    plat = Platform.parse(platform) if isinstance(platform, str) else platform
    pipeline = Pipeline.pull(name=name, platform=plat, all_platforms=all_platforms, options=options)
    with opened_store(store, root) as s:
        rec: ImageRecord = pipeline.run(ref, store=s, observer=observer)
        return rec


def push(
    name: str,
    destination: str | TransportRef | None = None,
    *,
    store: Store | None = None,
    root: Root = None,
    observer: Observer | None = None,
    options: TransportOptions | None = None,
) -> Descriptor:
    """Write the image ``name`` to ``destination``; return the root descriptor written.

    ``destination`` is ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, or a registry
    reference (``docker://`` optional; by tag, or by digest, which must then be the
    image's); None (``docker push REF``) is the registry the name itself points at
    (``127.0.0.1:5000/app:2`` goes to that registry's ``app:2``). Blobs the registry has
    are skipped, blobs pulled from another repository of the same registry are mounted,
    the rest uploaded (``options.max_concurrent`` at once). Raises NotFound (no such
    image), Unauthorized, Unavailable, DigestMismatch.
    """
    from imgpipe.pipeline.names import normalize_name  # noqa: PLC0415
    from imgpipe.pipeline.pipeline import Pipeline  # noqa: PLC0415

    local = normalize_name(name)
    ref = _as_transport(destination if destination is not None else "docker://" + local)
    with opened_store(store, root) as s:
        out: Descriptor = Pipeline.export(ref, image_name=local, options=options).run(
            local, store=s, observer=observer
        )
        return out


def images(*, store: Store | None = None, root: Root = None) -> list[ImageRecord]:
    """Every named image, sorted by name."""
    with opened_store(store, root) as s:
        return s.db.list_images()


# A NamedTuple and hand-written value classes, not frozen dataclasses: this module is on
# every verb's path (pull, images, inspect), ~1.5 ms less each to define.
class ManifestDetails(NamedTuple):
    """One manifest of an image, with its config parsed."""

    descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig | None  # None when the config blob is not in the store
    platform: Platform | None


class _Manifests(FrozenValue):
    """The platform choice over an inspected image's manifests."""

    __slots__ = ()
    if TYPE_CHECKING:  # a field of each subclass (declared there, in its place)
        manifests: tuple[ManifestDetails, ...]

    def manifest_for(self, platform: str | Platform | None = None) -> ManifestDetails:
        """The manifest unpack and run would use for ``platform`` (default: this host;
        the only one, if there is one): NotFound naming the platforms there are."""
        from imgpipe.formats.platform import Platform  # noqa: PLC0415
        from imgpipe.image import select  # noqa: PLC0415 (only --config asks)

        want = Platform.parse(platform) if isinstance(platform, str) else platform
        found = select.pick(self.manifests, want, lambda m: m.platform)
        if found is None:
            have = ", ".join(str(m.platform) for m in self.manifests if m.platform) or "none"
            raise NotFound(f"no manifest for platform {want or 'of this host'}; platforms: {have}")
        return found


class ImageDetails(_Manifests):
    """What ``imgpipe inspect`` shows."""

    __slots__ = ("index", "manifests", "record")
    record: ImageRecord
    index: Index | None
    manifests: tuple[ManifestDetails, ...]

    def __init__(
        self, record: ImageRecord, index: Index | None, manifests: tuple[ManifestDetails, ...]
    ) -> None:
        self._set(record=record, index=index, manifests=manifests)


def inspect(name: str, *, store: Store | None = None, root: Root = None) -> ImageDetails:
    """The structure of a stored image: index, manifests present, configs, layers.

    ``name`` is a name, a digest or a unique prefix of one (the ID ``images`` shows; see
    :mod:`imgpipe.pipeline.lookup`): NotFound, or InvalidArgument naming the candidates
    of an ambiguous prefix.
    """
    from imgpipe.formats.manifest import Index, Manifest  # noqa: PLC0415
    from imgpipe.image import read_config  # noqa: PLC0415
    from imgpipe.pipeline.context import Context  # noqa: PLC0415
    from imgpipe.pipeline.load import LoadImage  # noqa: PLC0415
    from imgpipe.pipeline.lookup import find_images  # noqa: PLC0415

    with opened_store(store, root) as s:
        rec = find_images(s.db, name)[0]
        local = rec.name
        ctx = Context(s)
        plan = LoadImage().run(local, ctx)
        index = plan.documents.get(rec.target.digest)
        details = []
        for desc in plan.manifests:
            doc = plan.documents[desc.digest]
            assert isinstance(doc, Manifest)
            config = None
            if s.content.exists(doc.config.digest) and doc.config.media_type.is_config():
                config = read_config(s.content, desc, doc)  # checked as pull checks it
            plat = desc.platform or (config.platform() if config else None)
            details.append(ManifestDetails(desc, doc, config, plat))
        return ImageDetails(rec, index if isinstance(index, Index) else None, tuple(details))


class SourceDetails(_Manifests):
    """What ``imgpipe inspect docker://REF`` (or ``oci:DIR:TAG``...) shows, as
    ``skopeo inspect`` does: the image where it lives, nothing stored.

    ``raw`` is the root document (index or manifest) exactly as served; ``manifests``
    every manifest an index lists, configs read.
    """

    __slots__ = ("index", "manifests", "raw", "source", "target")
    source: str
    target: Descriptor
    raw: bytes
    index: Index | None
    manifests: tuple[ManifestDetails, ...]

    def __init__(
        self,
        source: str,
        target: Descriptor,
        raw: bytes,
        index: Index | None,
        manifests: tuple[ManifestDetails, ...],
    ) -> None:
        self._set(source=source, target=target, raw=raw, index=index, manifests=manifests)


def inspect_source(
    source: str | TransportRef, *, options: TransportOptions | None = None
) -> SourceDetails:
    """Read an image's documents from a transport (``docker://REF``, ``oci:DIR[:TAG]``,
    ``oci-archive:``, ``docker-archive:``) without storing anything: the root document,
    every manifest it reaches and their configs, each verified against its descriptor.
    Layers are not read. Raises what :func:`pull` raises for those documents.
    """
    from imgpipe.formats.manifest import Index  # noqa: PLC0415
    from imgpipe.image.lazy import BlobIndex, load  # noqa: PLC0415
    from imgpipe.transports import open_source  # noqa: PLC0415

    ref = _as_transport(source)
    with open_source(ref, options=options) as src:
        top = load(src, src.resolve())
        images = top.manifests() if isinstance(top, BlobIndex) else (top,)
        details = []
        for img in images:
            config = img.config() if img.manifest.config.media_type.is_config() else None
            details.append(ManifestDetails(img.descriptor, img.manifest, config, img.platform()))
        doc = top.index if isinstance(top, BlobIndex) else top.manifest
        return SourceDetails(
            str(source),
            top.descriptor,
            doc.raw,
            doc if isinstance(doc, Index) else None,
            tuple(details),
        )


def tag(source: str, target: str, *, store: Store | None = None, root: Root = None) -> ImageRecord:
    """Give the image ``source`` a second name ``target`` (both normalised)."""
    from imgpipe.pipeline.names import normalize_name  # noqa: PLC0415

    with opened_store(store, root) as s:
        rec = s.db.get_image(normalize_name(source))
        return s.db.put_image(normalize_name(target), rec.target, rec.labels)


def remove_image(
    name: str, *, prune: bool = True, store: Store | None = None, root: Root = None
) -> GCResult | None:
    """Forget the image ``name``; with ``prune`` (the default) then run a garbage
    collection (:func:`gc`), which removes what no image or live lease holds any more
    (what only this image held, its snapshots included, and anything else already
    unreferenced)."""
    from imgpipe.pipeline.names import normalize_name  # noqa: PLC0415

    with opened_store(store, root) as s:
        s.db.delete_image(normalize_name(name))
        return gc(store=s) if prune else None


# NamedTuples, not frozen dataclasses: ~1 ms less each to define on every verb that calls
# this module (the same equality, hash, repr and immutability).
class RemovedImages(NamedTuple):
    """What :func:`remove_images` did: the names removed, each name or ID it could not
    remove with the reason (NotFound, InvalidArgument, Conflict), and the gc's result."""

    removed: tuple[str, ...]
    failed: tuple[tuple[str, ImgpipeError], ...]
    collected: GCResult | None


def remove_images(
    names: Sequence[str],
    *,
    force: bool = False,
    prune: bool = True,
    store: Store | None = None,
    root: Root = None,
) -> RemovedImages:
    """Forget each image ``names`` gives (names, digests or unique ID prefixes), as
    ``docker rmi A B`` does: the ones found are removed even when others are not; those
    are reported in ``failed``. A digest or ID of an image with several names removes
    them all only with ``force`` (else Conflict, as Docker refuses). With ``prune``, one
    garbage collection at the end (see :func:`remove_image`).
    """
    from imgpipe.formats.errors import Conflict, InvalidArgument  # noqa: PLC0415
    from imgpipe.pipeline.lookup import find_images  # noqa: PLC0415

    removed: list[str] = []
    failed: list[tuple[str, ImgpipeError]] = []
    with opened_store(store, root) as s:
        for text in names:
            try:
                records = find_images(s.db, text)
                if len(records) > 1 and not force:
                    raise Conflict(
                        f"{text!r} is the image of {len(records)} names ("
                        + ", ".join(r.name for r in records)
                        + "): remove them by name, or pass --force to remove them all"
                    )
                for rec in records:
                    if rec.name not in removed:
                        s.db.delete_image(rec.name)
                        removed.append(rec.name)
            except (NotFound, InvalidArgument, Conflict) as e:
                failed.append((text, e))
        collected = gc(store=s) if prune and removed else None
        return RemovedImages(tuple(removed), tuple(failed), collected)


def gc(
    *,
    dry_run: bool = False,
    store: Store | None = None,
    root: Root = None,
    now: float | None = None,
    ingest_expiry: float | None = None,
) -> GCResult:
    """Remove every blob, stale ingest and snapshot no image or live lease reaches.

    Leases past their expiry are deleted first, and what only they held goes with them.
    An ingest (a partial download) goes when no live lease holds it, no writer has it
    open, and it was last written more than ``ingest_expiry`` seconds ago (default: the
    lease expiry, :func:`imgpipe.config.lease_expiry`). ``now`` (POSIX seconds) is the
    time expiries are judged at (a test, or "what would go tomorrow" with ``dry_run``).

    Snapshots: collection deletes the unreached records (``removed_snapshots`` lists them
    as ``(snapshotter, key)``), then each snapshotter with a directory under the root
    deletes the directories no record names any more (a snapshotter that cannot be
    opened here, overlay without root, keeps them until a gc that can).
    """
    with opened_store(store, root) as s:
        return _collect(s, dry_run=dry_run, now=now, ingest_expiry=ingest_expiry)


def _collect(
    s: Store,
    *,
    dry_run: bool = False,
    now: float | None = None,
    ingest_expiry: float | None = None,
    abandoned: Collection[str] = (),
) -> GCResult:
    """One collection of ``s``, then the snapshot directories no record names."""
    from imgpipe.metadata.gc import collect  # noqa: PLC0415

    if ingest_expiry is None:
        from imgpipe.config import lease_expiry  # noqa: PLC0415 (start-up: on use)

        ingest_expiry = lease_expiry()
    caches = None
    if (s.root / "lazy" / "layers").is_dir():
        from imgpipe.lazy.layercaches import LayerCaches  # noqa: PLC0415 (only if there are)

        caches = LayerCaches(s.root)
    result = collect(
        s.db,
        s.content,
        dry_run=dry_run,
        now=now,
        ingest_expiry=ingest_expiry,
        abandoned=abandoned,
        caches=caches,
    )
    if not dry_run and (s.root / "snapshots").is_dir():
        # imported here: snapshotters load ctypes and the applier, which a gc of a
        # store that never unpacked anything does not need
        from imgpipe.snapshot_admin import cleanup_snapshotters  # noqa: PLC0415

        cleanup_snapshotters(s)
    return result


def content_list(
    *, store: Store | None = None, root: Root = None
) -> list[tuple[Info, dict[str, str]]]:
    """Every blob in the content store with its labels, sorted by digest."""
    with opened_store(store, root) as s:
        return sorted(
            ((info, s.db.content_labels(info.digest)) for info in s.content.walk()),
            key=lambda p: str(p[0].digest),
        )


def content_caches(*, store: Store | None = None, root: Root = None) -> list[LazyCacheInfo]:
    """The lazy layer caches (``<root>/lazy/layers/``, ``content ls --lazy``), by digest:
    each layer's bytes on disk and whether a process holds it. ``gc`` removes those of
    layers no image or lease holds."""
    with opened_store(store, root) as s:
        if not (s.root / "lazy" / "layers").is_dir():
            return []
        from imgpipe.lazy.layercaches import LayerCaches  # noqa: PLC0415

        return list(LayerCaches(s.root).walk())


def content_verify(*, store: Store | None = None, root: Root = None) -> list[VerifyProblem]:
    """Re-hash every blob; the ones whose bytes no longer match their name."""
    with opened_store(store, root) as s:
        return list(s.content.verify())


def content_remove(
    digests: list[str], *, store: Store | None = None, root: Root = None
) -> list[Digest]:
    """Remove blobs by digest (NotFound for one that is not there); returns those removed."""
    from imgpipe.formats.digest import Digest  # noqa: PLC0415

    parsed = [Digest.parse(d) for d in digests]
    with opened_store(store, root) as s:
        for d in parsed:
            s.content.delete(d)
        return parsed


class IngestDetails(NamedTuple):
    """A partial download (``imgpipe content ls --ingests``): its status, and the live
    leases that hold it (by its ref or by the blob it is becoming)."""

    status: IngestStatus
    leases: tuple[str, ...]


def content_ingests(*, store: Store | None = None, root: Root = None) -> list[IngestDetails]:
    """Every ingest in progress or left behind, sorted by ref, with the leases holding it."""
    import time  # noqa: PLC0415

    with opened_store(store, root) as s:
        now = time.time()
        holders: dict[tuple[str, str], list[str]] = {}
        for lease in s.db.leases():
            if lease.expires_at is not None and now > lease.expires_at:
                continue  # expired: holds nothing any more
            for kind, key in s.db.lease_resources(lease.id):
                holders.setdefault((kind, key), []).append(lease.id)
        out = []
        for st in sorted(s.content.ingests(), key=lambda i: i.ref):
            ids = holders.get(("ingest", st.ref), [])
            if st.expected is not None:
                ids = ids + holders.get(("content", str(st.expected)), [])
            out.append(IngestDetails(st, tuple(sorted(set(ids)))))
        return out


class LeaseDetails(FrozenValue):
    """A lease (``imgpipe leases ls``): the record, and what it holds by kind."""

    __slots__ = ("record", "resources")
    record: LeaseRecord
    resources: tuple[tuple[str, str], ...]

    def __init__(self, record: LeaseRecord, resources: tuple[tuple[str, str], ...]) -> None:
        self._set(record=record, resources=resources)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.resources if k == kind)


def leases(*, store: Store | None = None, root: Root = None) -> list[LeaseDetails]:
    """Every lease, oldest first (expired ones too, until a ``gc`` deletes them)."""
    with opened_store(store, root) as s:
        return [LeaseDetails(rec, tuple(s.db.lease_resources(rec.id))) for rec in s.db.leases()]


def lease_remove(
    ids: list[str], *, prune: bool = True, store: Store | None = None, root: Root = None
) -> GCResult | None:
    """Delete the leases ``ids`` (NotFound for an unknown one, before any is deleted);
    with ``prune`` (the default) then collect: what only they held goes, their partial
    downloads included however recent (as containerd's ``ctr leases rm --sync``)."""
    with opened_store(store, root) as s:
        held: set[str] = set()
        for lease_id in ids:
            held.update(f"{kind}\0{key}" for kind, key in s.db.lease_resources(lease_id))
        for lease_id in ids:
            s.db.delete_lease(lease_id)
        if not prune:
            return None
        abandoned = [
            i.ref
            for i in s.content.ingests()
            if f"ingest\0{i.ref}" in held or f"content\0{i.expected}" in held
        ]
        return _collect(s, abandoned=abandoned)
