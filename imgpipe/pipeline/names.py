"""Local image names: the stored form, and the name an imported image gets."""

from __future__ import annotations

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import InvalidReference
from imgpipe.formats.layout import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME
from imgpipe.formats.reference import TransportRef, parse_reference

__all__ = ["normalize_name", "suggested_name"]


def normalize_name(name: str) -> str:
    """The stored form of an image name: ``alpine`` -> ``docker.io/library/alpine:latest``."""
    return str(parse_reference(name))


def suggested_name(ref: TransportRef, root: Descriptor) -> str:
    """The local name for an image from ``ref`` when the caller gave none, or "".

    As containerd's importer does: the registry reference; else the full name the layout
    or archive recorded (``io.containerd.image.name``); else the tag asked for; else the
    entry's ``org.opencontainers.image.ref.name``.
    """
    if ref.reference is not None:
        return str(ref.reference)
    # The full name a layout or archive recorded wins over the tag, so an image that
    # went out with `push NAME oci:DIR:latest` comes back as NAME, not as "latest".
    for c in (
        root.annotations.get(ANNOTATION_IMAGE_NAME, ""),
        ref.tag,
        root.annotations.get(ANNOTATION_REF_NAME, ""),
    ):
        if c:
            try:
                return normalize_name(c)
            except InvalidReference:
                continue
    return ""
