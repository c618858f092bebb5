"""The image a container runs: the stored copy or a pull, then the manifest for the
platform by unpack's rule (:func:`imgpipe.unpacking.target.choose`, over
:func:`imgpipe.image.select.pick`), so the config run uses and the rootfs it mounts come
from one manifest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from imgpipe.errors import NotFound

if TYPE_CHECKING:
    from imgpipe.formats.platform import Platform
    from imgpipe.metadata import ImageRecord
    from imgpipe.pipeline import Observer
    from imgpipe.store import Store
    from imgpipe.transports import TransportOptions
    from imgpipe.unpacking.target import Target


def find_image(
    store: Store,
    image: str,
    *,
    platform: str | Platform | None,
    observer: Observer | None,
    options: TransportOptions | None,
) -> ImageRecord:
    """The stored image ``image``, else pulled first (a name not in the store, or a
    transport string such as ``oci:DIR:TAG``): ``ctr run`` runs the stored copy of a
    registry reference the same way."""
    from imgpipe.formats.reference import parse_transport  # noqa: PLC0415

    ref = parse_transport(image)
    if ref.transport == "docker" and ref.reference is not None:
        try:
            return store.db.get_image(str(ref.reference))
        except NotFound:
            pass
    from imgpipe.api import pull  # noqa: PLC0415 (only when pulling)

    return pull(ref, platform=platform, store=store, observer=observer, options=options)


def run_target(store: Store, rec: ImageRecord, platform: str | Platform | None) -> Target:
    """The manifest of ``rec`` a container of it runs, with its config and layers."""
    from imgpipe.unpacking.target import as_platform, stored_target  # noqa: PLC0415

    return stored_target(store, rec, as_platform(platform))


def check_run_keys(target: Target, decrypt_keys: Sequence[str]) -> None:
    """Unpacked once with a key is not a licence to run without one (imgcrypt's
    authorization check): every encrypted layer must open with ``decrypt_keys``."""
    if not any(layer.media_type.is_encrypted() for layer in target.layers):
        return  # no cryptography to import
    from imgpipe.image import check_layer_keys  # noqa: PLC0415
    from imgpipe.image.keys import in_layer  # noqa: PLC0415
    from imgpipe.processors.ocicrypt import NoDecryptionKey  # noqa: PLC0415
    from imgpipe.unpacking.target import load_keys  # noqa: PLC0415

    try:
        check_layer_keys(target.layers, load_keys(decrypt_keys))
    except NoDecryptionKey as e:
        raise in_layer(e, f"image {target.image}: an encrypted layer refuses to run") from None
