"""The high-level functions: thin compositions of stages, what the CLI calls.

Each function takes ``store=`` (an open :class:`Store`, reused across calls by a script
that does many things) or ``root=`` (opened and closed for the call). Progress goes to
``observer``; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imgpipe.content import Info, VerifyProblem
from imgpipe.formats.config import ImageConfig, parse_config
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import Conflict, ImgpipeError, InvalidArgument, NotFound
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index, Manifest
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef, parse_transport
from imgpipe.image.lazy import BlobIndex, load
from imgpipe.metadata import ImageRecord
from imgpipe.metadata.gc import GCResult, collect
from imgpipe.pipeline import (
    Context,
    LoadImage,
    Observer,
    Pipeline,
    Root,
    normalize_name,
    opened_store,
)
from imgpipe.pipeline.lookup import find_images
from imgpipe.store import Store
from imgpipe.transports import TransportOptions, open_source

__all__ = [
    "ImageDetails",
    "ManifestDetails",
    "RemovedImages",
    "SourceDetails",
    "content_list",
    "content_remove",
    "content_verify",
    "gc",
    "images",
    "inspect",
    "inspect_source",
    "normalize_name",
    "pull",
    "push",
    "remove_image",
    "remove_images",
    "tag",
]


def _as_transport(ref: str | TransportRef) -> TransportRef:
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
    error the store is left as it was (a partly downloaded blob stays as a resumable
    ingest).
    """
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


@dataclass(frozen=True)
class ManifestDetails:
    """One manifest of an image, with its config parsed."""

    descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig | None  # None when the config blob is not in the store
    platform: Platform | None


class _Manifests:
    """The platform choice over an inspected image's manifests."""

    manifests: tuple[ManifestDetails, ...]

    def manifest_for(self, platform: str | Platform | None = None) -> ManifestDetails:
        """The manifest unpack and run would use for ``platform`` (default: this host;
        the only one, if there is one): NotFound naming the platforms there are."""
        from imgpipe.image import select  # noqa: PLC0415 (only --config asks)

        want = Platform.parse(platform) if isinstance(platform, str) else platform
        found = select.pick(self.manifests, want, lambda m: m.platform)
        if found is None:
            have = ", ".join(str(m.platform) for m in self.manifests if m.platform) or "none"
            raise NotFound(f"no manifest for platform {want or 'of this host'}; platforms: {have}")
        return found


@dataclass(frozen=True)
class ImageDetails(_Manifests):
    """What ``imgpipe inspect`` shows."""

    record: ImageRecord
    index: Index | None
    manifests: tuple[ManifestDetails, ...]


def inspect(name: str, *, store: Store | None = None, root: Root = None) -> ImageDetails:
    """The structure of a stored image: index, manifests present, configs, layers.

    ``name`` is a name, a digest or a unique prefix of one (the ID ``images`` shows; see
    :mod:`imgpipe.pipeline.lookup`): NotFound, or InvalidArgument naming the candidates
    of an ambiguous prefix.
    """
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
                config = parse_config(
                    s.content.read_bytes(doc.config.digest, limit=MAX_DOCUMENT_SIZE)
                )
            plat = desc.platform or (config.platform() if config else None)
            details.append(ManifestDetails(desc, doc, config, plat))
        return ImageDetails(rec, index if isinstance(index, Index) else None, tuple(details))


@dataclass(frozen=True)
class SourceDetails(_Manifests):
    """What ``imgpipe inspect docker://REF`` (or ``oci:DIR:TAG``...) shows, as
    ``skopeo inspect`` does: the image where it lives, nothing stored."""

    source: str
    target: Descriptor
    raw: bytes  # the root document (index or manifest) exactly as served
    index: Index | None
    manifests: tuple[ManifestDetails, ...]  # every manifest an index lists, configs read


def inspect_source(
    source: str | TransportRef, *, options: TransportOptions | None = None
) -> SourceDetails:
    """Read an image's documents from a transport (``docker://REF``, ``oci:DIR[:TAG]``,
    ``oci-archive:``, ``docker-archive:``) without storing anything: the root document,
    every manifest it reaches and their configs, each verified against its descriptor.
    Layers are not read. Raises what :func:`pull` raises for those documents.
    """
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
    with opened_store(store, root) as s:
        s.db.delete_image(normalize_name(name))
        return gc(store=s) if prune else None


@dataclass(frozen=True)
class RemovedImages:
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


def gc(*, dry_run: bool = False, store: Store | None = None, root: Root = None) -> GCResult:
    """Remove every blob, stale ingest and snapshot no image or live lease reaches.

    Snapshots: collection deletes the unreached records (``removed_snapshots`` lists them
    as ``(snapshotter, key)``), then each snapshotter with a directory under the root
    deletes the directories no record names any more (a snapshotter that cannot be
    opened here, overlay without root, keeps them until a gc that can).
    """
    with opened_store(store, root) as s:
        result = collect(s.db, s.content, dry_run=dry_run)
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


def content_verify(*, store: Store | None = None, root: Root = None) -> list[VerifyProblem]:
    """Re-hash every blob; the ones whose bytes no longer match their name."""
    with opened_store(store, root) as s:
        return list(s.content.verify())


def content_remove(
    digests: list[str], *, store: Store | None = None, root: Root = None
) -> list[Digest]:
    """Remove blobs by digest (NotFound for one that is not there); returns those removed."""
    parsed = [Digest.parse(d) for d in digests]
    with opened_store(store, root) as s:
        for d in parsed:
            s.content.delete(d)
        return parsed
