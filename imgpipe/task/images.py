"""The image a container runs: found in the store or pulled, and its manifest and config
for the platform."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgpipe.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from imgpipe.formats.config import ImageConfig
    from imgpipe.formats.descriptor import Descriptor
    from imgpipe.formats.manifest import Manifest
    from imgpipe.formats.platform import Platform
    from imgpipe.pipeline import Observer
    from imgpipe.store import Store
    from imgpipe.transports import TransportOptions


def find_image(
    store: Store,
    image: str,
    *,
    platform: str | Platform | None,
    observer: Observer | None,
    options: TransportOptions | None,
) -> tuple[str, ImageConfig]:
    """The stored name of ``image`` and its config for ``platform``; pulled first when
    it is not in the store (or is a transport string such as ``oci:DIR:TAG``)."""
    from imgpipe.formats.reference import parse_transport  # noqa: PLC0415

    ref = parse_transport(image)
    name: str | None = None
    if ref.transport == "docker" and ref.reference is not None:
        # a registry reference: run the stored copy if there is one, as ctr does
        try:
            store.db.get_image(str(ref.reference))
            name = str(ref.reference)
        except NotFound:
            pass
    if name is None:
        from imgpipe.api import pull  # noqa: PLC0415 (only when pulling)

        name = pull(ref, platform=platform, store=store, observer=observer, options=options).name
    return name, _image_config(store, name, platform)


def encrypted_layers(store: Store, name: str, platform: str | Platform | None) -> list[Descriptor]:
    """The encrypted layer descriptors of the manifest ``run`` will use."""
    return [d for d in _manifest(store, name, platform).layers if d.media_type.is_encrypted()]


def _image_config(store: Store, name: str, platform: str | Platform | None) -> ImageConfig:
    from imgpipe.formats.config import parse_config  # noqa: PLC0415
    from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE  # noqa: PLC0415

    doc = _manifest(store, name, platform)
    config = parse_config(store.content.read_bytes(doc.config.digest, limit=MAX_DOCUMENT_SIZE))
    if platform is not None:
        # a single-manifest image has no index to choose from: its config says what it is
        from imgpipe.formats.platform import Platform, match  # noqa: PLC0415

        want = Platform.parse(platform) if isinstance(platform, str) else platform
        if not match(want, config.platform()):
            raise NotFound(
                f"image {name}: no manifest for platform {want} (has: {config.platform()})"
            )
    return config


def _manifest(store: Store, name: str, platform: str | Platform | None) -> Manifest:
    from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, Index, parse_document  # noqa: PLC0415
    from imgpipe.formats.platform import Platform, best_match, host_platform  # noqa: PLC0415

    desc = store.db.get_image(name).target
    doc = parse_document(
        store.content.read_bytes(desc.digest, limit=MAX_DOCUMENT_SIZE), desc.media_type
    )
    if isinstance(doc, Index):
        # The same choice as the unpack stage makes (imgpipe.unpack.target.choose), so the
        # config run uses and the rootfs it mounts come from one manifest: among the
        # manifests in the store, the only one when no platform is asked for, else the
        # best match for the platform (default: this host).
        want = Platform.parse(platform) if isinstance(platform, str) else platform
        candidates = [d for d in doc.manifests if store.content.exists(d.digest)]
        if want is None and len(candidates) == 1:
            pick: int | None = 0
        else:
            typed = [d for d in candidates if d.platform is not None]
            found = best_match(want or host_platform(), [d.platform for d in typed if d.platform])
            pick = None if found is None else candidates.index(typed[found])
        if pick is None:
            raise NotFound(f"image {name}: no manifest for platform {want or host_platform()}")
        desc = candidates[pick]
        doc = parse_document(
            store.content.read_bytes(desc.digest, limit=MAX_DOCUMENT_SIZE), desc.media_type
        )
    if isinstance(doc, Index):
        raise InvalidArgument(f"image {name}: nested index is not runnable")
    return doc
