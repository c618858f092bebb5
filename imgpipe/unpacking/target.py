"""What to unpack: one manifest of a stored image, chosen by the one platform rule
(:func:`imgpipe.image.select.pick`), resolved to its layers, DiffIDs and chain IDs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from imgpipe.errors import NotFound, Unsupported
from imgpipe.formats.chainid import chain_ids
from imgpipe.formats.digest import Digest
from imgpipe.formats.platform import Platform, host_platform
from imgpipe.image import Image, Index, Layer, load, select
from imgpipe.snapshots import Kind
from imgpipe.store import Store

if TYPE_CHECKING:
    from imgpipe.metadata import ImageRecord
    from imgpipe.processors import ProcessorRegistry
    from imgpipe.processors.ocicrypt import DecryptKey


def load_keys(keys: Sequence[str | DecryptKey]) -> list[DecryptKey]:
    if not keys:
        return []
    # imported when needed: cryptography costs ~40 ms of start-up, and most images are
    # not encrypted
    from imgpipe.processors.ocicrypt import load_private_key  # noqa: PLC0415

    return [load_private_key(k) if isinstance(k, str) else k for k in keys]


def as_platform(platform: str | Platform | None) -> Platform | None:
    return Platform.parse(platform) if isinstance(platform, str) else platform


class Target(NamedTuple):
    """One manifest of an image, resolved down to what unpack needs."""

    image: str
    model: Image
    layers: tuple[Layer, ...]
    diff_ids: tuple[Digest, ...]
    chains: tuple[Digest, ...]


def choose(name: str, store: Store, images: Sequence[Image], platform: Platform | None) -> Target:
    """The manifest of ``images`` to unpack: among those whose config is in the store,
    the one :func:`~imgpipe.image.select.pick` takes for ``platform``."""
    usable = [i for i in images if store.content.exists(i.manifest.config.digest)]
    if not usable:
        raise NotFound(f"image {name}: no manifest with its config in the store")
    img = select.pick(usable, platform, lambda i: i.platform())
    if img is None:
        have = ", ".join(str(i.platform()) for i in usable)
        want = platform or host_platform()
        raise NotFound(f"image {name}: no manifest for platform {want} (has: {have})")
    layers = img.layers()
    for i, layer in enumerate(layers):
        if not layer.media_type.is_layer():
            raise Unsupported(
                f"image {name}: layer {i + 1} has media type {layer.media_type}, "
                "which is not a layer type"
            )
    diff_ids = tuple(img.config().diff_ids)  # the model checks their count
    return Target(name, img, layers, diff_ids, tuple(chain_ids(diff_ids)))


def stored_target(
    store: Store,
    rec: ImageRecord,
    platform: Platform | None,
    registry: ProcessorRegistry | None = None,
    protect: Callable[[Digest], None] | None = None,
) -> Target:
    """:func:`choose` over the stored image ``rec`` (entries never pulled left out).
    ``registry`` decodes its layers; ``protect`` leases each document read and the
    chosen config."""
    lease = protect if protect is not None else _no_lease
    lease(rec.target.digest)
    root = load(store.content, rec.target, registry=registry)
    images = root.manifests(skip_missing=True) if isinstance(root, Index) else (root,)
    for img in images:
        lease(img.descriptor.digest)
    target = choose(rec.name, store, images, platform)
    lease(target.model.manifest.config.digest)
    return target


def _no_lease(_digest: Digest) -> None:
    pass


def committed(store: Store, sn_name: str, chain: Digest) -> bool:
    try:
        rec = store.db.get_snapshot(sn_name, str(chain))
    except NotFound:
        return False
    return rec.kind == Kind.COMMITTED.value
