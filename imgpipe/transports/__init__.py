"""Transports: where images are read from and written to.

``open_source(ref)`` and ``open_sink(ref)`` turn a parsed transport reference
(``imgpipe.formats.reference.parse_transport``) into an object implementing
``ImageSource`` / ``ImageSink`` (see ``imgpipe.transports.base``):

=================  ==============================  =========================================
transport          source                          sink
=================  ==============================  =========================================
oci:DIR[:TAG]      OCILayoutSource                 OCILayoutSink (created or added to)
oci-archive:F[:T]  OCIArchiveSource                OCIArchiveSink (F replaced on success)
docker-archive:F   DockerArchiveSource             Unsupported (not written yet)
docker://REF       Unsupported (not available yet)  Unsupported (not available yet)
=================  ==============================  =========================================

Both functions open at once, so a missing directory or a damaged archive is reported by
the call (NotFound, MalformedDocument, Unsupported) rather than on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from imgpipe.formats.errors import InvalidReference, Unsupported
from imgpipe.formats.reference import TransportRef

from .base import ImageSink, ImageSource
from .dockerarchive import DockerArchiveSource
from .ociarchive import OCIArchiveSink, OCIArchiveSource
from .ocilayout import OCILayoutSink, OCILayoutSource

__all__ = [
    "DockerArchiveSource",
    "ImageSink",
    "ImageSource",
    "OCIArchiveSink",
    "OCIArchiveSource",
    "OCILayoutSink",
    "OCILayoutSource",
    "open_sink",
    "open_source",
]


def _registry_unavailable(ref: TransportRef) -> ImageSource:
    raise Unsupported("registry transport not available yet")


def _registry_sink_unavailable(ref: TransportRef, image_name: str) -> ImageSink:
    raise Unsupported("registry transport not available yet")


def _docker_archive_sink(ref: TransportRef, image_name: str) -> ImageSink:
    raise Unsupported(
        f"docker-archive:{ref.path}: writing docker-archive files is not supported yet; "
        "write an oci-archive: or oci: layout instead (docker load reads both)"
    )


def _archive_ref(ref: TransportRef) -> str:
    """The image a ``docker-archive:FILE:REF`` names, as text (empty if none)."""
    if ref.reference is not None:
        return str(ref.reference)
    return ref.tag


# One entry per transport: the registry transport slots in here.
_SOURCES: Final[dict[str, Callable[[TransportRef], ImageSource]]] = {
    "oci": lambda ref: OCILayoutSource(ref.path, tag=ref.tag),
    "oci-archive": lambda ref: OCIArchiveSource(ref.path, tag=ref.tag),
    "docker-archive": lambda ref: DockerArchiveSource(ref.path, ref=_archive_ref(ref)),
    "docker": _registry_unavailable,
}

_SINKS: Final[dict[str, Callable[[TransportRef, str], ImageSink]]] = {
    "oci": lambda ref, name: OCILayoutSink(ref.path, tag=ref.tag, image_name=name),
    "oci-archive": lambda ref, name: OCIArchiveSink(ref.path, tag=ref.tag, image_name=name),
    "docker-archive": _docker_archive_sink,
    "docker": _registry_sink_unavailable,
}


def open_source(ref: TransportRef) -> ImageSource:
    """Open the image location ``ref`` names for reading; use the result with ``with``.

    Raises InvalidReference for an unknown transport, Unsupported for the registry
    transport (not available yet), and whatever the transport raises on opening:
    NotFound for a missing directory or file, MalformedDocument for a damaged one,
    Unsupported for an unknown layout version.
    """
    opener = _SOURCES.get(ref.transport)
    if opener is None:
        raise InvalidReference(f"unknown transport {ref.transport!r}")
    return opener(ref)


def open_sink(ref: TransportRef, *, image_name: str = "") -> ImageSink:
    """Open the location ``ref`` names for writing one image; use the result with ``with``.

    ``image_name`` (a full reference such as ``docker.io/library/busybox:latest``) is
    recorded where the format has room for it (``io.containerd.image.name`` in an OCI
    layout's ``index.json``). Raises InvalidReference for an unknown transport,
    Unsupported for the registry transport and for docker-archive, and what the sink
    raises on opening (see OCILayoutSink, OCIArchiveSink).
    """
    opener = _SINKS.get(ref.transport)
    if opener is None:
        raise InvalidReference(f"unknown transport {ref.transport!r}")
    return opener(ref, image_name)
